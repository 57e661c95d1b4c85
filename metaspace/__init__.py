"""metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL with pgvector."""

from metaspace.api import embed_run, embed_runs, import_runs

__all__ = ["embed_run", "embed_runs", "import_runs"]
