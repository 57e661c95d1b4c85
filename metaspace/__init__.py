"""metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL with pgvector.

The Python API has the command line's names and options. Each function is imported on first use, so that
``import metaspace`` (and every command) loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "cluster": "metaspace.landscape",
    "map_space": "metaspace.landscape",
    "embed_run": "metaspace.pipeline",
    "embed_runs": "metaspace.pipeline",
    "evaluate": "metaspace.evaluation",
    "import_runs": "metaspace.pipeline",
    "import_records": "metaspace.pipeline",
    "sample_runs": "metaspace.sample",
    "write_runs": "metaspace.sample",
    "search": "metaspace.queries",
    "suggest": "metaspace.queries",
    "optuna_params": "metaspace.queries",
    "import_mlflow": "metaspace.sources",
    "import_optuna": "metaspace.sources",
    "optuna_warm_start": "metaspace.sources",
    "migrate": "metaspace.database",
    "close": "metaspace.store.session",
    "propose": "metaspace.proposals",
    "TransferSampler": "metaspace.sampler",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metaspace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
