"""Search: recall@10 and latency of the HNSW path against the exact path, measured in the same run.

    python benchmarks/bench_search.py --n 100000
    python benchmarks/bench_search.py --n 1000000                   # the 1,000,000-run figures
    python benchmarks/bench_search.py --n 100000 --halfvec          # and HNSW on halfvec(384) against vector(384)

Builds a fresh database on the embedded server (or METASPACE_DATABASE_URL's server): N sample runs are
imported and embedded the normal way (every run with its branch vectors, on the default layout). Queries
are the encodings of sample runs that are not in the database.
Every latency is one call of ``historical_db.search_runs`` (what the CLI calls) from Python (a round trip included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from metaspace import pipeline
from metaspace.fitted import load_space
from metaspace.sample import sample_runs, write_runs
from metaspace.store import graphs, migrate, registry
from metaspace.store.connection import connect, resolve_url
from metaspace.store.sqlfiles import statements

K = 10
EF_SEARCH = (20, 40, 64, 100, 200, 400)


def _create_database() -> tuple[str, str, str]:
    server = resolve_url(None)
    name = f"bench_search_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server, name, make_conninfo(server, dbname=name)


def _load(url: str, n: int, seed: int) -> None:
    migrate.upgrade(url)
    path = Path(tempfile.mkdtemp()) / "runs.jsonl.gz"
    write_runs(sample_runs(n, seed=seed), path)
    started = time.perf_counter()
    pipeline.import_runs([str(path)], database_url=url)
    summary = pipeline.embed_runs(database_url=url)
    print(f"loaded {n:,} runs in {time.perf_counter() - started:.0f} s (HNSW builds {summary.index_seconds:.0f} s)")


def _queries(url: str, count: int, seed: int, name: str = "joint") -> np.ndarray:
    with connect(url, autocommit=True) as conn:
        version = next(v.version for v in registry.versions(conn) if v.is_active)
        space = load_space(conn, version)
    return space.encode(sample_runs(count, seed=seed + 99)).vectors()[name]


def _timed(conn: psycopg.Connection, statement: str, params: tuple) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    rows = conn.execute(statement, params).fetchall()
    return (time.perf_counter() - started) * 1000, rows


def _recall(found: list[tuple], truth: list[tuple]) -> float:
    """Share of the true k nearest found, by distance (ties between runs with equal vectors count as found)."""
    if not truth:
        return 1.0
    kth = truth[-1][0] + 1e-6
    return min(len(truth), sum(1 for row in found if row[0] <= kth)) / len(truth)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


SEARCH = "SELECT distance FROM historical_db.search_runs(%s, %s, 'joint', %s, exact => %s)"


def measure(url: str, queries: np.ndarray) -> None:
    with connect(url, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM historical_db.run_vectors_v1 WHERE space = 'joint'").fetchone()[0]
        for q in queries[:5]:  # warm the cache, as a running service would be
            conn.execute(SEARCH, (q, K, None, False)).fetchall()
        exact_ms, truth = [], []
        for q in queries:
            ms, rows = _timed(conn, SEARCH, (q, K, None, True))
            exact_ms.append(ms)
            truth.append(rows)
        print(f"\n{total:,} joint vectors, {len(queries)} queries, k = {K}")
        print(f"exact: p50 {_p(exact_ms, 50):.1f} ms, p95 {_p(exact_ms, 95):.1f} ms (the limit: recall 1.0)")
        print("| ef_search | recall@10 | p50 ms | p95 ms | p50 vs exact |")
        print("| --- | --- | --- | --- | --- |")
        for ef in EF_SEARCH:
            conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
            latencies, recalls = [], []
            for q, expected in zip(queries, truth):
                ms, rows = _timed(conn, SEARCH, (q, K, None, False))
                latencies.append(ms)
                recalls.append(_recall(rows, expected))
            print(f"| {ef} | {statistics.mean(recalls):.3f} | {_p(latencies, 50):.2f} | {_p(latencies, 95):.2f} | "
                  f"{_p(exact_ms, 50) / _p(latencies, 50):.0f}x faster |")
        conn.execute("RESET hnsw.ef_search")
        dates = [row[0] for row in conn.execute(
            "SELECT as_of_date FROM historical_db.run_vectors_v1 WHERE space = 'joint' ORDER BY as_of_date").fetchall()]
        print("\nFiltered by as-of date (point-in-time), default ef_search:")
        print("| selectivity | recall@10 | p50 ms | p95 ms | exact p50 ms | exact p95 ms |")
        print("| --- | --- | --- | --- | --- | --- |")
        for share in (0.5, 0.1, 0.01, 0.001):
            as_of = dates[max(0, int(len(dates) * share) - 1)]
            hnsw_ms, exact_f_ms, recalls = [], [], []
            for q in queries[: max(20, len(queries) // 2)]:
                e_ms, expected = _timed(conn, SEARCH, (q, K, as_of, True))
                ms, rows = _timed(conn, SEARCH, (q, K, as_of, False))
                hnsw_ms.append(ms)
                exact_f_ms.append(e_ms)
                recalls.append(_recall(rows, expected))
            print(f"| {share:.1%} | {statistics.mean(recalls):.3f} | {_p(hnsw_ms, 50):.2f} | {_p(hnsw_ms, 95):.2f} | "
                  f"{_p(exact_f_ms, 50):.1f} | {_p(exact_f_ms, 95):.1f} |")


# The plain form and its halfvec twin (the query cast to match the expression index), and the halfvec walk
# re-ranked by exact float32 distance over its first %s candidates; {table} and {where} pick the space.
PLAIN_F32 = "SELECT vector <-> %s AS distance FROM historical_db.{table} {where} ORDER BY vector <-> %s LIMIT %s"
PLAIN_HALF = ("SELECT vector <-> %s AS distance FROM historical_db.{table} {where} "
              "ORDER BY vector::halfvec(384) <-> %s::vector::halfvec(384) LIMIT %s")
RERANK_HALF = ("SELECT c.vector <-> %s AS distance FROM (SELECT vector FROM historical_db.{table} {where} "
               "ORDER BY vector::halfvec(384) <-> %s::vector::halfvec(384) LIMIT %s) c "
               "ORDER BY c.vector <-> %s LIMIT %s")


def _build(conn: psycopg.Connection, statement: str, name: str) -> tuple[float, int]:
    conn.execute(sql.SQL("DROP INDEX IF EXISTS historical_db.{}").format(sql.Identifier(name)))
    started = time.perf_counter()
    conn.execute(statement)
    seconds = time.perf_counter() - started
    size = conn.execute("SELECT pg_relation_size(%s::regclass)", (f"historical_db.{name}",)).fetchone()[0]
    return seconds, size


def compare_halfvec(url: str, queries: np.ndarray, space: str = "joint") -> None:
    """HNSW over vector(384) against HNSW over vector::halfvec(384) (an expression index, float32 rows
    unchanged), on the same vectors of one space in the same run: build time, size, recall@10 and latency
    at each ef_search, and the halfvec walk re-ranked by exact float32 distance."""
    table, where = ("joint_embeddings", "") if space == "joint" else ("branch_embeddings", f"WHERE branch = '{space}'")
    plain_f32, plain_half, rerank_half = (text.format(table=table, where=where)
                                          for text in (PLAIN_F32, PLAIN_HALF, RERANK_HALF))
    position = graphs.SPACES.index(space)
    f32_index, half_index = graphs.INDEX_NAMES[(space, "vector")], graphs.INDEX_NAMES[(space, "halfvec")]
    with connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '3GB'")
        total = conn.execute(f"SELECT count(*) FROM historical_db.{table} {where}").fetchone()[0]  # noqa: S608
        f32_build, f32_size = _build(conn, statements(graphs.INDEX_FILES["vector"])[position], f32_index)
        half_build, half_size = _build(conn, statements(graphs.INDEX_FILES["halfvec"])[position], half_index)
        conn.execute(f"ANALYZE historical_db.{table}")
        print(f"\nhalfvec against vector, {total:,} {space} vectors, {len(queries)} queries, k = {K}")
        print("| graph | build s | index MB | bytes a vector |")
        print("| --- | --- | --- | --- |")
        for label, build, size in (("vector(384)", f32_build, f32_size), ("halfvec(384)", half_build, half_size)):
            print(f"| {label} | {build:.1f} | {size / 2**20:.0f} | {size / total:.0f} |")
        print(f"halfvec: {half_size / f32_size:.2f}x the size, {half_build / f32_build:.2f}x the build time")
        plans = {}
        for label, statement, params in (
                ("vector", plain_f32, lambda q: (q, q, K)),
                ("halfvec", plain_half, lambda q: (q, q, K)),
                ("halfvec, re-ranked", rerank_half, lambda q: (q, q, 4 * K, q, K))):
            plans[label] = "\n".join(r[0] for r in conn.execute("EXPLAIN " + statement, params(queries[0])).fetchall())
        assert f32_index in plans["vector"] and half_index in plans["halfvec"], plans
        assert half_index in plans["halfvec, re-ranked"], plans
        for q in queries[:5]:
            for statement in (plain_f32, plain_half):
                conn.execute(statement, (q, q, K)).fetchall()
        conn.execute("SET enable_indexscan = off")
        truth = [conn.execute(plain_f32, (q, q, K)).fetchall() for q in queries]
        conn.execute("RESET enable_indexscan")
        print("| ef_search | vector recall@10 | p50 ms | p95 ms | halfvec recall@10 | p50 ms | p95 ms | "
              "halfvec re-ranked (top 40) recall@10 | p50 ms | p95 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for ef in EF_SEARCH:
            conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
            cells = []
            for statement, params in ((plain_f32, lambda q: (q, q, K)), (plain_half, lambda q: (q, q, K)),
                                      (rerank_half, lambda q, ef=ef: (q, q, max(4 * K, ef), q, K))):
                latencies, recalls = [], []
                for q, expected in zip(queries, truth):
                    ms, rows = _timed(conn, statement, params(q))
                    latencies.append(ms)
                    recalls.append(_recall(rows, expected))
                cells.append(f"{statistics.mean(recalls):.3f} | {_p(latencies, 50):.2f} | {_p(latencies, 95):.2f}")
            print(f"| {ef} | " + " | ".join(cells) + " |")
        conn.execute("RESET hnsw.ef_search")
        conn.execute(sql.SQL("DROP INDEX historical_db.{}").format(sql.Identifier(half_index)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000, help="sample runs imported and embedded")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--reuse", metavar="NAME", help="measure a database kept by an earlier --keep run")
    parser.add_argument("--halfvec", action="store_true",
                        help="also compare an HNSW graph over vector::halfvec(384) with the float32 one")
    parser.add_argument("--only-halfvec", action="store_true", help="the halfvec comparison alone")
    parser.add_argument("--halfvec-space", default="joint", choices=("joint", "config", "env", "outcome"),
                        help="the space the halfvec comparison is made in")
    args = parser.parse_args()
    if args.reuse:
        server = resolve_url(None)
        name, url, args.keep = args.reuse, make_conninfo(server, dbname=args.reuse), True
        migrate.upgrade(url)
    else:
        server, name, url = _create_database()
    try:
        if not args.reuse:
            _load(url, args.n, args.seed)
        queries = _queries(url, args.queries, args.seed)
        if not args.only_halfvec:
            measure(url, queries)
        if args.halfvec or args.only_halfvec:
            compare_halfvec(url, _queries(url, args.queries, args.seed, args.halfvec_space), args.halfvec_space)
    finally:
        if args.keep:
            print(f"kept: {name}")
        else:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    sys.exit(main())
