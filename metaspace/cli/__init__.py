"""The ``metaspace`` command line: thin commands over the Python API, split by theme."""

from metaspace.cli.main import cli, main

__all__ = ["cli", "main"]
