"""metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL with pgvector."""

from metaspace.landscape import cluster, map_space
from metaspace.pipeline import embed_run, embed_runs, import_runs
from metaspace.sample import sample_runs, write_runs
from metaspace.search import optuna_params, search, suggest
from metaspace.sources import import_mlflow, import_optuna, optuna_warm_start

__all__ = ["cluster", "embed_run", "embed_runs", "import_mlflow", "import_optuna", "import_runs", "map_space",
           "optuna_params", "optuna_warm_start", "sample_runs", "search", "suggest", "write_runs"]
