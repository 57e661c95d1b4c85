"""End-to-end backfill: import + embed N synthetic runs, as a ratio to raw binary COPY of N vectors.

    python benchmarks/bench_backfill.py [--n 100000]

Runs on a fresh database of the embedded server (or METASPACE_DATABASE_URL's server).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import struct
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

from metaspace import pipeline  # noqa: E402
from metaspace.sample import sample_runs  # noqa: E402
from metaspace.store import migrate  # noqa: E402
from metaspace.store.connection import connect, resolve_url  # noqa: E402


def _fixed_width_rows(n: int) -> bytes:
    """COPY's binary stream for n rows of (joint_type, as_of_date, entity_scope, model_id, vector), built with
    numpy in one go: the fastest a client can hand rows to PostgreSQL, so the strictest limit."""
    joint_type, model_id = b"META_CONFIG_ENV_V0", b"joint-meta-config-env-v1"
    scope_len = len(b'\x01{"run_id": "R0000000"}')
    row = np.dtype([("fields", ">i2"), ("t_len", ">i4"), ("t", f"S{len(joint_type)}"), ("d_len", ">i4"), ("d", ">i4"),
                    ("s_len", ">i4"), ("s", f"S{scope_len}"), ("m_len", ">i4"), ("m", f"S{len(model_id)}"),
                    ("v_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (384,))])
    rows = np.empty(n, row)
    rows["fields"], rows["t_len"], rows["t"] = 5, len(joint_type), joint_type
    rows["d_len"], rows["d"] = 4, (datetime.date(2024, 1, 1) - datetime.date(2000, 1, 1)).days
    rows["s_len"], rows["s"] = scope_len, [b'\x01{"run_id": "R%07d"}' % i for i in range(n)]
    rows["m_len"], rows["m"] = len(model_id), model_id
    rows["v_len"], rows["dim"], rows["unused"] = 4 + 4 * 384, 384, 0
    rows["v"] = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    return header + rows.tobytes() + struct.pack(">h", -1)


def raw_copy_seconds(url: str, n: int) -> float:
    """The limit: a raw binary COPY of n precomputed vectors into an unindexed copy of joint_embeddings."""
    stream = _fixed_width_rows(n)
    with connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_copy (LIKE historical_db.joint_embeddings INCLUDING DEFAULTS INCLUDING IDENTITY)")
        started = time.perf_counter()
        with conn.cursor().copy(
            "COPY raw_copy (joint_type, as_of_date, entity_scope, model_id, vector) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            for offset in range(0, len(stream), 1 << 20):
                copy.write(stream[offset:offset + (1 << 20)])
        elapsed = time.perf_counter() - started
        assert conn.execute("SELECT count(*) FROM raw_copy").fetchone()[0] == n
        conn.execute("DROP TABLE raw_copy")
    return elapsed


STORED = {
    "joint_embeddings": "joint_type, as_of_date, entity_scope, model_id, vector, encoder_version",
    "branch_embeddings": "run_id, branch, encoder_version, model_id, as_of_date, strategy_id, config_id, vector",
}


def stored_copy_seconds(url: str) -> tuple[float, float]:
    """COPY of the very rows embed-runs wrote (4 vectors a run) into copies of both tables: without any
    index, and with the same B-tree indexes (uniqueness, as-of) that embed-runs has to maintain."""
    plain = indexed = 0.0
    with connect(url, autocommit=True) as conn:
        for table, columns in STORED.items():
            with conn.cursor().copy(
                f"COPY (SELECT {columns} FROM historical_db.{table}) TO STDOUT (FORMAT BINARY)"  # noqa: S608
            ) as copy:
                data = b"".join(bytes(block) for block in copy)
            definitions = [row[0] for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'historical_db' AND tablename = %s "
                "AND indexdef NOT LIKE '%%USING hnsw%%'", (table,)).fetchall()]
            for name, with_indexes in (("bench_plain", False), ("bench_indexed", True)):
                conn.execute(f"CREATE TABLE {name} (LIKE historical_db.{table} INCLUDING DEFAULTS INCLUDING IDENTITY)")
                if with_indexes:
                    for i, definition in enumerate(definitions):
                        head, _, rest = definition.partition(" ON ")
                        unique = "UNIQUE " if head.startswith("CREATE UNIQUE") else ""
                        conn.execute(f"CREATE {unique}INDEX bench_index_{i} ON "
                                     + rest.replace(f"historical_db.{table}", name, 1))
                started = time.perf_counter()
                with conn.cursor().copy(f"COPY {name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(data)
                elapsed = time.perf_counter() - started
                if with_indexes:
                    indexed += elapsed
                else:
                    plain += elapsed
                conn.execute(f"DROP TABLE {name}")
    return plain, indexed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sample", action="store_true", help="the sample history (metaspace.sample) instead of "
                        "the synthetic runs of benchmarks/synthetic.py (35 leaves per branch)")
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
            runs = sample_runs(args.n, seed=42) if args.sample else synthetic_runs(args.n, seed=42)
            for run in runs:
                handle.write(json.dumps(run) + "\n")
        t0 = time.perf_counter()
        pipeline.import_runs([path], database_url=url)
        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = pipeline.embed_runs(database_url=url)
        embed_s = time.perf_counter() - t0
        copy_s = raw_copy_seconds(url, args.n)
        stored_plain_s, stored_indexed_s = stored_copy_seconds(url)
        load_s = embed_s - summary.index_seconds
        print(f"runs: {args.n}")
        print(f"raw binary COPY of {args.n} vectors (the limit): {copy_s:7.1f} s  {args.n / copy_s:9.0f} rows/s")
        print(f"import-runs:                              {import_s:7.1f} s  {args.n / import_s:9.0f} runs/s")
        print(f"embed-runs (fit + encode + write):        {load_s:7.1f} s  {args.n / load_s:9.0f} runs/s  "
              f"ratio to raw COPY: {load_s / copy_s:.2f}x")
        print(f"  of which encoding (worker thread):      {summary.encode_seconds:7.1f} s")
        print(f"  of which writing 4 vectors a run:       {summary.write_seconds:7.1f} s  "
              f"ratio to raw COPY of as many vectors: {summary.write_seconds / (4 * copy_s):.2f}x")
        print(f"COPY of the rows written, unindexed:      {stored_plain_s:7.1f} s  "
              f"writing / this: {summary.write_seconds / stored_plain_s:.2f}x")
        print(f"COPY of the rows written, same B-trees:   {stored_indexed_s:7.1f} s  "
              f"writing / this: {summary.write_seconds / stored_indexed_s:.2f}x")
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
