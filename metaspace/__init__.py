"""metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL with pgvector."""

from metaspace.api import embed_run, embed_runs, import_runs
from metaspace.queries import optuna_params, search, suggest

__all__ = ["embed_run", "embed_runs", "import_runs", "optuna_params", "search", "suggest"]
