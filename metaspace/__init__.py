"""metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL with pgvector."""

from metaspace.api import embed_run, embed_runs, import_runs
from metaspace.landscape import cluster, map_space
from metaspace.queries import optuna_params, search, suggest
from metaspace.sample import sample_runs, write_runs

__all__ = ["cluster", "embed_run", "embed_runs", "import_runs", "map_space", "optuna_params", "sample_runs",
           "search", "suggest", "write_runs"]
