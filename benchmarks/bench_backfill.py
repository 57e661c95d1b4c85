"""End-to-end backfill: import + embed N synthetic runs, as a ratio to raw binary COPY of N vectors.

    python benchmarks/bench_backfill.py [--n 100000]

Runs on a fresh database of the embedded server (or METASPACE_DATABASE_URL's server).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from synthetic import synthetic_runs  # noqa: E402

from metaspace import api, migrate  # noqa: E402
from metaspace.db import connect, resolve_url  # noqa: E402


def raw_copy_seconds(url: str, n: int) -> float:
    vectors = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)
    with connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_copy (LIKE historical_db.joint_embeddings INCLUDING DEFAULTS INCLUDING IDENTITY)")
        started = time.perf_counter()
        with conn.cursor().copy(
            "COPY raw_copy (joint_type, as_of_date, entity_scope, model_id, vector) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "date", "jsonb", "text", "vector"])
            for i in range(n):
                copy.write_row(("META_CONFIG_ENV_V0", datetime.date(2024, 1, 1), psycopg.types.json.Jsonb({"run_id": f"R{i}"}),
                                "joint-meta-config-env-v1", vectors[i]))
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE raw_copy")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    server = resolve_url(None)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server, dbname=name)
    try:
        migrate.upgrade(url)
        path = os.path.join(tempfile.mkdtemp(), "runs.jsonl")
        with open(path, "w") as handle:
            for run in synthetic_runs(args.n, seed=42):
                handle.write(json.dumps(run) + "\n")
        t0 = time.perf_counter()
        api.import_runs([path], database_url=url)
        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = api.embed_runs(database_url=url)
        embed_s = time.perf_counter() - t0
        copy_s = raw_copy_seconds(url, args.n)
        load_s = embed_s - summary.index_seconds
        print(f"runs: {args.n}")
        print(f"raw binary COPY of {args.n} vectors (the limit): {copy_s:7.1f} s  {args.n / copy_s:9.0f} rows/s")
        print(f"import-runs:                              {import_s:7.1f} s  {args.n / import_s:9.0f} runs/s")
        print(f"embed-runs (fit + encode + write):        {load_s:7.1f} s  {args.n / load_s:9.0f} runs/s  "
              f"ratio to raw COPY: {load_s / copy_s:.2f}x")
        print(f"HNSW index builds (joint + 3 branches):   {summary.index_seconds:7.1f} s  (rebuilt after load: "
              f"{summary.index_rebuilt})")
        total = import_s + embed_s
        print(f"pipeline end to end:                      {total:7.1f} s  {args.n / total:9.0f} runs/s  "
              f"ratio to raw COPY: {total / copy_s:.2f}x")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
