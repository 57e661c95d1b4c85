"""The numeric encoders num-config-core-v1, num-env-core-v1, num-outcome-core-v1 and the joint model
joint-meta-config-env-v1. Encoders never touch the database."""

from metaspace.encoders.branch import BranchEncoder, EncoderFormatError, EncodingError, SchemaDriftWarning
from metaspace.encoders.joint import EncodedRuns, MetaSpace, typical_distance

__all__ = ["BranchEncoder", "EncodedRuns", "EncoderFormatError", "EncodingError", "MetaSpace", "SchemaDriftWarning",
           "typical_distance"]
