"""One question from Python against the same question in SQL: what the Python API adds to its SQL.

    python benchmarks/bench_api.py --n 200000                      # builds a database of 200,000 sample runs
    python benchmarks/bench_api.py --reuse bench_api_200000        # measures a database kept by an earlier run

In a warm process (the connection kept, the encoder state loaded), each of ``--calls`` different records is
asked one call at a time:

- ``metaspace.search(record=..., k=10)`` against ``historical_db.search_record(record, 10)`` called from a
  psycopg connection held open by the benchmark (the limit: the same answer, encoded in SQL);
- ``metaspace.suggest(env)`` against ``historical_db.suggest_for_env(env)`` from that held connection.

It prints the median and p95 of each, and the ratio of the medians to the limit of 2 (issue 29's bar). Runs on
the embedded server (or ``METASPACE_DATABASE_URL``'s server), in a database of its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

import metaspace
from metaspace import pipeline
from metaspace.sample import sample_runs, write_runs
from metaspace.store import migrate
from metaspace.store.connection import resolve_url

LIMIT = 2.0


def _database(name: str, fresh: bool) -> str:
    server = resolve_url(None)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if fresh and exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        if fresh or not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server, dbname=name)


def _build(url: str, n: int) -> None:
    migrate.upgrade(url)
    path = Path(tempfile.mkdtemp()) / "runs.jsonl.gz"
    write_runs(sample_runs(n, seed=7), path)
    started = time.perf_counter()
    pipeline.import_runs([str(path)], database_url=url)
    pipeline.embed_runs(database_url=url)
    print(f"built {n:,} runs in {time.perf_counter() - started:.0f} s", flush=True)


def _timed(calls) -> list[float]:
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _line(name: str, python: list[float], limit: list[float]) -> float:
    ratio = statistics.median(python) / statistics.median(limit)
    print(f"| {name} | {statistics.median(python):.2f} / {np.percentile(python, 95):.2f} | "
          f"{statistics.median(limit):.2f} / {np.percentile(limit, 95):.2f} | {ratio:.2f}x "
          f"({'within' if ratio <= LIMIT else 'over'} the {LIMIT:g}x limit) |")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="sample runs in the database built")
    parser.add_argument("--reuse", metavar="NAME", help="measure this existing database instead of building one")
    parser.add_argument("--calls", type=int, default=30, help="single calls of each kind")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the calls (the first warms the caches)")
    args = parser.parse_args()
    name = args.reuse or f"bench_api_{args.n}"
    url = _database(name, fresh=not args.reuse)
    if not args.reuse:
        _build(url, args.n)
    probes = sample_runs(args.calls, seed=99)  # records not in the database
    records = [{"config": r["config"], "env": r["env"], "outcome": r["outcome"]} for r in probes]
    warnings.simplefilter("ignore")
    with psycopg.connect(url, autocommit=True) as held:
        rows = held.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
        print(f"{rows:,} runs in {name}; {args.calls} single calls of each kind, {args.rounds} rounds, the last "
              "measured; ms median / p95")
        print("| call | Python API | SQL from a held connection | ratio |")
        print("| --- | --- | --- | --- |")
        for _ in range(args.rounds):
            search_py = _timed([lambda r=r: metaspace.search(record=r, k=10, database_url=url) for r in records])
            search_sql = _timed([lambda r=r: held.execute("SELECT * FROM historical_db.search_record(%s, 10)",
                                                           (Jsonb(r),)).fetchall() for r in records])
            suggest_py = _timed([lambda r=r: metaspace.suggest(r["env"], database_url=url) for r in records])
            suggest_sql = _timed([lambda r=r: held.execute("SELECT * FROM historical_db.suggest_for_env(%s)",
                                                            (Jsonb(r["env"]),)).fetchall() for r in records])
        ratios = [_line("`metaspace.search(record=..., k=10)` vs `search_record`", search_py, search_sql),
                  _line("`metaspace.suggest(env)` vs `suggest_for_env`", suggest_py, suggest_sql)]
    metaspace.close()
    print(f"worst ratio {max(ratios):.2f}x against the {LIMIT:g}x limit")
    return 0 if max(ratios) <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
