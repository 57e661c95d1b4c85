"""Warm the HNSW graphs after a server start: read them into shared buffers with pg_prewarm, so that the
first searches after a restart do not pay for reading the graph page by page."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

# Every valid HNSW index in the database (metaspace's four, and any a DBA added), read into shared buffers.
_PREWARM_HNSW = """
SELECT format('%I.%I', n.nspname, c.relname), pg_prewarm(c.oid::regclass)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE am.amname = 'hnsw' AND i.indisvalid
ORDER BY n.nspname, c.relname
"""


@dataclass
class Prewarmed:
    """What was read into shared buffers: blocks per index (``schema.index``), or why nothing was."""

    database: str
    indexes: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    block_size: int = 8192

    @property
    def blocks(self) -> int:
        return sum(self.indexes.values())


def prewarm_hnsw(url: str) -> Prewarmed:
    """Read every valid HNSW index of the database at ``url`` into shared buffers with pg_prewarm
    (creating the extension, which needs the privilege to; the embedded server's role has it). Where the
    extension is missing or may not be created, nothing is warmed and ``note`` says why."""
    with psycopg.connect(url, autocommit=True) as conn:
        database = conn.info.dbname
        block_size = int(conn.execute("SELECT current_setting('block_size')").fetchone()[0])
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm'").fetchone()
        if not available:
            return Prewarmed(database, note="pg_prewarm is not installed on this server: nothing warmed")
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except psycopg.Error as exc:
            return Prewarmed(database, note=f"pg_prewarm could not be created ({exc.diag.message_primary}): "
                                            "nothing warmed")
        done = Prewarmed(database, dict(conn.execute(_PREWARM_HNSW).fetchall()), block_size=block_size)
        if not done.indexes:
            done.note = "no HNSW index in this database yet (run metaspace embed-runs): nothing warmed"
        return done
