"""Suggestions measured by ``metaspace evaluate`` on held-out history: v1's ranking, each change tried, and v2.

    python benchmarks/bench_evaluate.py                       # daily, monthly (arch) and the sample history
    python benchmarks/bench_evaluate.py --corpus monthly --keep

For each corpus a fresh database on the embedded server (or METASPACE_DATABASE_URL's server) is built, the
runs imported and embedded the normal way; if ``metaspace.embed_runs`` takes ``fit_until``, the encoder is
fitted only on runs known before the held-out period, otherwise on every run (and the table says so). Then
``evaluate`` replays the held-out decisions (decision date on or after HELD_OUT_FROM) for each ranking.
The variants (benchmarks/suggest_variants.py) are drafts of v2's SQL measured beside it, installed in a
``bench`` schema of the benchmark database only. ``--keep`` leaves the databases (named
bench_eval_CORPUS) and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).parent))

import corpora  # noqa: E402
import suggest_variants  # noqa: E402

from metaspace import evaluate, pipeline  # noqa: E402
from metaspace.evidence import confidence_line, top_bin  # noqa: E402
from metaspace.sample import sample_runs, write_runs  # noqa: E402
from metaspace.store import migrate  # noqa: E402
from metaspace.store.connection import resolve_url  # noqa: E402

SAMPLE_HELD_OUT_FROM = "2014-01-01"  # the sample history runs 1996-2021: its last ~30 percent of dates
FLIP_HELD_OUT_FROM = "2016-01-01"  # the flip history runs 2012-2017 weekly
HELD_OUT_FROM = {**corpora.HELD_OUT_FROM, "sample": SAMPLE_HELD_OUT_FROM, "flip": FLIP_HELD_OUT_FROM}
CORPORA = ["daily", "monthly", "sample", "flip"]


def flip_history(weeks: int = 300, markets: int = 3, seed: int = 11) -> list[dict]:
    """A control with a signal that flips with the environment (ours, not real data): every week in each
    market four configs are tried together; TREND wins when the trailing trend is up and REVERT when it is
    down, FLAT and LEVER earn a little, all under a shared shock. Any config's history-wide record says
    little here: a ranking must read the environment."""
    rng = np.random.default_rng(seed)
    configs = ("TREND", "REVERT", "FLAT", "LEVER")
    records = []
    for market in range(markets):
        for week in range(weeks):
            decision = dt.date(2012, 1, 2) + dt.timedelta(days=7 * week)
            trend = float(rng.choice([-1, 1]) * rng.uniform(0.2, 2.0))
            env = {"trend": round(trend, 4), "realized_vol": round(float(rng.uniform(0.1, 0.3)), 4),
                   "universe": {"market": f"M{market}"}}
            shock = float(rng.normal(0.0, 1.0))
            for config in configs:
                edge = 1.5 * ((config == "TREND") == (trend > 0)) if config in ("TREND", "REVERT") else 0.3
                records.append({
                    "run_id": f"F{market}_{week:04d}_{config}", "config_id": config, "strategy_id": config,
                    "as_of_date": (decision + dt.timedelta(days=28)).isoformat(),
                    "test_start": (decision + dt.timedelta(days=1)).isoformat(),
                    "config": {"family": config.lower(), "lookback": 20 + configs.index(config)},
                    "env": env, "outcome": {"sharpe": round(shock + edge + float(rng.normal(0.0, 1.0)), 4)}})
    return records


def _records(corpus: str) -> list[dict]:
    if corpus == "daily":
        return corpora.daily_corpus()
    if corpus == "monthly":
        return corpora.monthly_corpus()
    if corpus == "flip":
        return flip_history()
    return sample_runs(20_000, seed=7)


def _database(corpus: str, keep: bool) -> tuple[str, bool]:
    """The corpus database's URL, and whether it still needs loading."""
    server = resolve_url(None)
    name = f"bench_eval_{corpus}"
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and keep:
            return make_conninfo(server, dbname=name), False
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server, dbname=name), True


def _load(url: str, corpus: str) -> str:
    migrate.upgrade(url)
    records = _records(corpus)
    path = Path(tempfile.mkdtemp()) / f"{corpus}.jsonl.gz"
    write_runs(records, path)
    started = time.perf_counter()
    pipeline.import_runs([str(path)], database_url=url)
    if "fit_until" in inspect.signature(pipeline.embed_runs).parameters:
        pipeline.embed_runs(database_url=url, fit_until=HELD_OUT_FROM[corpus])
        fitted = f"encoder fitted on runs known before {HELD_OUT_FROM[corpus]}"
    else:
        pipeline.embed_runs(database_url=url)
        fitted = "encoder fitted on every run (embed_runs has no fit_until yet)"
    print(f"[{corpus}] loaded {len(records):,} runs in {time.perf_counter() - started:.0f} s; {fitted}")
    return fitted


def _row(corpus: str, ranking: str, result) -> str:
    s = result.summary
    top = top_bin(result.calibration)
    mid = result.calibration[1]
    gap = s["confidence_gap"]
    cells = [corpus, ranking, f"{result.picked}/{result.evaluated}", f"{s['chosen']['mean']:.3f}",
             f"{s['random']['mean']:.3f}", f"{s['baseline']['mean']:.3f}", f"{s['oracle']['mean']:.3f}",
             f"{s['chosen_minus_random']['mean']:+.3f} [{s['chosen_minus_random']['low']:+.3f}, "
             f"{s['chosen_minus_random']['high']:+.3f}]",
             f"{s['beats_random']:.2f}", f"{s['regret']['mean']:.2f}",
             f"{top['bin']}: {top['beats_random']:.2f} [{top['beats_random_low']:.2f}, {top['beats_random_high']:.2f}] "
             f"(n={top['decisions']}, {top['independent_blocks']} windows, {top['effective_trials']:.1f} trials; "
             f"claims {top['mean_confidence']:.2f}: {top['confidence_check']})" if top else "-",
             f"{mid['beats_random']:.2f} [{mid['beats_random_low']:.2f}, {mid['beats_random_high']:.2f}] "
             f"(n={mid['decisions']}, {mid['independent_blocks']} windows, {mid['effective_trials']:.1f} trials; "
             f"claims {mid['mean_confidence']:.2f}: {mid['confidence_check']})" if mid["decisions"] else "-",
             "-" if gap["low"] is None else f"{gap['mean']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]",
             "-" if s["pbo"]["pbo"] is None else f"{s['pbo']['pbo']:.2f} ({s['pbo']['configs']} configs)",
             f"{result.seconds:.0f}"]
    return " | ".join(cells)


HEADER = ("corpus | ranking | picked/decisions | chosen | random | best-so-far | oracle | chosen-random [95% CI] | "
          "beats random | regret | top bin: beats random | 0.5-0.6: beats random | won minus claimed [95% CI] | "
          "PBO of the record | s")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", choices=CORPORA)
    parser.add_argument("--ranking", action="append", help="v1, v2, v4, v5 or a variant name (default: all)")
    parser.add_argument("--sample", type=int, default=None, help="replay N held-out decisions per corpus")
    parser.add_argument("--keep", action="store_true", help="keep the databases and reuse them")
    args = parser.parse_args(argv)
    rankings = args.ranking or ["v1", *suggest_variants.VARIANTS, "v2", "v4", "v5"]
    lines = []
    for corpus in args.corpus or CORPORA:
        url, fresh = _database(corpus, args.keep)
        if fresh:
            _load(url, corpus)
        else:
            migrate.upgrade(url)  # a kept load gains the revisions made since
        suggest_variants.install(url)
        for ranking in rankings:
            name = ranking if ranking in ("v1", "v2", "v4", "v5") else f"bench.{ranking}"
            result = evaluate(since=HELD_OUT_FROM[corpus], sample=args.sample, ranking=name, database_url=url)
            lines.append(_row(corpus, ranking, result))
            print(lines[-1], flush=True)
            print(f"    verdict: {result.verdict}", flush=True)
            print(f"    {result.summary['independent_blocks']} outcome windows; confidence against outcomes: "
                  f"{confidence_line(result.summary)}", flush=True)
            for row in (r for r in result.calibration if r["decisions"]):
                print(f"    bin {row['bin']}: {row['decisions']} picks, {row['effective_trials']:g} trial{'' if row['effective_trials'] == 1 else 's'}, claims "
                      f"{row['mean_confidence']:.2f}, beat random {row['beats_random']:.2f} "
                      f"[{row['beats_random_low']:.2f}, {row['beats_random_high']:.2f}]: {row['confidence_check']}",
                      flush=True)
        if not args.keep:
            with psycopg.connect(resolve_url(None), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(f"bench_eval_{corpus}")))
    print()
    print(HEADER)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
