"""Transfer across market periods (issue 23, market part): does ``metaspace.TransferSampler`` tune a trend
strategy on real series better than cold TPE, out of sample, with earlier quarters as its only history?

    python benchmarks/bench_transfer_market.py                           # every held-out date, 5 seeds
    python benchmarks/bench_transfer_market.py --markets SP500 --seeds 1 --budget 10 --max-dates 4  # smoke
    python benchmarks/bench_transfer_market.py --format json --reuse     # JSON object on the last line

Markets: S&P 500, NASDAQ and WTI from the ``arch`` package (``corpora.DAILY_MARKETS``, with its costs). A
decision date t comes every 63 trading days from the corpus's warm-up on, while 63 days follow it. At each
(market, t) a trend strategy is tuned over ``SPACE``: the signal at each close is the sign of the mean log
return over ``lookback_days`` when the absolute t-statistic of that mean exceeds ``threshold`` (else flat),
sized to ``target_vol`` by the realised vol over ``vol_window`` and capped at ``max_leverage``, set daily or
held a week (``rebalance``). A trial's objective is the annualised Sharpe over the 252 days ending at t (the
in-sample window); the config each method picks (the best in-sample so far) is also scored over the 63 days
after t (out of sample: the figure that counts). Positions are set at a close from data up to it and earn
the next day (``corpora._backtest``); the strategy runs continuously, so each window pays its own trades.

The history, built once and cached (``--cache``): for every decision date of every market an Optuna study
``<market>-<YYYY-MM-DD>`` (user attributes: the env ``daily_corpus()`` computes over the trailing 126 days,
without the VIX) with 100 random configs and 30 TPE trials, each completed at t (its in-sample Sharpe is
known then). A fresh database ``bench_transfer_market`` gets it through ``import_optuna`` and ``embed_runs``
with the encoder fitted on the runs known before the held-out period (``fit_until``), on the embedded server
or METASPACE_DATABASE_URL's. The earlier studies of the same market tuned windows that overlap this one:
that is what a desk re-tuning each quarter knows.

Held out: decision dates on or after ``HELD_OUT_FROM["daily"]``. On each, ``--budget`` trials per seed of
``random``, ``cold_tpe``, ``warm_start`` (``metaspace.optuna_warm_start`` as of t - 1, then TPE) and
``transfer`` (``TransferSampler`` as of t - 1, its own study excluded). A large search (2,000 random configs)
gives each date's in-sample range, for the normalised regret (0 = its best, 1 = its worst, clipped at 0),
and the out-of-sample Sharpe of its best in-sample config (the oracle-in-sample reference). Figures are
averaged over seeds per (market, date), then summarised over those units with 95% bootstrap intervals;
transfer - other is paired per unit. With ``--format json`` the last line of stdout is one JSON object.
Runs with the same options give the same figures whatever ``--jobs``; ``warm_start``'s figures can change
when the database is built again (``suggest`` walks an HNSW graph, which differs from build to build).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import shutil
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import psycopg
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).parent))

import corpora  # noqa: E402

import metaspace  # noqa: E402
from metaspace.errors import MetaspaceError  # noqa: E402
from metaspace.sampler import SUMMARY  # noqa: E402
from metaspace.store.connection import resolve_url  # noqa: E402

STEP, IN_SAMPLE, OUT_OF_SAMPLE = 63, 252, corpora.DAILY_FORWARD
SPACE = {"lookback_days": IntDistribution(5, 250, log=True), "vol_window": IntDistribution(10, 120, log=True),
         "target_vol": FloatDistribution(0.05, 0.30), "max_leverage": FloatDistribution(0.5, 3.0),
         "threshold": FloatDistribution(0.0, 2.0), "rebalance": CategoricalDistribution(("daily", "weekly"))}
METHODS = ("random", "cold_tpe", "warm_start", "transfer")
REPORTED = (1, 5, 10, 20, 50)
RANDOM_TRIALS, TPE_TRIALS, LARGE_SEARCH = 100, 30, 2_000
RESAMPLES, BOOTSTRAP_SEED = 10_000, 0
FULL_RUN = (5, 50)  # the defaults' seeds and budget, for the projected wall time
DATABASE = "bench_transfer_market"


# --- markets and the strategy --------------------------------------------------------------------------


@dataclass
class Market:
    """One series: its dates (of the log returns), log returns, their running sums, cost and asset class."""

    name: str
    dates: pd.DatetimeIndex
    lr: np.ndarray
    sums: np.ndarray  # sums[k] = lr[:k].sum(), and of squares: (2, len + 1)
    cost: float
    asset_class: str

    @property
    def decisions(self) -> np.ndarray:
        return np.arange(corpora.DAILY_WARMUP, len(self.lr) - OUT_OF_SAMPLE, STEP)


def load_markets() -> dict[str, Market]:
    out = {}
    for name, (module, column, asset_class, cost) in corpora.DAILY_MARKETS.items():
        prices = corpora._load(module)[column].dropna()
        lr = np.diff(np.log(prices.to_numpy()))
        sums = np.concatenate([np.zeros((2, 1)), np.cumsum([lr, lr * lr], axis=1)], axis=1)
        out[name] = Market(name, prices.index[1:], lr, sums, cost, asset_class)
    return out


def random_configs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` configs drawn uniformly over SPACE (log-uniformly for its log parameters), as arrays."""
    out: dict[str, np.ndarray] = {}
    for name, d in SPACE.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = np.array(d.choices)[rng.integers(0, len(d.choices), n)]
        elif isinstance(d, IntDistribution):
            x = np.exp(rng.uniform(np.log(d.low - 0.5), np.log(d.high + 0.5), n))
            out[name] = np.clip(np.round(x), d.low, d.high).astype(int)
        else:
            out[name] = rng.uniform(d.low, d.high, n)
    return out


def as_arrays(configs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {name: np.array([c[name] for c in configs]) for name in SPACE}


def as_params(configs: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    return {name: v[k].item() for name, v in configs.items()}


def _trailing(m: Market, ends: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample std of the log returns over ``length`` days ending at each close ``ends``, and whether
    that many days exist."""
    start = ends + 1 - length
    known = start >= 0
    start = np.maximum(start, 0)
    s1, s2 = (m.sums[j, ends + 1] - m.sums[j, start] for j in (0, 1))
    mean = s1 / length
    sd = np.sqrt(np.maximum(s2 - s1 * mean, 0.0) / np.maximum(length - 1, 1))
    return mean, sd, known


def positions(m: Market, c: dict[str, np.ndarray], closes: np.ndarray) -> np.ndarray:
    """(configs, closes) positions, each set at its close from log returns up to and including it; a weekly
    config holds the position of the last close whose index is a multiple of 5 (as corpora's)."""
    at = np.where((c["rebalance"] == "weekly")[:, None], closes // 5 * 5, closes)
    lookback, window = c["lookback_days"][:, None], c["vol_window"][:, None]
    mean, sd, known = _trailing(m, at, lookback)
    tstat = mean / np.maximum(sd, 1e-12) * np.sqrt(lookback)
    signal = np.sign(mean) * (np.abs(tstat) > c["threshold"][:, None])
    _, vol_sd, vol_known = _trailing(m, at, window)
    vol = np.maximum(vol_sd * np.sqrt(252), 1e-4)
    size = np.minimum(c["max_leverage"][:, None], c["target_vol"][:, None] / vol)
    return np.where(known & vol_known, signal * size, 0.0)


def evaluate(m: Market, i: int, c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """In-sample Sharpe (the 252 days ending at close i) and out-of-sample Sharpe (the 63 days after it) of
    each config. Two days before the in-sample window are backtested too: its first day pays a real trade."""
    days = np.arange(i - IN_SAMPLE - 1, i + OUT_OF_SAMPLE + 1)
    pos = positions(m, c, days)
    ret, _ = corpora._backtest(pos[..., None], np.expm1(m.lr[days])[None, :, None], m.cost)
    return corpora._sharpe(ret[:, 2:IN_SAMPLE + 2], 252), corpora._sharpe(ret[:, IN_SAMPLE + 2:], 252)


def market_env(m: Market, i: int) -> dict[str, Any]:
    """The env ``corpora.daily_corpus()`` gives a decision at close i (over the trailing 126 days), no VIX."""
    w = m.lr[i - corpora.DAILY_TRAILING + 1:i + 1]
    vol, mean = w.std() * np.sqrt(252), w.mean()
    tstat = mean / w.std() * np.sqrt(corpora.DAILY_TRAILING)
    blocks = w.reshape(1, -1, 21)
    mix = corpora._regime_mix(blocks, 252, 0.30, 0.11, 0.8, -0.12)
    logp = m.sums[0, 1:]
    high = logp[i - 251:i + 1].max() if i >= 251 else np.nan
    r = corpora._r
    return {"realized_vol": r(vol), "trend": {"tstat": r(tstat, 4), "strength": r(abs(tstat), 4)},
            "return_126d": r(np.expm1(mean * corpora.DAILY_TRAILING)),
            "autocorr_1d": r(corpora._autocorr(w), 4),
            "drawdown": r(corpora._max_drawdown(np.expm1(w))), "from_252d_high": r(np.expm1(logp[i] - high)),
            "vol_of_vol": r(blocks.std(-1).std(-1)[0] * np.sqrt(252)),
            "vol_ratio_21_126": r(w[-21:].std() * np.sqrt(252) / max(vol, 1e-12), 4),
            "regime_mix": {k: r(mix[k][0], 4) for k in corpora.REGIMES},
            "universe": {"market": m.name, "asset_class": m.asset_class, "n_assets": 1}}


def suggest(trial: optuna.Trial) -> dict[str, np.ndarray]:
    """The trial's config (through Optuna's public API), as one-config arrays."""
    params: dict[str, Any] = {}
    for name, d in SPACE.items():
        if isinstance(d, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            params[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
    return as_arrays([params])


def study_name(m: Market, i: int) -> str:
    return f"{m.name}-{m.dates[i]:%Y-%m-%d}"


def _rng(market: str, i: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([list(corpora.DAILY_MARKETS).index(market), int(i), purpose])


# --- the history: Optuna studies, then a metaspace database ------------------------------------------------

_MARKETS: dict[str, Market] = {}


def _history_trials(market: str, i: int, seed: int) -> list[FrozenTrial]:
    """Date i's study: 100 random configs, then 30 TPE trials, all completed at the decision date."""
    m = _MARKETS[market]
    configs = random_configs(_rng(market, i, 0), RANDOM_TRIALS)
    values, _ = evaluate(m, i, configs)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.add_trials([optuna.trial.create_trial(params=as_params(configs, k), distributions=SPACE,
                                                value=float(v)) for k, v in enumerate(values)])
    study.optimize(objective(m, i, {}), n_trials=TPE_TRIALS)
    known = m.dates[i].to_pydatetime()
    trials = study.get_trials(deepcopy=True)
    for trial in trials:
        trial.datetime_start = trial.datetime_complete = known
    return trials


def build_history(folder: Path, jobs: int) -> str:
    """The Optuna storage of every decision date's study (built unless ``folder`` holds a complete one: the
    stamp is written last, so a build cut short is built again)."""
    storage = f"sqlite:///{folder / 'optuna.db'}"
    stamp = {"markets": list(corpora.DAILY_MARKETS), "step": STEP, "in_sample": IN_SAMPLE,
             "random": RANDOM_TRIALS, "tpe": TPE_TRIALS, "space": {n: repr(d) for n, d in SPACE.items()}}
    done = folder / "built.json"
    points = [(name, int(i)) for name, m in _MARKETS.items() for i in m.decisions]
    if done.is_file() and json.loads(done.read_text()) == stamp:
        print(f"history: {len(points)} studies cached in {folder}", flush=True)
        return storage
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()

    def connect() -> sqlite3.Connection:  # no sync and no journal file per trial written: 2.5x faster
        conn = sqlite3.connect(folder / "optuna.db")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = MEMORY")
        return conn

    rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"creator": connect})
    with _pool(jobs) as pool:
        built = pool.map(_history_trials, *zip(*points), range(len(points)))
        for (name, i), trials in zip(points, built):
            m = _MARKETS[name]
            study = optuna.create_study(storage=rdb, study_name=study_name(m, i), direction="maximize")
            for key, value in market_env(m, i).items():
                study.set_user_attr(key, value)
            study.add_trials(trials)
    done.write_text(json.dumps(stamp))
    print(f"history: {len(points)} studies x {RANDOM_TRIALS + TPE_TRIALS} trials built in "
          f"{time.perf_counter() - started:.0f} s ({folder})", flush=True)
    return storage


def build_database(storage: str, reuse: bool) -> str:
    """A metaspace database holding the history, imported and embedded as a user would; the encoder is
    fitted on the runs known before the held-out period."""
    server = resolve_url(None)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists and reuse:
            print(f"database {DATABASE}: kept (--reuse)", flush=True)
            return make_conninfo(server, dbname=DATABASE)
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    url = make_conninfo(server, dbname=DATABASE)
    metaspace.migrate(database_url=url)
    started = time.perf_counter()
    imported = metaspace.import_optuna(storage, all_studies=True, database_url=url)
    middle = time.perf_counter()
    fit_until = dt.date.fromisoformat(corpora.HELD_OUT_FROM["daily"]) - dt.timedelta(days=1)
    embedded = metaspace.embed_runs(database_url=url, fit_until=fit_until)
    print(f"database {DATABASE}: import_optuna read {imported.read:,} trials, inserted {imported.inserted:,},"
          f" rejected {imported.rejected}, skipped {imported.skipped} in {middle - started:.1f} s; "
          f"embed_runs embedded {embedded.embedded:,} runs (encoder version {embedded.version}, fitted until "
          f"{fit_until}) in {time.perf_counter() - middle:.1f} s", flush=True)
    metaspace.close()
    return url


# --- the methods: one (unit, seed) per call, in a worker process ----------------------------------------


@dataclass
class Setup:
    """What every run needs, shared with the workers by fork."""

    url: str
    budget: int
    methods: list[str]


_SETUP: Setup | None = None


def _study(method: str, m: Market, i: int, seed: int, extra: dict[str, Any]) -> optuna.Study:
    """A fresh in-memory study for one run, with what the method enqueues before its first trial."""
    url, env = _SETUP.url, market_env(m, i)
    as_of = (m.dates[i] - pd.Timedelta(days=1)).date().isoformat()
    if method == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    elif method == "transfer":
        sampler = metaspace.TransferSampler(env=env, as_of=as_of, exclude=[study_name(m, i)], seed=seed,
                                            database_url=url)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if method == "warm_start":
        try:
            started = metaspace.optuna_warm_start(study, env, as_of=as_of, k=5, min_runs=1,
                                                  objective="value", distributions=SPACE, database_url=url)
            extra["enqueued"] = len(started.enqueued)
        except MetaspaceError as exc:  # recorded: the run goes on with TPE alone, as a user's would
            extra["enqueued"], extra["error"] = 0, str(exc)
    return study


def objective(m: Market, i: int, oos: dict[int, float]) -> Callable[[optuna.Trial], float]:
    """A trial's in-sample Sharpe; its out-of-sample Sharpe is kept in ``oos``, out of the sampler's sight."""
    def value(trial: optuna.Trial) -> float:
        inside, outside = evaluate(m, i, suggest(trial))
        oos[trial.number] = float(outside[0])
        return float(inside[0])
    return value


def run_unit(market: str, i: int, seed: int) -> list[dict[str, Any]]:
    """Every method at one decision date with one seed: each trial's in-sample and out-of-sample Sharpe."""
    m = _MARKETS[market]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = []
    for method in _SETUP.methods:
        extra: dict[str, Any] = {}
        oos: dict[int, float] = {}
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            study = _study(method, m, i, seed, extra)
            study.optimize(objective(m, i, oos), n_trials=_SETUP.budget)
        seconds = time.perf_counter() - started
        if method == "transfer":
            extra["base_trials"] = sum(SUMMARY not in t.user_attrs for t in study.trials)
            extra["notes"] = sorted({str(w.message) for w in said if "TransferSampler" in str(w.message)})
        out.append({"method": method, "market": market, "date": f"{m.dates[i]:%Y-%m-%d}", "seed": seed,
                    "seconds": seconds, "values": [t.value for t in study.trials],
                    "oos": [oos[t.number] for t in study.trials], **extra})
    return out


def large_search(market: str, i: int) -> dict[str, float]:
    """The in-sample range of 2,000 random configs, the out-of-sample Sharpe of the best in-sample one, and
    the mean out-of-sample Sharpe of them all."""
    inside, outside = evaluate(_MARKETS[market], i, random_configs(_rng(market, i, 1), LARGE_SEARCH))
    return {"low": float(inside.min()), "high": float(inside.max()),
            "oracle_oos": float(outside[inside.argmax()]), "mean_oos": float(outside.mean())}


def _worker_init() -> None:
    """One BLAS thread per worker (the workers are the parallelism), and the modules the methods load on
    first use loaded now, so that no run's time counts an import."""
    from threadpoolctl import threadpool_limits

    import metaspace.proposals  # noqa: F401
    import metaspace.queries  # noqa: F401
    import metaspace.sampler  # noqa: F401

    threadpool_limits(1)


def _pool(jobs: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_init)


# --- the figures -------------------------------------------------------------------------------------------


def _interval(x: np.ndarray, stat) -> tuple[float, float]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = stat(x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))], axis=1)
    return float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))


def summary(x: np.ndarray) -> dict[str, float]:
    """Median and mean over units, each with its 95% bootstrap interval over units."""
    (low, high), (mean_low, mean_high) = _interval(x, np.median), _interval(x, np.mean)
    return {"median": float(np.median(x)), "low": low, "high": high, "mean": float(np.mean(x)),
            "mean_low": mean_low, "mean_high": mean_high}


def curves(run: dict[str, Any], search: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The normalised in-sample regret of the best config so far after each trial, and its out-of-sample
    Sharpe."""
    values = np.array(run["values"], dtype=float)
    best = np.array([int(np.argmax(values[:t + 1])) for t in range(len(values))])
    regret = np.maximum((search["high"] - values[best]) / max(search["high"] - search["low"], 1e-12), 0.0)
    return regret, np.array(run["oos"])[best]


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per method and budget: regret and out-of-sample Sharpe over units; transfer - each other, paired."""
    budget, units, runs, searches = result["budget"], result["units"], result["runs"], result["large_search"]
    at = [t for t in REPORTED if t <= budget] + ([budget] if budget not in REPORTED else [])
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    matrix: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        per_unit: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {u: [] for u in units}
        for r in runs:
            if r["method"] == m:
                unit = f"{r['market']}-{r['date']}"
                per_unit[unit].append(curves(r, searches[unit]))
        matrix[m] = {k: np.array([np.mean([c[j] for c in per_unit[u]], axis=0) for u in units])
                     for j, k in enumerate(("regret", "oos_sharpe"))}
    out: dict[str, Any] = {"methods": {}, "comparisons": {}, "reference": {
        "oracle_in_sample": summary(np.array([searches[u]["oracle_oos"] for u in units])),
        "random_config": summary(np.array([searches[u]["mean_oos"] for u in units]))}}
    for m in methods:
        own = [r for r in runs if r["method"] == m]
        entry: dict[str, Any] = {k: {str(t): summary(v[:, t - 1]) for t in at} for k, v in matrix[m].items()}
        entry["ms_per_trial"] = 1000 * sum(r["seconds"] for r in own) / (len(own) * budget)
        if m == "warm_start":
            entry["enqueued_mean"] = float(np.mean([r["enqueued"] for r in own]))
            entry["errors"] = sorted({r["error"] for r in own if "error" in r})
        if m == "transfer":
            entry["base_sampler_trials"] = sum(r["base_trials"] for r in own)
            entry["trials"] = len(own) * budget
            entry["notes"] = sorted({n for r in own for n in r["notes"]})
        out["methods"][m] = entry
    if "transfer" in matrix:
        for other in (m for m in methods if m != "transfer"):
            out["comparisons"][other] = {}
            for key, sign in (("regret", -1.0), ("oos_sharpe", 1.0)):
                by_t = {}
                for t in at:
                    d = summary(matrix["transfer"][key][:, t - 1] - matrix[other][key][:, t - 1])
                    low, high = sorted((sign * d["mean_low"], sign * d["mean_high"]))
                    d["verdict"] = "ahead" if low > 0 else "behind" if high < 0 else "level"
                    by_t[str(t)] = d
                out["comparisons"][other][key] = by_t
    return out


def _cell(s: dict[str, float], key: str, low: str, high: str) -> str:
    return f"{s[key]:.3f} [{s[low]:.3f}, {s[high]:.3f}]"


def print_tables(result: dict[str, Any], figures: dict[str, Any]) -> None:
    methods, n = figures["methods"], len(result["units"])
    at = list(next(iter(methods.values()))["regret"])
    head = "| method | " + " | ".join(f"t={t}" for t in at) + " |\n| --- |" + " --- |" * len(at)
    for title, key, stat, low, high in (
            ("In-sample normalised regret: median", "regret", "median", "low", "high"),
            ("In-sample normalised regret: mean", "regret", "mean", "mean_low", "mean_high"),
            ("Out-of-sample Sharpe of the best in-sample config so far: mean", "oos_sharpe", "mean",
             "mean_low", "mean_high")):
        print(f"\n### {title} over {n} (market, date) units of the seed average [95% bootstrap]\n\n{head}")
        for m, entry in methods.items():
            print(f"| {m} | " + " | ".join(_cell(entry[key][t], stat, low, high) for t in at) + " |")
        if key == "oos_sharpe":
            for name, label in (("oracle_in_sample", "large search's best in-sample"),
                                ("random_config", "a random config (large search's mean)")):
                cell = _cell(figures["reference"][name], "mean", "mean_low", "mean_high")
                print(f"| {label} | " + " | ".join(cell for _ in at) + " |")
    for key, what in (("regret", "regret (negative: transfer lower)"),
                      ("oos_sharpe", "out-of-sample Sharpe (positive: transfer higher)")):
        print(f"\n### transfer - other, paired per unit: {what}; mean [95% bootstrap], verdict from its "
              "interval\n")
        print(head.replace("method", "other"))
        for other, by_key in figures["comparisons"].items():
            by_t = by_key[key]
            print(f"| {other} | " + " | ".join(
                f"{_cell(by_t[t], 'mean', 'mean_low', 'mean_high')} {by_t[t]['verdict']}" for t in at) + " |")
    print("\n### Wall time\n\n| method | ms per trial | notes |\n| --- | --- | --- |")
    for m, e in methods.items():
        note = ""
        if m == "warm_start":
            note = f"{e['enqueued_mean']:.1f} configs enqueued per run"
            note += "".join(f"; raised: {x}" for x in e["errors"])
        if m == "transfer":
            note = f"{e['base_sampler_trials']} of {e['trials']} trials sampled by the base sampler"
            note += "".join(f"; said: {x}" for x in e["notes"])
        print(f"| {m} | {e['ms_per_trial']:.1f} | {note} |")
    units, (seeds, budget) = result["held_out_units"], FULL_RUN
    full = units * seeds * budget * sum(e["ms_per_trial"] for e in methods.values()) / 1000 / result["jobs"]
    print(f"\nWall time of the runs {result['seconds']:.0f} s on {result['jobs']} jobs (large search "
          f"{result['large_search_seconds']:.0f} s); at these per-trial times the full run ({units} held-out "
          f"units x {seeds} seeds x {budget} trials, these {len(methods)} methods) would take "
          f"~{full / 60:.0f} min on {result['jobs']} jobs", end="")
    if result["budget"] < budget:
        print(f" (measured at budget {result['budget']}: each run's fixed costs weigh more per trial than at "
              f"{budget})", end="")
    print()
    print("\nNotes:\n" + "\n".join(f"- {note}" for note in result["notes"]))


# --- the command -----------------------------------------------------------------------------------------


def held_out(markets: list[str], max_dates: int) -> list[tuple[str, int]]:
    """The held-out (market, decision index) units; with ``max_dates``, that many per market, spread
    evenly."""
    units = []
    for name in markets:
        m = _MARKETS[name]
        found = [int(i) for i in m.decisions if m.dates[i] >= pd.Timestamp(corpora.HELD_OUT_FROM["daily"])]
        if 0 < max_dates < len(found):
            spread = np.unique(np.round(np.linspace(0, len(found) - 1, max_dates)).astype(int))
            found = [found[k] for k in spread]
        units += [(name, i) for i in found]
    return units


def _progress(unit: str, runs: list[dict[str, Any]], methods: list[str], search: dict[str, float],
              count: str) -> None:
    """One line as each unit completes: each method's seed-averaged regret and out-of-sample Sharpe."""
    shown = []
    for m in methods:
        regret, oos = np.mean([[c[-1] for c in curves(r, search)] for r in runs if r["method"] == m], axis=0)
        shown.append(f"{m} {regret:.3f}/{oos:+.2f}")
    print(f"{count} {unit}: regret/out-of-sample Sharpe at the budget: {', '.join(shown)} (oracle-in-sample "
          f"{search['oracle_oos']:+.2f})", flush=True)


def main() -> int:
    global _SETUP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", default=",".join(corpora.DAILY_MARKETS),
                        help="comma-separated markets whose held-out dates are run (the history has all)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=50, help="trials per run")
    parser.add_argument("--max-dates", type=int, default=0,
                        help="held-out dates per market: 0 = all, else N spread evenly (a smoke run)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="a comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/metaspace-bench-transfer-market"),
                        help="folder of the history's Optuna storage")
    parser.add_argument("--reuse", action="store_true", help="keep the metaspace database if it exists")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", type=Path, help="write every run's trials here (JSON)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        parser.error(f"--methods: unknown {sorted(unknown)} (choose among {', '.join(METHODS)})")
    if unknown := set(markets) - set(corpora.DAILY_MARKETS):
        parser.error(f"--markets: unknown {sorted(unknown)} (choose among "
                     f"{', '.join(corpora.DAILY_MARKETS)})")

    _MARKETS.update(load_markets())
    storage = build_history(args.cache, args.jobs)
    url = build_database(storage, args.reuse)
    units = held_out(markets, args.max_dates)
    names = [f"{market}-{_MARKETS[market].dates[i]:%Y-%m-%d}" for market, i in units]
    notes = [f"history: every decision date of {', '.join(corpora.DAILY_MARKETS)} (held-out ones too, each "
             "read only by later dates); each run reads it as of the day before its date, its own study "
             "excluded",
             "cold_tpe's first 10 trials are random (TPESampler's n_startup_trials): random's, seed for seed"]
    if "warm_start" in methods:
        notes.append("warm_start: metaspace.optuna_warm_start(k=5, min_runs=1, as_of=t - 1) then TPE "
                     "(suggest has no exclude: as_of keeps the date's own study out); suggest walks the env "
                     "HNSW graph, so its picks can change when the database is built again")
    if args.max_dates:
        notes.append(f"--max-dates {args.max_dates}: a smoke run, not the benchmark's figures")
    started = time.perf_counter()
    with _pool(args.jobs) as pool:
        searches = dict(zip(names, pool.map(large_search, *zip(*units))))
    search_seconds = time.perf_counter() - started
    print(f"large search: {LARGE_SEARCH:,} configs x {len(units)} units in {search_seconds:.1f} s; "
          f"{len(units)} units x {args.seeds} seeds x {args.budget} trials x {len(methods)} methods "
          f"({', '.join(methods)}) on {args.jobs} jobs", flush=True)

    _SETUP = Setup(url, args.budget, methods)
    runs: list[dict[str, Any]] = []
    left = dict.fromkeys(names, args.seeds)
    started = time.perf_counter()
    with _pool(args.jobs) as pool:
        futures = [pool.submit(run_unit, market, i, s) for market, i in units for s in range(args.seeds)]
        for future in as_completed(futures):
            done = future.result()
            runs += done
            unit = f"{done[0]['market']}-{done[0]['date']}"
            left[unit] -= 1
            if left[unit] == 0:
                _progress(unit, [r for r in runs if f"{r['market']}-{r['date']}" == unit], methods,
                          searches[unit], f"[{sum(v == 0 for v in left.values())}/{len(units)}]")
    seconds = time.perf_counter() - started
    runs.sort(key=lambda r: (METHODS.index(r["method"]), names.index(f"{r['market']}-{r['date']}"),
                             r["seed"]))
    every = len(held_out(list(corpora.DAILY_MARKETS), 0))
    result = {"markets": markets, "units": names, "held_out_units": every, "seeds": args.seeds,
              "budget": args.budget, "jobs": args.jobs, "seconds": seconds,
              "large_search_seconds": search_seconds, "large_search": searches, "notes": notes, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result))
    figures = analyse(result)
    print_tables(result, figures)
    if args.format == "json":
        keep = ("markets", "units", "seeds", "budget", "jobs", "seconds", "notes")
        print(json.dumps({**figures, **{k: result[k] for k in keep}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
