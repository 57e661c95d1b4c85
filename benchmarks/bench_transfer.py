"""Transfer across tasks on YAHPO surrogates (issue 23): does ``metaspace.TransferSampler`` find good configs
sooner than cold TPE and the usual warm starts, on real OpenML landscapes, with each task held out in turn?

    python benchmarks/bench_transfer.py --tasks 0 --seeds 10 --budget 50 --format json   # lcbench, all tasks
    python benchmarks/bench_transfer.py --scenario-dir ../shared/data/yahpo/rbv2_xgboost --mode descriptors
    python benchmarks/bench_transfer.py --history-from ../shared/data/yahpo/rbv2_xgboost  # unrelated history
    python benchmarks/bench_transfer.py --tasks 3 --seeds 2 --budget 10                  # a smoke run
    python benchmarks/bench_transfer.py --out curves.json; ... --analyse curves.json  # re-analysed, no rerun

The history, built once per scenario and mode and cached under ``--cache`` (default
/tmp/metaspace-bench-transfer/<scenario>/<mode>; about a minute for lcbench, five for rbv2_xgboost): for every
task an Optuna study ``<scenario>-<task>`` in a SQLite storage, with 100 random configs and 30 trials of TPE
on the surrogate. In ``--mode descriptors`` each study's user attributes are its task's OpenML qualities (its
env); in ``--mode responses`` (the default, and lcbench's only mode) there are none, so only a study's own
responses can tell which past tasks it resembles. A fresh metaspace database,
``bench_transfer_<scenario>_<mode>`` (kept with ``--reuse``), gets it all through ``import_optuna`` and
``embed_runs``, as a user would, on the embedded server (or METASPACE_DATABASE_URL's server).

Each held-out task is then optimised for ``--budget`` trials with each seed by: ``random``, ``cold_tpe``,
``zero_shot`` (the source tasks' best configs by average rank, then TPE), ``ws_cmaes`` (Optuna's CMA-ES
warm-started from the source trials), ``warm_start`` (``metaspace.optuna_warm_start``, then TPE) and
``transfer`` (``metaspace.TransferSampler``); the held-out task's own study is never used. The (task,
seed) units run in ``--jobs`` processes; the results do not depend on how many. Regret is YAHPO's normalised
regret of the best value so far (0 = the task's best, 1 = its worst), averaged over seeds, then summarised
over tasks with 95% bootstrap intervals. The limits measured in the same run: cold TPE (transfer's paired
difference to it, and the trials each method needs to reach its regret at the budget), and the wall time
against issue 23's ~40 minutes for lcbench's full run on 2 cores. With ``--format json`` the last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
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
import psycopg
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).parent))

from yahpo import Scenario  # noqa: E402

import metaspace  # noqa: E402
from metaspace.errors import MetaspaceError  # noqa: E402
from metaspace.sampler import SUMMARY  # noqa: E402
from metaspace.store.connection import resolve_url  # noqa: E402

METHODS = ("random", "cold_tpe", "zero_shot", "ws_cmaes", "warm_start", "transfer")
REPORTED = (1, 5, 10, 20, 50)
COMPARED = (5, 10, 20, 50)
RANDOM_TRIALS, TPE_TRIALS = 100, 30
RESAMPLES, BOOTSTRAP_SEED, TASKS_SEED = 10_000, 0, 0
LIMIT_MINUTES, FULL_SEEDS, FULL_BUDGET = 40.0, 10, 50  # issue 23: lcbench's every task, 6 methods, 2 cores
DATA = Path(__file__).resolve().parents[2] / "shared/data/yahpo"
ZERO_SHOT_NOTE = ("zero_shot: each source task's best config, evaluated on every source task by the "
                  "surrogate: a full meta-dataset, more than the store holds; ordered by average rank, then "
                  "TPE")
CMAES_NOTE = ("ws_cmaes: the source trials are given with their numeric parameters only (Optuna's warm start "
              "takes a source trial only when its parameters are exactly the numeric space CMA-ES samples: "
              "with the categorical ones, none is); CMA-ES samples the categorical parameters, and every "
              "parameter once the search space changes, independently (RandomSampler), as Optuna does; its "
              "warnings silenced")


# --- the objective: one config through Optuna's public API -----------------------------------------------


def suggest_config(trial: optuna.Trial, scenario: Scenario,
                   distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The trial's config, parents before children: a conditional parameter is suggested only where its
    parent's value allows it."""
    def depth(name: str) -> int:
        return 0 if name not in scenario.conditions else 1 + depth(scenario.conditions[name][0])

    params: dict[str, Any] = {}
    for name in sorted(distributions, key=depth):
        if name in scenario.conditions:
            parent, allowed = scenario.conditions[name]
            if parent not in params or str(params[parent]) not in allowed:
                continue
        d = distributions[name]
        if isinstance(d, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            params[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return params


def objective(scenario: Scenario, task: str) -> Callable[[optuna.Trial], float]:
    distributions = scenario.distributions()
    return lambda trial: scenario.evaluate(task, suggest_config(trial, scenario, distributions))


def direction(scenario: Scenario) -> str:
    return "maximize" if scenario.maximize else "minimize"


def descriptors(scenario: Scenario, task: str) -> dict[str, float] | None:
    """The task's OpenML qualities without the missing ones (its env in descriptors mode), or None."""
    found = scenario.descriptors(task)
    return None if found is None else {k: v for k, v in found.items() if not np.isnan(v)}


# --- the history: Optuna studies, then a metaspace database ------------------------------------------------

_BUILDING: Scenario | None = None


def _history_trials(index: int) -> list[FrozenTrial]:
    """Task ``index``'s history: 100 random configs with their surrogate values, then 30 TPE trials."""
    scenario = _BUILDING
    task, dists = scenario.tasks[index], scenario.distributions()
    configs = scenario.sample_random(np.random.default_rng(1000 + index), RANDOM_TRIALS)
    values = scenario.evaluate_many(task, configs)
    study = optuna.create_study(direction=direction(scenario), sampler=optuna.samplers.TPESampler(seed=index))
    study.add_trials([optuna.trial.create_trial(params=c, distributions={k: dists[k] for k in c},
                                                value=float(v)) for c, v in zip(configs, values)])
    study.optimize(objective(scenario, task), n_trials=TPE_TRIALS)
    return study.trials


def build_history(scenario: Scenario, mode: str, folder: Path, jobs: int) -> str:
    """The Optuna storage of the scenario's history (built unless ``folder`` holds a complete one)."""
    global _BUILDING
    storage = f"sqlite:///{folder / 'optuna.db'}"
    stamp = {"scenario": scenario.name, "metric": scenario.metric, "mode": mode, "tasks": len(scenario.tasks),
             "random": RANDOM_TRIALS, "tpe": TPE_TRIALS}
    done = folder / "built.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        print(f"history: {len(scenario.tasks)} studies cached in {folder}", flush=True)
        return storage
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started, _BUILDING = time.perf_counter(), scenario
    rdb = optuna.storages.RDBStorage(storage)
    with _pool(jobs) as pool:
        for index, trials in enumerate(pool.map(_history_trials, range(len(scenario.tasks)))):
            study = optuna.create_study(storage=rdb, study_name=f"{scenario.name}-{scenario.tasks[index]}",
                                        direction=direction(scenario))
            if mode == "descriptors":
                for name, value in (descriptors(scenario, scenario.tasks[index]) or {}).items():
                    study.set_user_attr(name, value)
            study.add_trials(trials)
    done.write_text(json.dumps(stamp))
    print(f"history: {len(scenario.tasks)} studies x {RANDOM_TRIALS + TPE_TRIALS} trials built in "
          f"{time.perf_counter() - started:.0f} s ({folder})", flush=True)
    return storage


def build_database(storage: str, name: str, reuse: bool) -> str:
    """A metaspace database holding the history, imported and embedded as a user would."""
    server = resolve_url(None)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and reuse:
            print(f"database {name}: kept (--reuse)", flush=True)
            return make_conninfo(server, dbname=name)
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server, dbname=name)
    metaspace.migrate(database_url=url)
    started = time.perf_counter()
    imported = metaspace.import_optuna(storage, all_studies=True, database_url=url)
    middle = time.perf_counter()
    embedded = metaspace.embed_runs(database_url=url)
    print(f"database {name}: import_optuna read {imported.read:,} trials, inserted {imported.inserted:,}, "
          f"rejected {imported.rejected}, skipped {imported.skipped} in {middle - started:.1f} s; embed_runs "
          f"embedded {embedded.embedded:,} runs (encoder version {embedded.version}) in "
          f"{time.perf_counter() - middle:.1f} s", flush=True)
    metaspace.close()
    return url


# --- the methods: one (task, seed) unit per call, in a worker process ---------------------------------------


@dataclass
class Setup:
    """What every run needs, shared with the workers by fork."""

    target: Scenario
    history: Scenario
    mode: str
    url: str
    budget: int
    sources: dict[str, list[FrozenTrial]]  # history study name -> its COMPLETE trials
    cma_sources: dict[str, list[FrozenTrial]]  # the same as ws_cmaes is given them
    portfolios: dict[str, list[dict[str, Any]]]  # held-out task -> the zero-shot configs in order


_SETUP: Setup | None = None
OWN_LIMIT_MS = 50.0  # issue 23: the sampler's own time per suggestion in a warm process


class TimedTransferSampler(metaspace.TransferSampler):
    """``TransferSampler`` with its own time per trial kept (every call Optuna makes of it, its base sampler's
    work included where it hands a trial or a parameter over; sequential studies only): the first trial of a
    run reads the store and fits the sources; the rest are what a warm process pays per suggestion."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_seconds: list[float] = []

    def _timed(name: str) -> Callable[..., Any]:  # noqa: N805 (a decorator factory in the class body)
        def call(self: TimedTransferSampler, *args: Any, **kwargs: Any) -> Any:
            if name == "before_trial":
                self.own_seconds.append(0.0)
            started = time.perf_counter()
            try:
                return getattr(metaspace.TransferSampler, name)(self, *args, **kwargs)
            finally:
                self.own_seconds[-1] += time.perf_counter() - started
        return call

    before_trial = _timed("before_trial")
    infer_relative_search_space = _timed("infer_relative_search_space")
    sample_relative = _timed("sample_relative")
    sample_independent = _timed("sample_independent")
    after_trial = _timed("after_trial")
    del _timed


def _sampler(method: str, task: str, seed: int) -> optuna.samplers.BaseSampler:
    setup = _SETUP
    own = f"{setup.target.name}-{task}"
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "ws_cmaes":
        source_trials = [t for name, trials in setup.cma_sources.items() if name != own for t in trials]
        return optuna.samplers.CmaEsSampler(seed=seed, source_trials=source_trials,
                                            warn_independent_sampling=False)
    if method == "transfer":
        env = descriptors(setup.target, task) if setup.mode == "descriptors" else None
        return TimedTransferSampler(env=env, exclude=[own], seed=seed, database_url=setup.url)
    return optuna.samplers.TPESampler(seed=seed)


def _study(method: str, task: str, seed: int) -> tuple[optuna.Study, dict[str, Any]]:
    """A fresh in-memory study for one run, with what the method enqueues before its first trial."""
    setup = _SETUP
    own = f"{setup.target.name}-{task}"
    study = optuna.create_study(direction=direction(setup.target), sampler=_sampler(method, task, seed))
    extra: dict[str, Any] = {}
    if method == "zero_shot":
        for params in setup.portfolios[task][:setup.budget]:
            study.enqueue_trial(params)
        extra["enqueued"] = min(len(setup.portfolios[task]), setup.budget)
    elif method == "warm_start":
        env = descriptors(setup.target, task) if setup.mode == "descriptors" else {}
        others = [name for name in setup.sources if name != own]
        try:
            started = metaspace.optuna_warm_start(study, env, k=5, min_runs=1, objective="value",
                                                  higher_is_better=setup.history.maximize, strategy=others,
                                                  distributions=setup.target.distributions(),
                                                  database_url=setup.url)
            extra["enqueued"] = len(started.enqueued)
        except MetaspaceError as exc:  # recorded: the run goes on with TPE alone, as a user's would
            extra["enqueued"], extra["error"] = 0, str(exc)
    return study, extra


def run_unit(task: str, seed: int, methods: list[str]) -> list[dict[str, Any]]:
    """Every method on one held-out task with one seed: the values of its trials, its time, and counts."""
    setup = _SETUP
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = []
    for method in methods:
        started = time.perf_counter()
        study, extra = _study(method, task, seed)
        study.optimize(objective(setup.target, task), n_trials=setup.budget)
        seconds = time.perf_counter() - started
        if method == "transfer":
            extra["base_trials"] = sum(SUMMARY not in t.user_attrs for t in study.trials)
            extra["own_ms"] = [1000 * t for t in study.sampler.own_seconds]
        out.append({"method": method, "task": task, "seed": seed, "seconds": seconds,
                    "values": [t.value for t in study.trials], **extra})
    return out


def _worker_init() -> None:
    """One BLAS thread per worker (the workers are the parallelism: OpenBLAS's own threads on top of them made
    the transfer and CMA-ES runs about 4x slower on 2 cores), an onnxruntime session of its own, and the
    modules the methods load on first use loaded now, so that no run's time counts an import."""
    import cmaes  # noqa: F401 (Optuna's CmaEsSampler imports it on its first trial)
    from threadpoolctl import threadpool_limits
    from yahpo import _session

    import metaspace.proposals  # noqa: F401
    import metaspace.queries  # noqa: F401

    threadpool_limits(1)
    _session.cache_clear()


def _pool(jobs: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_init)


def numeric_only(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with their numeric parameters only: what Optuna's warm-started CMA-ES can take as source
    trials on a space with categorical parameters."""
    out = []
    for t in trials:
        kept = {n: d for n, d in t.distributions.items() if not isinstance(d, CategoricalDistribution)}
        out.append(optuna.trial.create_trial(params={n: t.params[n] for n in kept}, distributions=kept,
                                             value=t.value))
    return out


def portfolios(history: Scenario, sources: dict[str, list[FrozenTrial]], tasks: list[str],
               target: str) -> dict[str, list[dict[str, Any]]]:
    """Per held-out task, the best config of each other source task, by its average rank over those tasks.
    The source x config matrix is evaluated once, over every task; each held-out task takes its slice."""
    names = list(sources)
    sign = 1.0 if history.maximize else -1.0
    best = [max(sources[n], key=lambda t: sign * t.value).params for n in names]
    scores = np.stack([sign * history.evaluate_many(n.removeprefix(f"{history.name}-"), best) for n in names])
    out = {}
    for task in tasks:
        keep = [i for i, n in enumerate(names) if n != f"{target}-{task}"]
        block = scores[np.ix_(keep, keep)]
        ranks = (-block).argsort(1, kind="stable").argsort(1, kind="stable")
        order = np.argsort(ranks.mean(0), kind="stable")
        seen: list[dict[str, Any]] = []
        for j in order:
            if best[keep[j]] not in seen:
                seen.append(best[keep[j]])
        out[task] = seen
    return out


# --- the analysis ----------------------------------------------------------------------------------------


def _interval(x: np.ndarray, stat: Callable[..., np.ndarray]) -> tuple[float, float]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = stat(x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))], axis=1)
    return float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))


def summary(x: np.ndarray) -> dict[str, float]:
    """Median and mean over tasks, each with its 95% bootstrap interval over tasks."""
    (low, high), (mean_low, mean_high) = _interval(x, np.median), _interval(x, np.mean)
    return {"median": float(np.median(x)), "low": low, "high": high, "mean": float(np.mean(x)),
            "mean_low": mean_low, "mean_high": mean_high}


def regret_curves(runs: list[dict[str, Any]], scenario: Scenario,
                  budget: int) -> dict[str, dict[str, np.ndarray]]:
    """method -> task -> the seed-averaged regret after each trial (1..budget)."""
    better = np.maximum.accumulate if scenario.maximize else np.minimum.accumulate
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for run in runs:
        best = better(np.array(run["values"][:budget], dtype=float))
        curve = [scenario.regret(run["task"], v) for v in best]
        run["regret"] = curve
        curves.setdefault(run["method"], {}).setdefault(run["task"], []).append(curve)
    return {m: {t: np.mean(c, axis=0) for t, c in by_task.items()} for m, by_task in curves.items()}


def analyse(result: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    """The tables' figures from the runs: regret per method, transfer against the others, trials to reach
    cold TPE."""
    budget, tasks, runs = result["budget"], result["tasks"], result["runs"]
    curves = regret_curves(runs, scenario, budget)
    methods = [m for m in METHODS if m in curves]
    at = [t for t in REPORTED if t <= budget] + ([budget] if budget not in REPORTED else [])
    compared = [t for t in COMPARED if t <= budget] + ([budget] if budget not in COMPARED else [])
    matrix = {m: np.array([curves[m][t] for t in tasks]) for m in methods}
    out: dict[str, Any] = {"methods": {}, "comparisons": {}}
    for m in methods:
        own = [r for r in runs if r["method"] == m]
        entry: dict[str, Any] = {"regret": {str(t): summary(matrix[m][:, t - 1]) for t in at},
                                 "ms_per_trial": 1000 * sum(r["seconds"] for r in own) / (len(own) * budget)}
        if "cold_tpe" in matrix:
            target = matrix["cold_tpe"][:, budget - 1]
            reached = [np.flatnonzero(row <= goal + 1e-12) for row, goal in zip(matrix[m], target)]
            needed = np.array([float(hit[0] + 1) if len(hit) else np.inf for hit in reached])
            median = float(np.median(needed))
            entry["trials_to_cold_tpe"] = median if np.isfinite(median) else None
            entry["tasks_reaching_cold_tpe"] = int(np.isfinite(needed).sum())
        if m in ("zero_shot", "warm_start"):
            entry["enqueued_mean"] = float(np.mean([r["enqueued"] for r in own]))
            entry["runs_enqueuing_nothing"] = sum(r["enqueued"] == 0 for r in own)
            entry["errors"] = sorted({r["error"] for r in own if "error" in r})
        if m == "transfer":
            entry["base_sampler_trials"] = sum(r["base_trials"] for r in own)
            entry["trials"] = len(own) * budget
            if all("own_ms" in r for r in own):  # (absent from an --out written before it was kept)
                warm = np.array([ms for r in own for ms in r["own_ms"][1:]])
                entry["own_ms_first"] = float(np.mean([r["own_ms"][0] for r in own]))
                if len(warm):
                    entry["own_ms_warm"], entry["own_ms_warm_p95"] = float(warm.mean()), float(np.percentile(warm, 95))
        out["methods"][m] = entry
    if "transfer" in matrix:
        for other in (m for m in methods if m != "transfer"):
            out["comparisons"][other] = {}
            for t in compared:
                d = summary(matrix["transfer"][:, t - 1] - matrix[other][:, t - 1])
                d["verdict"] = "ahead" if d["mean_high"] < 0 else "behind" if d["mean_low"] > 0 else "level"
                out["comparisons"][other][str(t)] = d
    return out


def _cell(s: dict[str, float], key: str, low: str, high: str) -> str:
    return f"{s[key]:.3f} [{s[low]:.3f}, {s[high]:.3f}]"


def print_tables(result: dict[str, Any], figures: dict[str, Any]) -> None:
    methods, budget = figures["methods"], result["budget"]
    at = list(next(iter(methods.values()))["regret"])
    n = len(result["tasks"])
    for stat, low, high in (("median", "low", "high"), ("mean", "mean_low", "mean_high")):
        print(f"\n### Regret after t trials: {stat} over {n} tasks of the seed-averaged regret "
              "[95% bootstrap]\n")
        print("| method | " + " | ".join(f"t={t}" for t in at) + " |")
        print("| --- |" + " --- |" * len(at))
        for m, entry in methods.items():
            print(f"| {m} | " + " | ".join(_cell(entry["regret"][t], stat, low, high) for t in at) + " |")
    if figures["comparisons"]:
        compared = list(next(iter(figures["comparisons"].values())))
        print("\n### transfer - other, paired per task (negative: transfer lower regret) [95% bootstrap "
              f"over {n} tasks]; verdict from the mean's interval\n")
        print("| other | statistic | " + " | ".join(f"t={t}" for t in compared) + " |")
        print("| --- | --- |" + " --- |" * len(compared))
        for other, by_t in figures["comparisons"].items():
            print(f"| {other} | mean | " + " | ".join(
                f"{_cell(by_t[t], 'mean', 'mean_low', 'mean_high')} {by_t[t]['verdict']}"
                for t in compared) + " |")
            print(f"| {other} | median | " + " | ".join(_cell(by_t[t], "median", "low", "high")
                                                       for t in compared) + " |")
    if all("trials_to_cold_tpe" in e for e in methods.values()):
        print(f"\n### Trials to reach cold TPE's regret at {budget} (median over tasks; tasks that "
              "reach it)\n")
        print("| " + " | ".join(methods) + " |")
        print("|" + " --- |" * len(methods))
        needed = ["> budget" if e["trials_to_cold_tpe"] is None else f"{e['trials_to_cold_tpe']:g}"
                  for e in methods.values()]
        print("| " + " | ".join(f"{t} ({e['tasks_reaching_cold_tpe']}/{n})"
                                for t, e in zip(needed, methods.values())) + " |")
    print("\n### Wall time\n\n| method | ms per trial | notes |\n| --- | --- | --- |")
    for m, e in methods.items():
        note = ""
        if "enqueued_mean" in e:
            note = (f"{e['enqueued_mean']:.1f} configs enqueued per run; {e['runs_enqueuing_nothing']} runs "
                    "enqueued none")
            note += "".join(f"; raised: {error}" for error in e["errors"])
        if m == "transfer":
            note = f"{e['base_sampler_trials']} of {e['trials']} trials sampled by the base sampler"
            if "own_ms_warm" in e:
                note += (f"; its own time: {e['own_ms_first']:.0f} ms for a run's first trial (the store read, "
                         f"the sources fitted), then {e['own_ms_warm']:.1f} ms a trial (p95 "
                         f"{e['own_ms_warm_p95']:.1f}): {e['own_ms_warm'] / OWN_LIMIT_MS:.2f}x issue 23's "
                         f"{OWN_LIMIT_MS:g} ms")
        print(f"| {m} | {e['ms_per_trial']:.1f} | {note} |")
    tasks, seeds, trials = result["eligible_tasks"], FULL_SEEDS, FULL_BUDGET
    per_trial = sum(e["ms_per_trial"] for e in methods.values()) / 1000
    projected = per_trial * tasks * seeds * trials / result["jobs"] / 60
    limit = (f": {projected / LIMIT_MINUTES:.2f}x issue 23's ~{LIMIT_MINUTES:g} min for all six on 2 cores"
             if result["scenario"] == "lcbench" else "")
    print(f"\nWall time of the runs {result['seconds']:.0f} s on {result['jobs']} jobs; at these per-trial "
          f"times, the full run ({tasks} tasks x {seeds} seeds x {trials} trials) of these {len(methods)} "
          f"methods would take ~{projected:.0f} min on {result['jobs']} jobs{limit}" + (
              f" (measured at budget {budget}: each run's fixed costs weigh more per trial than at {trials})"
              if budget < trials else ""))
    print("\nNotes:\n" + "\n".join(f"- {note}" for note in result["notes"]))


# --- the command -----------------------------------------------------------------------------------------


def _tasks(scenario: Scenario, mode: str, count: int) -> list[str]:
    eligible = [t for t in scenario.tasks if mode != "descriptors" or descriptors(scenario, t)]
    if count <= 0 or count >= len(eligible):
        return eligible
    chosen = np.random.default_rng(TASKS_SEED).choice(len(eligible), size=count, replace=False)
    return [eligible[i] for i in sorted(chosen)]


def _progress(scenario: Scenario, task: str, runs: list[dict[str, Any]], methods: list[str],
              count: str) -> None:
    """One line as each task completes: each method's seed-averaged regret at the budget."""
    pick = max if scenario.maximize else min
    regret = {m: np.mean([scenario.regret(task, pick(r["values"])) for r in runs if r["method"] == m])
              for m in methods}
    shown = ", ".join(f"{m} {value:.3f}" for m, value in regret.items())
    print(f"{count} task {task}: regret at the budget: {shown}", flush=True)


def _finish(result: dict[str, Any], scenario: Scenario, fmt: str) -> int:
    figures = analyse(result, scenario)
    print_tables(result, figures)
    if fmt == "json":
        keep = ("scenario", "history", "mode", "metric", "tasks", "seeds", "budget", "jobs", "seconds",
                "notes")
        print(json.dumps({**figures, **{k: result[k] for k in keep}}))
    return 0


def main() -> int:
    global _SETUP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario-dir", type=Path, default=DATA / "lcbench", help="a YAHPO scenario folder")
    parser.add_argument("--tasks", type=int, default=0, help="held-out tasks: 0 = every task, else N drawn")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=50, help="trials per run")
    parser.add_argument("--metric", help="the target to optimise (default: the scenario's)")
    parser.add_argument("--mode", choices=("responses", "descriptors"), default="responses")
    parser.add_argument("--methods", default=",".join(METHODS), help="a comma-separated subset")
    parser.add_argument("--history-from", type=Path, metavar="SCENARIO_DIR", help="use this one's history")
    parser.add_argument("--cache", type=Path, help="the history's folder (default "
                        "/tmp/metaspace-bench-transfer/<scenario>; a subfolder per mode)")
    parser.add_argument("--reuse", action="store_true", help="keep the metaspace database if it exists")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", type=Path, help="write every run's curve here (JSON)")
    parser.add_argument("--analyse", type=Path, metavar="FILE", help="print the tables of an earlier --out")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if args.analyse:
        result = json.loads(args.analyse.read_text())
        return _finish(result, Scenario.load(result["scenario_dir"], result["metric"]), args.format)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        parser.error(f"--methods: unknown {sorted(unknown)} (choose among {', '.join(METHODS)})")
    target = Scenario.load(args.scenario_dir, args.metric)
    history = Scenario.load(args.history_from) if args.history_from else target
    notes: list[str] = []
    for scenario in {target.name: target, history.name: history}.values():
        if args.mode == "descriptors" and not any(descriptors(scenario, t) for t in scenario.tasks):
            parser.error(f"--mode descriptors: {scenario.name} has no task descriptors "
                         "(dataset_qualities.csv)")
    if history.name != target.name:
        dropped = [m for m in ("zero_shot", "ws_cmaes") if m in methods]
        methods = [m for m in methods if m not in dropped]
        notes.append(f"history from {history.name} ({history.metric}), targets from {target.name}: exclude "
                     "is irrelevant" + (f"; {', '.join(dropped)} left out (their sources are configs of "
                                        "another search space)" if dropped else ""))
    tasks = _tasks(target, args.mode, args.tasks)
    if args.mode == "descriptors":
        eligible = len(_tasks(target, "descriptors", 0))
        notes.append(f"descriptors mode: held-out tasks drawn among the {eligible} with descriptors; each "
                     "run's env is its task's descriptors")
    cache = args.cache or Path("/tmp/metaspace-bench-transfer") / history.name
    label = args.mode if args.metric is None or history is not target else f"{args.mode}-{args.metric}"
    storage = build_history(history, args.mode, cache / label, args.jobs)
    database = f"bench_transfer_{history.name}_{label}".replace("-", "_").lower()
    url = build_database(storage, database, args.reuse)

    started = time.perf_counter()
    rdb = optuna.storages.RDBStorage(storage)
    sources = {n: optuna.load_study(study_name=n, storage=rdb).get_trials(deepcopy=False,
                                                                         states=(TrialState.COMPLETE,))
               for n in sorted(optuna.get_all_study_names(rdb))}
    zero = portfolios(history, sources, tasks, target.name) if "zero_shot" in methods else {}
    if "zero_shot" in methods:
        notes.append(ZERO_SHOT_NOTE)
    if {"random", "cold_tpe"} <= set(methods):
        notes.append("cold_tpe's first 10 trials are random (TPESampler's n_startup_trials): random's, seed "
                     "for seed")
    mixed = any(isinstance(d, CategoricalDistribution) for d in target.distributions().values())
    cma_sources = ({n: numeric_only(trials) for n, trials in sources.items()}
                   if mixed and "ws_cmaes" in methods else sources)
    if "ws_cmaes" in methods and mixed:
        notes.append(CMAES_NOTE)
    if "warm_start" in methods:
        notes.append("warm_start: metaspace.optuna_warm_start(k=5, min_runs=1) restricted to the source "
                     "studies (strategy=: suggest has no exclude), then TPE")
    print(f"sources read and portfolios built in {time.perf_counter() - started:.1f} s; {len(tasks)} tasks x "
          f"{args.seeds} seeds x {args.budget} trials x {len(methods)} methods ({', '.join(methods)}) on "
          f"{args.jobs} jobs", flush=True)

    _SETUP = Setup(target, history, args.mode, url, args.budget, sources, cma_sources, zero)
    units = [(task, seed) for task in tasks for seed in range(args.seeds)]
    runs: list[dict[str, Any]] = []
    left = {task: args.seeds for task in tasks}
    started = time.perf_counter()
    with _pool(args.jobs) as pool:
        futures = [pool.submit(run_unit, task, seed, methods) for task, seed in units]
        for future in as_completed(futures):
            done = future.result()
            runs += done
            task = done[0]["task"]
            left[task] -= 1
            if left[task] == 0:
                _progress(target, task, [r for r in runs if r["task"] == task], methods,
                          f"[{sum(v == 0 for v in left.values())}/{len(tasks)}]")
    seconds = time.perf_counter() - started
    runs.sort(key=lambda r: (METHODS.index(r["method"]), tasks.index(r["task"]), r["seed"]))
    result = {"scenario": target.name, "scenario_dir": str(target.folder), "history": history.name,
              "eligible_tasks": len(_tasks(target, args.mode, 0)),
              "mode": args.mode, "metric": target.metric, "tasks": tasks, "seeds": args.seeds,
              "budget": args.budget, "jobs": args.jobs, "seconds": seconds, "notes": notes, "runs": runs}
    if args.out:
        regret_curves(runs, target, args.budget)  # each run gains its regret curve
        args.out.write_text(json.dumps(result))
    return _finish(result, target, args.format)


if __name__ == "__main__":
    sys.exit(main())
