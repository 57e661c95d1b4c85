"""The product's names (PRODUCT.md): schema, joint type, model ids, branches, spaces and the dimension."""

SCHEMA = "historical_db"
DIMENSION = 384

JOINT_TYPE = "META_CONFIG_ENV_V0"
SOURCE = "meta-config-env"

CONFIG_MODEL = "num-config-core-v1"
ENV_MODEL = "num-env-core-v1"
OUTCOME_MODEL = "num-outcome-core-v1"
JOINT_MODEL = "joint-meta-config-env-v1"

BRANCHES = ("config", "env", "outcome")
BRANCH_MODELS = {"config": CONFIG_MODEL, "env": ENV_MODEL, "outcome": OUTCOME_MODEL}
SPACES = ("joint", *BRANCHES)
