"""Revision 0016 on a loaded table: how long filling ``joint_embeddings.run_id`` takes, plain and --concurrently,
against the limit measured in the same run (one bulk build of the joint HNSW graph over the same rows, which
the plain path's table rewrite must do anyway).

    python benchmarks/bench_joint_run_id.py --n 100000

Builds fresh databases on the embedded server (or METASPACE_DATABASE_URL's server), migrated to the revision
before 0016; N joint rows (random vectors, one run each, every fifth row of another joint type with no run in
its scope) are loaded by binary COPY with the graph dropped, then the graph is built (timed: the limit), then
``metaspace migrate`` to head is timed. ``maintenance_work_mem`` is the server's own in both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from metaspace.store import migrate
from metaspace.store.connection import resolve_url
from metaspace.store.sqlfiles import statements

BEFORE = "0015_suggest_calibration"


def _database(server: str) -> str:
    name = f"bench_run_id_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server, dbname=name)


def _load(url: str, n: int, seed: int) -> float:
    """N rows by COPY without the joint graph, then the graph built; returns the build's seconds."""
    from pgvector.psycopg import register_vector

    migrate.upgrade(url, BEFORE)
    rng = np.random.default_rng(seed)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP INDEX historical_db.joint_embeddings_vector_hnsw")
        with conn.cursor().copy("COPY historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, "
                                "model_id, vector) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "date", "jsonb", "text", "vector"])
            for i in range(n):
                scope = {"run_id": f"R{i:07d}", "source": "meta-config-env"} if i % 5 else {"source": "macro"}
                copy.write_row(("META_CONFIG_ENV_V0" if i % 5 else "MACRO_V2", dt.date(2024, 1, 2), Jsonb(scope),
                                "joint-meta-config-env-v1", rng.standard_normal(384).astype(np.float32)))
        conn.execute("VACUUM ANALYZE historical_db.joint_embeddings")
        started = time.perf_counter()
        conn.execute(statements("vector_indexes_v1.sql")[0])
        return time.perf_counter() - started


def _dead_rows(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return conn.execute("SELECT n_dead_tup, pg_total_relation_size('historical_db.joint_embeddings') / 1048576 "
                            "FROM pg_stat_user_tables WHERE relid = 'historical_db.joint_embeddings'::regclass"
                            ).fetchone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="joint rows in the table")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    server = resolve_url(None)
    with psycopg.connect(server) as conn:
        mwm = conn.execute("SHOW maintenance_work_mem").fetchone()[0]
    print(f"{args.n:,} joint rows, maintenance_work_mem {mwm}")
    for concurrently in (False, True):
        url = _database(server)
        build = _load(url, args.n, args.seed)
        _, before_mb = _dead_rows(url)
        started = time.perf_counter()
        migrate.upgrade(url, concurrently=concurrently)
        seconds = time.perf_counter() - started
        dead, after_mb = _dead_rows(url)
        label = "--concurrently" if concurrently else "plain        "
        print(f"migrate {label} {seconds:7.1f} s  ({seconds / build:4.1f}x the graph build of {build:5.1f} s)  "
              f"table with indexes {before_mb} -> {after_mb} MB, dead rows {dead:,}")
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(psycopg.conninfo.conninfo_to_dict(url)["dbname"])))


if __name__ == "__main__":
    main()
