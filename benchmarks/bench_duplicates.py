"""Duplicate-shaped history (issue 25): every environment tried with every config, as a sweep does.

    python benchmarks/bench_duplicates.py --envs 5000 --configs 40 --keep     # 200,000 runs, kept as dup_5000x40
    python benchmarks/bench_duplicates.py --envs 5000 --configs 40 --reuse    # measure dup_5000x40 again
    python benchmarks/bench_duplicates.py --envs 5000 --reuse --as-it-stands --as-of   # as it is: no embed-runs first
    python benchmarks/bench_duplicates.py --envs 25000 --configs 40 --keep    # 1,000,000 runs
    python benchmarks/bench_duplicates.py --envs 300 --configs 40             # 12,000 runs, about a minute
    python benchmarks/bench_duplicates.py --envs 300 --format json            # one JSON object on stdout
    python benchmarks/bench_duplicates.py --envs 1000 --citus                 # on the local Citus cluster
    python benchmarks/bench_duplicates.py --envs 25000 --citus --keep         # 1,000,000 runs on the cluster, kept
    python benchmarks/bench_duplicates.py --envs 25000 --citus --reuse        # measure that one again
    python benchmarks/bench_duplicates.py --envs 25000 --citus --reuse --as-it-stands --latency-only  # no recall

The history: N environments x M configs (``--configs``, 40 by default), one run each. An environment is a
trailing window of one of ``metaspace.sample``'s simulated markets (several histories of each market, so
that environments never repeat), measured as the sample measures it (realised vol, trend, autocorrelation,
drawdown, vol of vol, regime mix, universe) plus a simulated short rate (its level, 3-month change and
cycle); its M runs share that env object and their ``as_of_date`` (the end of the 63-day forward window,
1997-2021). The configs are the sample's strategy families and their parameters (its 31 and more), so each
run's outcome (Sharpe, CAGR, max drawdown, turnover, hit rate) is what its config earned in that window. The
runs are written as JSONL and loaded by the default path, ``metaspace.import_runs`` then
``metaspace.embed_runs``; both are timed. ``--reuse`` measures a database of the same N x M built by an
earlier run (``dup_<envs>x<configs>``, kept) after migrating it to this checkout's head and running
``embed_runs`` again (which builds the graphs the head's defaults choose); otherwise it is built afresh.

Measured, all through the stable SQL names, on one kept connection:

- **recall** of ``historical_db.search_runs`` (the default path) against ``exact => true``, for ``--queries``
  environments of the history (each one's env vector read from ``historical_db.branch_embeddings``) in
  space env, and as many runs' config vectors (every config in turn) in space config, at k = 10 and 1000.
  Recall is measured on runs: the share of the k returned runs whose distance is within the exact answer's
  k-th (the exact answer ordered by distance, then run_id; a returned run tied with the k-th counts, so any
  k of 40 copies at distance 0 are all found). Also the worst query, and **self-recall**: the queries whose
  answer holds no run of their own environment (env) or config (config);
- **storage**: all relations of schema historical_db (tables, indexes, TOAST) over the runs, and where the
  bytes go;
- **latency** p50/p95 (after a warm-up) of ``search_runs`` (k 10, env), ``neighbours`` (a run, k 10, joint)
  and ``suggest_configs`` (the env vector, k 10);
- with ``--citus``, **where a joint search's time goes on the cluster**: the plain walk from the client, and its
  EXPLAIN ANALYZE with every task shown (the coordinator's time, the slowest shard's walk, all shards' together);
- with ``--as-of``, **searches as of early dates** in joint and outcome: at 1.5% to 100% of the space's vectors
  known as of the date, p50/p95 of ``search_runs`` and its recall@10 against ``exact => true`` (the as-of prefix
  graphs' work).

Every figure is printed beside the issue's limit: recall >= 0.99 and no query missing its own environment
or config; storage per run <= 0.7 x 13,941 bytes (the issue's measure of the layout before it). The exit
status is 1 when a limit is missed. Runs on the embedded server (or ``METASPACE_DATABASE_URL``'s server).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import metaspace
from metaspace import sample
from metaspace.store import citus, cluster, graphs
from metaspace.store.connection import connect, resolve_url

KS = (10, 1000)
RECALL_LIMIT = 0.99
TODAY_BYTES_PER_RUN = 13_941  # issue 25: 200,000 runs on the layout of one branch vector per run
STORAGE_SHARE = 0.7
ENVS_PER_HISTORY = 100  # environments drawn from one simulated market history (of ~6,200 trading days)
WARM_UP = 20

ENV_VECTOR = "SELECT vector FROM historical_db.branch_embeddings WHERE run_id = %s AND branch = 'env'"
CONFIG_VECTOR = "SELECT vector FROM historical_db.branch_embeddings WHERE run_id = %s AND branch = 'config'"
SEARCH = ("SELECT run_id, config_id, distance FROM historical_db.search_runs(%(q)s, %(k)s, space => %(space)s, "
          "exact => %(exact)s)")
NEIGHBOURS = "SELECT run_id, distance FROM historical_db.neighbours(%(run)s, k => 10, space => 'joint')"
SUGGEST = "SELECT config_id, score FROM historical_db.suggest_configs(%(q)s, k => 10)"


# The history ---------------------------------------------------------------------------------------------

def sweep_configs(m: int) -> list[sample.Config]:
    """M distinct configs: the sample's, then more of the same families, taken in turn from each family."""
    trend = [c for c in sample.configs() if c.family == "trend"]
    reverting = [c for c in sample.configs() if c.family == "mean_reversion"]
    targeting = [c for c in sample.configs() if c.family == "vol_target"]
    for lookback, rebalance, target_vol in itertools.product((10, 40, 90, 180, 360), ("daily", "weekly"),
                                                             (0.10, 0.15)):
        trend.append(sample.Config(
            f"TREND_L{lookback}_{rebalance[0].upper()}_TV{int(target_vol * 100)}", "trend",
            {"strategy": "trend", "lookback_days": lookback, "rebalance": rebalance,
             "risk": {"target_vol": target_vol, "max_leverage": 2.0},
             "trend": {"signal": "sign_of_return", "vol_window": 20}}))
    for lookback, entry_z in itertools.product((3, 15, 40), (0.75, 1.5)):
        reverting.append(sample.Config(
            f"MEANREV_L{lookback}_Z{int(entry_z * 10)}", "mean_reversion",
            {"strategy": "mean_reversion", "lookback_days": lookback, "rebalance": "daily",
             "risk": {"target_vol": 0.10, "max_leverage": 2.0},
             "mean_reversion": {"entry_z": entry_z, "band": "zscore"}}))
    for vol_window, target_vol in itertools.product((10, 40, 120), (0.10, 0.20)):
        targeting.append(sample.Config(
            f"VOLTGT_V{vol_window}_TV{int(target_vol * 100)}", "vol_target",
            {"strategy": "vol_target", "lookback_days": vol_window, "rebalance": "weekly",
             "risk": {"target_vol": target_vol, "max_leverage": 1.5},
             "vol_target": {"vol_window": vol_window}}))
    grid = [c for c in itertools.chain(*itertools.zip_longest(trend, reverting, targeting)) if c is not None]
    if not 1 <= m <= len(grid):
        raise SystemExit(f"--configs must be 1 to {len(grid)} (the configs this benchmark knows), got {m}")
    assert len({c.config_id for c in grid}) == len(grid)
    return grid[:m]


def _short_rate(rng: np.random.Generator) -> np.ndarray:
    """A mean-reverting daily short rate around 3% (stationary sd ~1.5%), never below zero."""
    rate = np.empty(sample.DAYS)
    level = 0.03 + rng.normal(0, 0.015)
    for day, shock in enumerate(rng.normal(0, 0.001, sample.DAYS)):
        level += 0.002 * (0.03 - level) + shock
        rate[day] = max(level, 0.0)
    return rate


def _market_history(h: int, envs: int, grid: list[sample.Config], seed: int) -> Iterator[tuple[dict, list[dict]]]:
    """The environments of one simulated market history: (env fields, the M configs' outcomes) each."""
    rng = np.random.default_rng([seed, h])
    market = list(sample.MARKETS)[h % len(sample.MARKETS)]
    assets, vol_multiplier, hhi = sample.MARKETS[market]
    returns, _ = sample._market(rng, vol_multiplier)
    rate = _short_rate(rng)
    positions = np.stack([sample._positions(config, returns) for config in grid])
    strategy = np.stack([sample._strategy_returns(p, returns) for p in positions])
    t = np.sort(rng.choice(np.arange(sample.WARMUP, sample.DAYS - sample.FORWARD), size=envs, replace=False))
    trailing = returns[t[:, None] + np.arange(-sample.TRAILING, 0)]
    ahead = t[:, None] + np.arange(sample.FORWARD)
    forward = strategy[:, ahead]  # configs x environments x days
    held = positions[:, np.concatenate([ahead[:, :1] - 1, ahead], axis=1)]
    vol = trailing.std(axis=1) * np.sqrt(252)
    tstat = trailing.mean(axis=1) / np.maximum(trailing.std(axis=1), 1e-9) * np.sqrt(sample.TRAILING)
    autocorr = sample._autocorr(trailing)
    drawdown = sample._max_drawdown(trailing)
    vol_of_vol = trailing.reshape(envs, -1, 21).std(axis=-1).std(axis=-1) * np.sqrt(252)
    mix = sample._regime_mix(trailing)
    change = rate[t - 1] - rate[t - 64]
    sharpe = sample._sharpe(forward)
    cagr = np.expm1(forward.sum(axis=-1) * 252 / sample.FORWARD)
    max_dd = sample._max_drawdown(forward)
    turnover = np.abs(np.diff(held, axis=-1)).sum(axis=-1) * 252 / sample.FORWARD
    active = forward != 0
    hits = np.where(active.any(axis=-1), (forward > 0).sum(axis=-1) / np.maximum(active.sum(axis=-1), 1), 0.0)
    for i in range(envs):
        env = {
            "realized_vol": round(float(vol[i]), 5),
            "trend": {"tstat": round(float(tstat[i]), 4), "strength": round(abs(float(tstat[i])), 4)},
            "autocorr_1d": round(float(autocorr[i]), 4),
            "drawdown": round(float(drawdown[i]), 5),
            "vol_of_vol": round(float(vol_of_vol[i]), 5),
            "regime_mix": {r: round(float(mix[r][i]), 4) for r in sample.REGIMES},
            "rates": {"level": round(float(rate[t[i] - 1]), 5), "change_3m": round(float(change[i]), 5),
                      "cycle": "hiking" if change[i] > 0.0025 else "cutting" if change[i] < -0.0025 else "on_hold"},
            "universe": {"market": market, "n_assets": int(assets), "sector_hhi": hhi},
        }
        dates = np.busday_offset(np.datetime64(sample.START), [t[i], t[i] + sample.FORWARD - 1], roll="forward")
        outcomes = [{"sharpe": round(float(sharpe[c, i]), 4), "cagr": round(float(cagr[c, i]), 5),
                     "max_drawdown": round(float(max_dd[c, i]), 5), "turnover": round(float(turnover[c, i]), 3),
                     "hit_rate": round(float(hits[c, i]), 4)} for c in range(len(grid))]
        yield {"env": env, "test_start": str(dates[0]), "as_of_date": str(dates[1]), "market": market}, outcomes


def history(envs: int, configs: int, seed: int) -> Iterator[dict[str, Any]]:
    """The N x M run records, environment by environment (run_id ``DUP_<env>_<config>``)."""
    grid = sweep_configs(configs)
    histories = max(len(sample.MARKETS), math.ceil(envs / ENVS_PER_HISTORY))
    e = 0
    for h in range(histories):
        count = envs // histories + (h < envs % histories)
        if not count:
            continue
        for fields, outcomes in _market_history(h, count, grid, seed):
            for c, (config, outcome) in enumerate(zip(grid, outcomes)):
                yield {"run_id": f"DUP_{e:07d}_{c:03d}", "config_id": config.config_id,
                       "strategy_id": f"{fields['market']}_{config.family.upper()}",
                       "as_of_date": fields["as_of_date"], "test_start": fields["test_start"],
                       "config": config.body, "env": fields["env"], "outcome": outcome}
            e += 1


def _environment(run_id: str) -> int:
    return int(run_id.split("_")[1])


# The database --------------------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _citus_database(name: str, reuse: bool, runs: int) -> tuple[str, str, bool]:
    """A fresh database on every node of the local Citus cluster (metaspace db cluster start), the workers
    registered: migrate distributes its tables. With ``reuse``, the one kept by an earlier ``--keep`` if it holds
    exactly the N x M runs."""
    nodes = _cluster_nodes()
    server = cluster.current().url(0, "postgres")
    if reuse:
        url = make_conninfo(server, dbname=name)
        try:
            with psycopg.connect(url) as conn:
                held = conn.execute("SELECT count(*) FILTER (WHERE run_id LIKE 'DUP\\_%'), count(*) "
                                    "FROM historical_db.runs").fetchone() == (runs, runs)
        except psycopg.Error:
            held = False
        if held:
            return server, url, True
        _log(f"{name} does not hold the {runs:,} runs of this N x M on the cluster: building it again")
    cluster.drop_database(server, nodes, name)
    return server, cluster.prepare_database(server, nodes, name), False


def _cluster_nodes() -> list[tuple[str, int]]:
    local = cluster.current()
    return [(str(local.socket_dir), port) for port in local.ports]


def _database(name: str, reuse: bool, runs: int) -> tuple[str, str, bool]:
    """(server URL, database URL, whether it already holds the N x M runs): a fresh database, unless
    ``reuse`` finds one holding exactly them."""
    server = resolve_url(None)
    url = make_conninfo(server, dbname=name)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if reuse and exists:
        with psycopg.connect(url) as conn:
            held = conn.execute("SELECT to_regclass('historical_db.runs') IS NOT NULL").fetchone()[0] and \
                conn.execute("SELECT count(*) FILTER (WHERE run_id LIKE 'DUP\\_%'), count(*) "
                             "FROM historical_db.runs").fetchone() == (runs, runs)
        if held:
            return server, url, True
        _log(f"{name} does not hold the {runs:,} runs of this N x M: building it again")
    with psycopg.connect(server, autocommit=True) as conn:
        if exists:
            _log(f"dropping {name} to build it afresh")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server, url, False


def load(url: str, envs: int, configs: int, seed: int) -> dict[str, Any]:
    """Write the history as JSONL and load it by the default path; the seconds and rates of each step."""
    runs = envs * configs
    folder = Path(tempfile.mkdtemp(prefix="bench_duplicates_"))
    try:
        path = folder / "runs.jsonl"
        started = time.perf_counter()
        metaspace.write_runs(history(envs, configs, seed), path)
        written = time.perf_counter() - started
        _log(f"wrote {runs:,} runs ({path.stat().st_size / 1e6:.0f} MB of JSONL) in {written:.0f} s")
        started = time.perf_counter()
        imported = metaspace.import_runs([str(path)], database_url=url)
        import_s = time.perf_counter() - started
    finally:
        shutil.rmtree(folder)
    if imported.rejected or imported.inserted != runs:
        raise SystemExit(f"import: {imported.inserted:,} of {runs:,} runs inserted, {imported.rejected} rejected: "
                         f"{imported.rejects[:3]}")
    _log(f"imported in {import_s:.0f} s ({runs / import_s:,.0f} runs/s)")
    embedded = _embed(url)
    return {"write_seconds": written, "import_seconds": import_s, "import_runs_per_s": runs / import_s, **embedded}


def _embed(url: str) -> dict[str, Any]:
    started = time.perf_counter()
    summary = metaspace.embed_runs(database_url=url)
    seconds = time.perf_counter() - started
    rate = summary.embedded / seconds if summary.embedded else 0.0
    _log(f"embedded {summary.embedded:,} runs in {seconds:.0f} s ({rate:,.0f} runs/s; HNSW builds "
         f"{summary.index_seconds:.0f} s); graphs: {summary.graph_types}")
    return {"embed_seconds": seconds, "embedded": summary.embedded, "embed_runs_per_s": rate,
            "index_seconds": summary.index_seconds, "graphs": summary.graph_types}


# The measures --------------------------------------------------------------------------------------------

def pick_queries(conn: psycopg.Connection, envs: int, configs: int, count: int, seed: int) -> dict[str, list]:
    """``count`` environments of the history (a run of each, its env vector) and ``count`` runs covering
    every config in turn (their config vectors): (run_id, vector) pairs by space."""
    rng = np.random.default_rng(seed + 25)
    env_runs = [f"DUP_{e:07d}_{rng.integers(configs):03d}"
                for e in rng.choice(envs, size=min(count, envs), replace=False)]
    config_runs = [f"DUP_{e:07d}_{i % configs:03d}" for i, e in enumerate(rng.integers(envs, size=count))]
    return {"env": [(run, conn.execute(ENV_VECTOR, (run,)).fetchone()[0]) for run in env_runs],
            "config": [(run, conn.execute(CONFIG_VECTOR, (run,)).fetchone()[0]) for run in config_runs]}


def recall(conn: psycopg.Connection, space: str, queries: list, grid: list[sample.Config]) -> dict[int, dict]:
    """Recall on runs and self-recall of the default path against the exact one, at every k of KS."""
    ids = [c.config_id for c in grid]
    recalls: dict[int, list[float]] = {k: [] for k in KS}
    strays = dict.fromkeys(KS, 0)
    for run, q in queries:
        # the exact answer at the largest k, ordered by (distance, run_id): its first k rows are the one at k
        exact = conn.execute(SEARCH, {"q": q, "k": max(KS), "space": space, "exact": True}).fetchall()
        for k in KS:
            found = conn.execute(SEARCH, {"q": q, "k": k, "space": space, "exact": False}).fetchall()
            truth = exact[:k]
            kth = truth[-1][2]
            within = sum(1 for r in found if r[2] <= kth * (1 + 1e-6) + 1e-9)
            recalls[k].append(min(len(truth), within) / len(truth))
            if space == "env":
                strays[k] += not any(_environment(r[0]) == _environment(run) for r in found)
            else:
                strays[k] += not any(r[1] == ids[int(run.split("_")[2])] for r in found)
    return {k: {"mean": statistics.mean(recalls[k]), "worst": min(recalls[k]), "queries": len(queries),
                "missing_own": strays[k]} for k in KS}


def storage(conn: psycopg.Connection, runs: int, top: int = 12) -> dict[str, Any]:
    """Bytes of every relation of historical_db (a table with its TOAST, each index on its own). On Citus, the
    whole only: every node's relations of the schema (the shards, and each node's copy of the reference tables)."""
    if citus.distributed(conn):
        total = conn.execute("""
            SELECT sum(result::bigint)::bigint FROM run_command_on_all_nodes($$
                SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
                JOIN pg_namespace s ON s.oid = c.relnamespace
                WHERE s.nspname = 'historical_db' AND c.relkind IN ('r', 'm', 'S')$$)""").fetchone()[0]
        return {"bytes": total, "bytes_per_run": total / runs, "tables": [], "relations": []}
    rows = conn.execute("""
        SELECT c.relname, CASE c.relkind WHEN 'i' THEN 'index' ELSE 'table' END,
               coalesce(t.relname, c.relname),
               CASE c.relkind WHEN 'i' THEN pg_relation_size(c.oid) ELSE pg_table_size(c.oid) END
        FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
        LEFT JOIN pg_index i ON i.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = i.indrelid
        WHERE s.nspname = 'historical_db' AND c.relkind IN ('r', 'm', 'S', 'i')
        ORDER BY 4 DESC, 1""").fetchall()
    total = conn.execute("""
        SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
        JOIN pg_namespace s ON s.oid = c.relnamespace
        WHERE s.nspname = 'historical_db' AND c.relkind IN ('r', 'm', 'S')""").fetchone()[0]
    assert total == sum(r[3] for r in rows), (total, sum(r[3] for r in rows))
    tables: dict[str, int] = {}
    for _, _, table, size in rows:
        tables[table] = tables.get(table, 0) + size
    return {"bytes": total, "bytes_per_run": total / runs,
            "tables": [{"table": t, "bytes": b, "bytes_per_run": b / runs}
                       for t, b in sorted(tables.items(), key=lambda kv: -kv[1])],
            "relations": [{"relation": n, "kind": kind, "table": t, "bytes": b, "bytes_per_run": b / runs}
                          for n, kind, t, b in rows[:top]]}


def _latency(conn: psycopg.Connection, statement: str, params: list[dict]) -> dict[str, float]:
    for p in params[:WARM_UP]:
        conn.execute(statement, p).fetchall()
    times = []
    for p in params:
        started = time.perf_counter()
        conn.execute(statement, p).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "calls": len(times)}


def latency(conn: psycopg.Connection, env_queries: list) -> dict[str, dict]:
    return {
        "search_runs(env, k 10)": _latency(conn, SEARCH, [{"q": q, "k": 10, "space": "env", "exact": False}
                                                          for _, q in env_queries]),
        "neighbours(run, k 10, joint)": _latency(conn, NEIGHBOURS, [{"run": run} for run, _ in env_queries]),
        "suggest_configs(env, k 10)": _latency(conn, SUGGEST, [{"q": q} for _, q in env_queries]),
    }


AS_OF_SEARCH = ("SELECT run_id, distance FROM historical_db.search_runs(%(q)s, 10, space => %(space)s, "
                "as_of => %(day)s, exact => %(exact)s)")
AS_OF_SHARES = (0.015, 0.03, 0.06, 0.12, 0.25, 0.5, 1.0)
AS_OF_QUERIES = 40


def as_of_tail(conn: psycopg.Connection, seed: int) -> dict[str, list[dict]]:
    """Searches as of early dates (the as-of prefix graphs' work), in joint and outcome: at each share of the
    space's vectors known as of the date, p50 / p95 of ``search_runs`` (k 10, the default path) and its recall
    against ``exact => true`` (runs within the exact 10th distance), over ``AS_OF_QUERIES`` vectors of the
    space, each share warmed up first; a space without a graph (answered exactly) is left out."""
    out: dict[str, list[dict]] = {}
    dated = {"joint": "SELECT as_of_date FROM historical_db.joint_embeddings ORDER BY as_of_date",
             "outcome": "SELECT first_seen FROM historical_db.branch_entities WHERE branch = 'outcome' "
                        "ORDER BY first_seen"}
    vectors = {"joint": "SELECT vector FROM historical_db.joint_embeddings ORDER BY md5(run_id || %s) LIMIT %s",
               "outcome": "SELECT vector FROM historical_db.branch_entities WHERE branch = 'outcome' "
                          "ORDER BY md5(entity_id::text || %s) LIMIT %s"}
    walked = {space for space, _ in graphs.present(conn)}
    for space in ("joint", "outcome"):
        if space not in walked:  # answered exactly at every date: nothing of the prefix graphs to measure
            continue
        dates = [d for (d,) in conn.execute(dated[space])]
        queries = [q for (q,) in conn.execute(vectors[space], (str(seed), AS_OF_QUERIES))]
        rows = []
        for share in AS_OF_SHARES:
            day = dates[min(len(dates) - 1, int(share * len(dates)))]
            params = [{"q": q, "space": space, "day": day, "exact": False} for q in queries]
            for p in params[:WARM_UP // 2]:
                conn.execute(AS_OF_SEARCH, p).fetchall()
            times, found = [], 0
            for p in params:
                started = time.perf_counter()
                answer = conn.execute(AS_OF_SEARCH, p).fetchall()
                times.append((time.perf_counter() - started) * 1000)
                kth = conn.execute(AS_OF_SEARCH, {**p, "exact": True}).fetchall()[-1][1] + 1e-9
                found += min(10, sum(1 for _, distance in answer if distance <= kth))
            rows.append({"share": share, "as_of": day.isoformat(), "recall": found / (10 * len(params)),
                         "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))})
        out[space] = rows
    return out


PLAIN_WALK = ("SELECT run_id, vector <-> %(q)s AS distance FROM historical_db.joint_embeddings "
              "ORDER BY vector <-> %(q)s LIMIT 10")


def _distributed_scan(node: dict) -> dict | None:
    if "Distributed Query" in node:
        return node
    for child in node.get("Plans", []):
        found = _distributed_scan(child)
        if found:
            return found
    return None


def citus_breakdown(conn: psycopg.Connection, runs: list[str]) -> dict[str, Any]:
    """On Citus, where a joint search's time goes. The plain walk (``ORDER BY vector <-> q LIMIT 10``: every
    shard walks its own graph for its 10 nearest, the coordinator merges them) timed whole from the client,
    then EXPLAIN ANALYZE of it with every task shown: the coordinator's planning and execution time, the slowest
    shard's walk, the slowest node's walks added up and all shards' walks together. A query this short runs on
    one connection per node (Citus opens more only after citus.executor_slow_start_interval), so a node's shards
    are walked one after another while the nodes work side by side (here on the same 2 cores as the
    coordinator): the slowest node is the wait, the sum is the work. The coordinator's own share (planning the
    tasks, sending them, merging the sorted lists) is its execution time less the slowest node's."""
    vectors = [v for (v,) in conn.execute("SELECT vector FROM historical_db.joint_embeddings WHERE run_id = ANY(%s) "
                                          "ORDER BY run_id", (runs,))]
    wall = _latency(conn, PLAIN_WALK, [{"q": v} for v in vectors])
    conn.execute("SET citus.explain_all_tasks = on")
    parts: dict[str, list[float]] = {"coordinator planning": [], "coordinator execution": [], "slowest shard": [],
                                     "slowest node, its shards in turn": [], "all shards together": [],
                                     "coordinator's own share": []}
    tasks = 0
    for v in vectors:
        [explained] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + PLAIN_WALK, {"q": v}).fetchone()
        top = explained[0]
        by_node: dict[str, float] = {}
        shards = []
        for task in _distributed_scan(top["Plan"])["Distributed Query"]["Job"]["Tasks"]:
            shards.append(task["Remote Plan"][0][0]["Execution Time"])
            by_node[task["Node"]] = by_node.get(task["Node"], 0.0) + shards[-1]
        tasks = len(shards)
        parts["coordinator planning"].append(top["Planning Time"])
        parts["coordinator execution"].append(top["Execution Time"])
        parts["slowest shard"].append(max(shards))
        parts["slowest node, its shards in turn"].append(max(by_node.values()))
        parts["all shards together"].append(sum(shards))
        parts["coordinator's own share"].append(top["Execution Time"] - max(by_node.values()))
    conn.execute("RESET citus.explain_all_tasks")
    return {"tasks": tasks, "queries": len(vectors), "wall": wall,
            "parts": {name: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}
                      for name, t in parts.items()}}


# The report ----------------------------------------------------------------------------------------------

def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure the issue sets a limit for, with the limit and whether it holds."""
    out = []
    for space, by_k in result["recall"].items():
        for k, r in by_k.items():
            out.append({"figure": f"{space} recall@{k} (mean)", "value": r["mean"], "limit": f">= {RECALL_LIMIT}",
                        "ratio": r["mean"] / RECALL_LIMIT, "meets": r["mean"] >= RECALL_LIMIT})
            out.append({"figure": f"{space} queries missing their own {space} @{k}", "value": r["missing_own"],
                        "limit": "0", "ratio": None, "meets": r["missing_own"] == 0})
    limit = STORAGE_SHARE * TODAY_BYTES_PER_RUN
    per_run = result["storage"]["bytes_per_run"]
    out.append({"figure": "storage bytes per run", "value": per_run, "limit": f"<= {limit:,.0f}",
                "ratio": per_run / limit, "meets": per_run <= limit})
    return out


def print_report(result: dict[str, Any]) -> None:
    n, m = result["envs"], result["configs"]
    print(f"\n## {n:,} environments x {m} configs = {result['runs']:,} runs ({result['database']})")
    loaded = result["load"]
    if "import_seconds" in loaded:
        print(f"load: import_runs {loaded['import_seconds']:.1f} s ({loaded['import_runs_per_s']:,.0f} runs/s), "
              f"embed_runs {loaded['embed_seconds']:.1f} s ({loaded['embed_runs_per_s']:,.0f} runs/s, HNSW builds "
              f"{loaded['index_seconds']:.1f} s)")
    else:
        print(f"load: reused; embed_runs {loaded['embed_seconds']:.1f} s ({loaded['embedded']:,} runs embedded)")
    print(f"graphs: {', '.join(f'{s} ({kind})' for s, kind in loaded['graphs'].items()) or 'none'}")
    print("\n| space | k | recall (mean) | worst query | queries missing their own env/config |")
    print("| --- | --- | --- | --- | --- |")
    for space, by_k in result["recall"].items():
        for k, r in by_k.items():
            print(f"| {space} | {k} | {r['mean']:.3f} | {r['worst']:.3f} | {r['missing_own']} of {r['queries']} |")
    s = result["storage"]
    print(f"\nstorage: {s['bytes'] / 1e6:,.1f} MB, {s['bytes_per_run']:,.0f} bytes a run")
    print("| table (with its indexes and TOAST) | MB | bytes a run |\n| --- | --- | --- |")
    for t in s["tables"]:
        if t["bytes_per_run"] >= 1:
            print(f"| {t['table']} | {t['bytes'] / 1e6:,.1f} | {t['bytes_per_run']:,.0f} |")
    print("\n| largest relations | kind | MB | bytes a run |\n| --- | --- | --- | --- |")
    for r in s["relations"]:
        print(f"| {r['relation']} | {r['kind']} | {r['bytes'] / 1e6:,.1f} | {r['bytes_per_run']:,.0f} |")
    print(f"\n| call (one kept connection, after {WARM_UP} warm-up calls) | p50 ms | p95 ms |\n| --- | --- | --- |")
    for call, t in result["latency"].items():
        print(f"| `{call}` | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} |")
    for space, rows in result.get("as_of", {}).items():
        print(f"\n| {space} search as of a date (share of its vectors known then) | as of | recall@10 | p50 ms | p95 ms |"
              "\n| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['share']:.1%} | {r['as_of']} | {r['recall']:.3f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |")
    b = result.get("citus_breakdown")
    if b:
        print(f"\n**Where a joint search's time goes on the cluster** (the plain walk, k 10, {b['queries']} queries; "
              f"{b['tasks']} shard tasks each): from the client p50 {b['wall']['p50_ms']:.2f} ms, "
              f"p95 {b['wall']['p95_ms']:.2f} ms\n\n| part (EXPLAIN ANALYZE, every task shown) | p50 ms | p95 ms |"
              "\n| --- | --- | --- |")
        for part, t in b["parts"].items():
            print(f"| {part} | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} |")
    print("\n| against the issue's limit | value | limit | ratio | meets |\n| --- | --- | --- | --- | --- |")
    for v in result["verdicts"]:
        value = f"{v['value']:,.3f}" if isinstance(v["value"], float) and v["value"] < 10 else f"{v['value']:,.0f}"
        ratio = "" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        print(f"| {v['figure']} | {value} | {v['limit']} | {ratio} | {'yes' if v['meets'] else '**no**'} |")
    print(f"\n{result['seconds']:.0f} s end to end")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=5_000, help="environments in the history")
    parser.add_argument("--configs", type=int, default=40, help="configs, each tried in every environment")
    parser.add_argument("--queries", type=int, default=200, help="queries of each space")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database (dup_<envs>x<configs>)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure dup_<envs>x<configs> if it holds this N x M (migrated to head, embed_runs "
                             "run again), else build it; kept either way")
    parser.add_argument("--as-it-stands", action="store_true",
                        help="with --reuse: measure the database as it is, without embed-runs (which would build "
                             "the graphs and copies the defaults choose), e.g. after dropping an index by hand")
    parser.add_argument("--breakdown-only", action="store_true",
                        help="with --citus: storage and where a search's time goes, without recall and latency "
                             "(a suggest on the cluster takes seconds at 1,000,000 runs)")
    parser.add_argument("--latency-only", action="store_true",
                        help="latency and storage without recall (whose exact scans take most of an hour on the "
                             "cluster at 1,000,000 runs)")
    parser.add_argument("--citus", action="store_true",
                        help="on the local Citus cluster (metaspace db cluster start), its tables distributed")
    parser.add_argument("--as-of", action="store_true",
                        help="also time joint and outcome searches as of early dates (the as-of prefix graphs)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = args.envs * args.configs
    grid = sweep_configs(args.configs)
    name = f"dup_{args.envs}x{args.configs}" + (f"_s{args.seed}" if args.seed != 1 else "")
    if args.citus:
        name += "_citus"
    server, url, loaded = (_citus_database(name, args.reuse, runs) if args.citus
                           else _database(name, args.reuse, runs))
    try:
        metaspace.migrate(database_url=url)
        if loaded and args.as_it_stands:
            _log(f"reusing {name} as it stands (no embed-runs)")
            with connect(url) as conn:
                load_figures = {"embed_seconds": 0.0, "embedded": 0,
                                "graphs": {space: kind for space, kind in sorted(graphs.present(conn))}}
        elif loaded:
            _log(f"reusing {name}")
            load_figures = _embed(url)
        else:
            load_figures = load(url, args.envs, args.configs, args.seed)
        metaspace.close()
        with connect(url, autocommit=True) as conn:
            queries = pick_queries(conn, args.envs, args.configs, args.queries, args.seed)
            figures, times = {}, {}
            if not (args.breakdown_only or args.latency_only):
                figures = {space: recall(conn, space, queries[space], grid) for space in ("env", "config")}
                _log("recall measured")
            if not args.breakdown_only:
                times = latency(conn, queries["env"])
            tail = as_of_tail(conn, args.seed) if args.as_of else {}
            breakdown = citus_breakdown(conn, [run for run, _ in queries["env"]]) if args.citus else None
            sizes = storage(conn, runs)
        result = {"envs": args.envs, "configs": args.configs, "runs": runs, "seed": args.seed, "database": name,
                  "load": load_figures, "recall": figures, "storage": sizes, "latency": times, "as_of": tail,
                  "citus_breakdown": breakdown}
        result["verdicts"] = verdicts(result)
        result["seconds"] = time.perf_counter() - started
    finally:
        metaspace.close()
        if args.keep or args.reuse:
            _log(f"kept: {name}")
        elif args.citus:
            cluster.drop_database(server, _cluster_nodes(), name)
        else:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    if args.format == "json":
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if all(v["meets"] for v in result["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
