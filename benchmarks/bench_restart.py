"""Warm after a restart: the first searches after the embedded server restarts, with and without pg_prewarm.

    python benchmarks/bench_restart.py --n 100000
    python benchmarks/bench_restart.py --n 100000 --home /tmp/metaspace-bench-restart   # reuse the build

Builds ``--n`` sample runs once in the database ``bench_restart`` of the embedded server under ``--home``.
Then, twice each: stop the server, start it (plain, as any command does; or as ``metaspace db start`` does,
with the HNSW graphs read into shared buffers by pg_prewarm) and time the first ``--queries`` searches
(``neighbours_v2`` by stored run, k = 10, joint space, distinct runs) on a fresh connection. The limit,
in the same run: the same searches once the server is warm.

The OS page cache is not dropped (that needs root and would disturb a shared machine): the restart empties
shared buffers only, and ``fincore`` reports how much of the joint graph's file the OS still caches.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

DATABASE = "bench_restart"
INDEX = "historical_db.joint_embeddings_vector_hnsw"


def _build(url: str, n: int) -> None:
    import metaspace
    from metaspace.sample import sample_runs, write_runs

    path = Path(tempfile.mkdtemp()) / "runs.jsonl.gz"
    write_runs(sample_runs(n, seed=11), path)
    started = time.perf_counter()
    metaspace.migrate(database_url=url)
    metaspace.import_runs([str(path)], database_url=url)
    metaspace.embed_runs(database_url=url)
    print(f"built {n:,} sample runs in {time.perf_counter() - started:.0f} s")


def _searches(url: str, run_ids: list[str]) -> list[float]:
    """Milliseconds of each search, in order, on one fresh connection."""
    from metaspace.store import search as search_store
    from metaspace.store.connection import connect

    no_filter = search_store.Filters(None, (), (), None)
    times = []
    with connect(url, autocommit=True) as conn:
        for run_id in run_ids:
            started = time.perf_counter()
            search_store.neighbours(conn, run_id, 10, "joint", no_filter, False)
            times.append((time.perf_counter() - started) * 1000)
    return times


def _os_cached(url: str) -> str:
    import psycopg

    if not shutil.which("fincore"):
        return "unknown (no fincore)"
    with psycopg.connect(url) as conn:
        path = conn.execute("SELECT current_setting('data_directory') || '/' || pg_relation_filepath(%s)",
                            (INDEX,)).fetchone()[0]
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", path],
                         capture_output=True, text=True).stdout.split()
    return f"{int(out[0]) / 2**20:.0f} of {int(out[1]) / 2**20:.0f} MB" if len(out) == 2 else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--home", default="/tmp/metaspace-bench-restart", help="METASPACE_HOME of the server")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["METASPACE_HOME"] = args.home
    os.environ.pop("METASPACE_DATABASE_URL", None)

    import psycopg

    import metaspace
    from metaspace.store import embedded
    from metaspace.store.prewarm import prewarm_hnsw

    url = embedded.start(DATABASE)
    metaspace.migrate(database_url=url)  # a history built by an older metaspace is brought to head
    with psycopg.connect(url) as conn:
        built = conn.execute("SELECT to_regclass('historical_db.runs') IS NOT NULL").fetchone()[0]
    if not built:
        _build(url, args.n)
    with psycopg.connect(url) as conn:
        runs = [r for (r,) in conn.execute("SELECT run_id FROM historical_db.runs").fetchall()]
        graph_mb = conn.execute("SELECT pg_relation_size(%s) / 2^20", (INDEX,)).fetchone()[0]
    print(f"{len(runs):,} runs; joint graph {graph_mb:.0f} MB; first {args.queries} searches after a restart")
    rng = random.Random(5)

    results: dict[str, list[tuple[float, float, float]]] = {"plain start": [], "start + pg_prewarm": []}
    for _ in range(args.rounds):
        for label in results:
            embedded.stop()
            started = time.perf_counter()
            url = embedded.start(DATABASE)
            prewarm = 0.0
            if label != "plain start":
                before = time.perf_counter()
                prewarm_hnsw(url)
                prewarm = (time.perf_counter() - before) * 1000
            start_ms = (time.perf_counter() - started) * 1000 - prewarm
            cached = _os_cached(url)
            times = _searches(url, rng.sample(runs, args.queries))
            results[label].append((times[0], statistics.median(times), sum(times), prewarm, start_ms))
            print(f"  {label}: start {start_ms:.0f} ms, prewarm {prewarm:.0f} ms, OS cache held {cached} of the "
                  f"joint graph; first search {times[0]:.1f} ms, median {statistics.median(times):.2f} ms, "
                  f"all {sum(times):.0f} ms")
    warm = _searches(url, rng.sample(runs, args.queries))
    print()
    print(f"| after a restart | first search ms | median of {args.queries} ms | all {args.queries} ms | "
          "prewarm ms |")
    print("| --- | --- | --- | --- | --- |")
    for label, rounds in results.items():
        first, median, total, prewarm, _ = (statistics.median(column) for column in zip(*rounds))
        print(f"| {label} | {first:.1f} | {median:.2f} | {total:.0f} | {prewarm:.0f} |")
    print(f"| warm server (the limit) | {warm[0]:.1f} | {statistics.median(warm):.2f} | {sum(warm):.0f} | — |")


if __name__ == "__main__":
    main()
