"""The encoders inside PostgreSQL, by the stable names SQL clients call: encode, suggest_for_env and
embed_pending, each next to its limit measured in the same run on the same database.

    python benchmarks/bench_sql_encoders.py [--n 20000] [--m 2000] [--sample] [--repeat 300]

- encode of one env record (median ms), next to a `SELECT 1` round trip and to the Python encoder;
- suggest_for_env(env jsonb) next to suggest_configs with the env vector precomputed (the limit);
- embed_pending (batches of 500) next to `metaspace embed-runs` (Python encoders, binary COPY) on as many
  runs, both writing into the HNSW-indexed tables; and the encoding alone (encode_run_v1 over stored runs,
  next to MetaSpace.encode of the same runs in one batch).

Runs on a fresh database of the embedded server (or METASPACE_DATABASE_URL's server). The sample history
(``--sample``) or the synthetic runs of benchmarks/synthetic.py (35 leaves per branch, the default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings

sys.path.insert(0, os.path.dirname(__file__))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402
from synthetic import synthetic_runs  # noqa: E402

from metaspace import pipeline  # noqa: E402
from metaspace.fitted import load_space  # noqa: E402
from metaspace.sample import sample_runs  # noqa: E402
from metaspace.store import migrate  # noqa: E402
from metaspace.store.connection import connect, resolve_url  # noqa: E402


def median_ms(conn: psycopg.Connection, statement: str, params: tuple, repeat: int) -> float:
    for _ in range(10):  # warm: plans cached, pages in shared buffers
        conn.execute(statement, params).fetchall()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(statement, params).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000, help="runs in the database")
    parser.add_argument("--m", type=int, default=2_000, help="runs embedded by each embed path")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--sample", action="store_true", help="the sample history instead of synthetic runs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    server = resolve_url(None)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server, dbname=name)
    try:
        migrate.upgrade(url)
        runs = sample_runs(args.n, seed=42) if args.sample else synthetic_runs(args.n, seed=42)
        path = os.path.join(tempfile.mkdtemp(), "runs.jsonl")
        with open(path, "w") as handle:
            handle.writelines(json.dumps(run) + "\n" for run in runs)
        pipeline.import_runs([path], database_url=url)
        pipeline.embed_runs(database_url=url, limit=args.n - args.m)

        started = time.perf_counter()
        python = pipeline.embed_runs(database_url=url, limit=args.m)
        python_s = time.perf_counter() - started
        with connect(url, autocommit=True) as conn:
            ids = [row[0] for row in conn.execute(
                "SELECT run_id FROM historical_db.branch_embeddings WHERE branch = 'env' "
                "ORDER BY run_id DESC LIMIT %s", (args.m,)).fetchall()]
            conn.execute("DELETE FROM historical_db.joint_embeddings WHERE entity_scope ->> 'run_id' = ANY(%s)", (ids,))
            conn.execute("DELETE FROM historical_db.branch_embeddings WHERE run_id = ANY(%s)", (ids,))
            embedded, started = 0, time.perf_counter()
            while embedded < args.m:
                done = conn.execute("SELECT embedded + quarantined FROM historical_db.embed_pending(%s)",
                                    (min(500, args.m - embedded),)).fetchone()[0]
                if not done:
                    break
                embedded += done
            sql_s = time.perf_counter() - started
            conn.execute("ANALYZE")
            sql_encode_s = python_encode_s = float("inf")  # the best of three: the machine is shared
            stored = sorted(runs, key=lambda run: run["run_id"])[:args.m]
            for _ in range(3):
                started = time.perf_counter()
                conn.execute("SELECT count(e.field) FROM (SELECT * FROM historical_db.runs ORDER BY run_id "
                             "LIMIT %s) r CROSS JOIN LATERAL historical_db.encode_run_v1(%s, r.config, r.env, "
                             "r.outcome) e", (args.m, python.version)).fetchone()
                sql_encode_s = min(sql_encode_s, time.perf_counter() - started)
                started = time.perf_counter()
                load_space(conn, python.version).encode(stored)
                python_encode_s = min(python_encode_s, time.perf_counter() - started)

            env = runs[7]["env"]
            version = conn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]
            space = load_space(conn, version)
            round_trip = median_ms(conn, "SELECT 1", (), args.repeat)
            encode = median_ms(conn, "SELECT historical_db.encode('env', %s)", (Jsonb(env),), args.repeat)
            joint = median_ms(conn, "SELECT historical_db.encode('joint', %s)", (Jsonb(runs[7]),), args.repeat)
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                space.branches_["env"].transform_with_errors([env], ["q"])
                times.append(time.perf_counter() - started)
            python_encode = statistics.median(times) * 1000
            vector = conn.execute("SELECT historical_db.encode_v1('env', %s)", (Jsonb(env),)).fetchone()[0]
            suggest_args = "4, '2030-01-01', 'sharpe', true, 1000, 3, NULL, false"
            limit = median_ms(conn, f"SELECT * FROM historical_db.suggest_configs(%s, {suggest_args})",  # noqa: S608
                              (vector,), args.repeat // 3)
            suggest = median_ms(conn, f"SELECT * FROM historical_db.suggest_for_env(%s, {suggest_args})",  # noqa: S608
                                (Jsonb(env),), args.repeat // 3)
        leaves = len(env)
        print(f"runs: {args.n} ({'sample history' if args.sample else 'synthetic'}), env keys: {leaves}")
        print(f"SELECT 1 round trip:                       {round_trip:7.3f} ms")
        print(f"encode('env', one env record):             {encode:7.3f} ms median (target <= 2 ms)")
        print(f"encode('joint', one run record):           {joint:7.3f} ms median")
        print(f"Python env encoder, one record (no I/O):   {python_encode:7.3f} ms median")
        print(f"suggest_configs(precomputed vector):       {limit:7.3f} ms median (the limit)")
        print(f"suggest_for_env(env jsonb):                {suggest:7.3f} ms median  ratio: {suggest / limit:.2f}x "
              "(target <= 2x)")
        print(f"embed-runs (Python), {args.m} runs:          {python_s:7.2f} s  {args.m / python_s:8.0f} runs/s "
              f"({python.embedded} embedded)")
        print(f"encoding only, {args.m} runs (best of 3): Python MetaSpace.encode {args.m / python_encode_s:8.0f} runs/s, "
              f"SQL encode_run_v1 {args.m / sql_encode_s:8.0f} runs/s  ratio: {sql_encode_s / python_encode_s:.1f}x")
        print(f"embed_pending_v1 (SQL), {embedded} runs:       {sql_s:7.2f} s  {embedded / sql_s:8.0f} runs/s  "
              f"ratio: {sql_s / python_s:.2f}x the Python path's time")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
