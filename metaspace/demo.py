"""``metaspace demo``: the whole tour on a sample history, in about half a minute, with no server to set up."""

from __future__ import annotations

import datetime as dt
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaspace import landscape, pipeline, sample
from metaspace.errors import MetaspaceError
from metaspace.evaluation import evaluate
from metaspace.queries import search, suggest
from metaspace.store import migrate
from metaspace.store.connection import connection, redact
from metaspace.store.runs import count_runs

DEMO_DATABASE = "metaspace_demo"
DEMO_DECISIONS = 300  # decision points replayed by the demo's evaluate (a few seconds)
DEMO_INDEXED_SPACES = "env"


@dataclass
class Step:
    """One part of the tour: a heading, what it shows, and the rows that show it."""

    title: str
    explanation: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)  # what the answer says of itself (the API's warnings)


@dataclass
class DemoResult:
    database_url: str
    runs_file: str
    picture: str
    seconds: float
    example_run: str = ""
    verdict: str = ""
    verdict_notes: list[str] = field(default_factory=list)  # the replay's notes (metaspace evaluate prints them too)
    steps: list[Step] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per part of the tour (benchmarks/bench_demo.py)


def _noted(ask: Callable[..., Any], **options: Any) -> tuple[Any, list[str]]:
    """An answer and the notes it gave (metaspace's notes are UserWarnings), kept for the step that shows it: a
    tour prints them as notes, not as Python warnings with a file name and a line of source. Any other
    warning goes on as it would have."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        answer = ask(**options)
    notes: list[str] = []
    for warning in caught:
        if not issubclass(warning.category, UserWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in notes:
            notes.append(str(warning.message))
    return answer, notes


def _database(database_url: str | None) -> str:
    if database_url is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from metaspace.store import embedded

            return embedded.start(DEMO_DATABASE, fresh=True)
    migrate.upgrade(database_url)
    with connection(database_url) as conn:
        if count_runs(conn):
            raise MetaspaceError("the demo writes sample runs: point it at an empty database (this one holds runs), "
                                 "or leave --database-url unset to use a demo database on the embedded server")
    return database_url


def _migrated(database_url: str | None) -> str:
    url = _database(database_url)
    migrate.upgrade(url)
    return url


def _truth_by_regime(records: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """What the simulation says earned the best forward Sharpe in each hidden regime (for the narration)."""
    sharpes: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in records:
        sharpes[(run["sim"]["trailing_regime"], run["config"]["strategy"])].append(run["outcome"]["sharpe"])
    best: dict[str, tuple[str, float]] = {}
    for (regime, family), values in sharpes.items():
        mean = float(np.mean(values))
        if regime not in best or mean > best[regime][1]:
            best[regime] = (family, mean)
    return best


def _target(records: list[dict[str, Any]], regime: str, family: str | None = None) -> dict[str, Any]:
    """A late run whose trailing window the simulation spent in ``regime``: its env is the question."""
    candidates = [r for r in records if r["sim"]["trailing_regime"] == regime == r["sim"]["forward_regime"]
                  and family in (None, r["config"]["strategy"])]
    if not candidates:
        raise MetaspaceError(f"the sample has no {regime} window; use a larger --n")
    return max(candidates, key=lambda r: r["test_start"])


def run_demo(*, n: int = 20_000, seed: int = 7, out_dir: str = ".", database_url: str | None = None,
             say: Callable[[str], None] = print, import_progress=None, embed_progress=None) -> DemoResult:
    """Start the database, load a sample history, embed it, search it, ask for suggestions and draw it. What
    the answers say of themselves is in each step's ``notes`` and in ``verdict_notes``, not raised as warnings."""
    started = time.perf_counter()
    phases: dict[str, float] = {}
    lap = [started]

    def timed(phase: str) -> None:
        now = time.perf_counter()
        phases[phase] = phases.get(phase, 0.0) + now - lap[0]
        lap[0] = now

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say("1. Database: " + ("the embedded PostgreSQL + pgvector (no server to set up)" if database_url is None
                           else "the one given"))
    # The server starts and the schema migrates (mostly waiting on PostgreSQL) while this thread simulates
    # the sample history (numpy and Python): one overlaps the other.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaspace-demo-database") as pool:
        started_database = pool.submit(_migrated, database_url)
        records = sample.sample_runs(n, seed=seed)
        runs_file = str(sample.write_runs(records, out / "metaspace-demo-runs.jsonl.gz"))
        timed("sample (while the database starts)")
        url = started_database.result()
    timed("database")
    say(f"   {redact(url)}, schema migrated")
    say(f"2. Sample history: {n:,} backtests of trend, mean-reversion and vol-target configs on four simulated "
        "markets that switch between trending, mean-reverting, calm and stressed regimes")
    say(f"   written to {runs_file}")
    say("3. import-runs and embed-runs: each run becomes a point in R^384 (joint) and in the config, env and "
        "outcome spaces")
    imported = pipeline.import_runs([runs_file], database_url=url, progress=import_progress)
    timed("import")
    # The tour asks the env space hundreds of times (suggest, evaluate) and the joint space once: only env
    # gets an HNSW graph; the others answer by exact search, which at this size takes milliseconds.
    embedded = pipeline.embed_runs(database_url=url, progress=embed_progress, indexed_spaces=DEMO_INDEXED_SPACES)
    timed("embed")
    phases.update({"  of which HNSW graphs": embedded.index_seconds, "  writing vectors": embedded.write_seconds,
                   "  encoding (overlapped)": embedded.encode_seconds})
    graphs = ", ".join(embedded.graphs) or "none"
    say(f"   imported {imported.inserted:,}, embedded {embedded.embedded:,} with encoder version {embedded.version}; "
        f"HNSW graph for {graphs} (the space suggest and evaluate ask {DEMO_DECISIONS} times), exact search "
        "elsewhere (embed-runs --indexed-spaces)")
    result = DemoResult(url, runs_file, "", 0.0)

    truth = _truth_by_regime(records)
    example = _target(records, "trending", "trend")
    result.example_run = example["run_id"]
    similar, notes = _noted(search, run=example["run_id"], k=5, database_url=url)
    result.steps.append(Step(
        f"4. Runs like {example['run_id']} ({example['config_id']} on {example['strategy_id']}, "
        f"Sharpe {example['outcome']['sharpe']:.2f}), in the joint space",
        "Close in the joint space means alike in config, environment and outcome at once.",
        similar, ("run_id", "config_id", "strategy_id", "as_of_date", "distance"), notes))

    for number, regime in ((5, "stressed"), (6, "calm")):
        target = _target(records, regime)
        as_of = dt.date.fromisoformat(target["test_start"])
        suggestions, notes = _noted(suggest, env=target["env"], k=3, objective="outcome.sharpe", as_of=as_of,
                                    database_url=url)
        family, mean = truth[regime]
        result.steps.append(Step(
            f"{number}. Configs for a {regime} environment (the env of {target['run_id']}), as of {as_of}",
            f"Ranked by Sharpe in the nearest environments, evidence-weighted; only runs known by {as_of} count. "
            f"deflated_confidence near 1 = unlikely to be luck among the configs compared. "
            f"(In the simulation, {family} configs earned the best mean Sharpe in {regime} windows: {mean:.2f}.)",
            [{**s, "strategy": (s.get("config") or {}).get("strategy")} for s in suggestions],
            ("config_id", "strategy", "score", "runs", "objective_mean", "deflated_confidence"), notes))

    timed("search and suggest")
    picture = str(out / "metaspace-demo-map.png")
    # The replay keeps one server process busy and the picture is numpy and matplotlib in this one: on two
    # cores they take the time of the longer, not of both.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaspace-demo-map") as pool:
        drawn = pool.submit(landscape.map_space, out=picture, space="joint", color="config.strategy",
                            database_url=url)
        # The warning filters are process-wide: a note the picture's thread gives meanwhile lands here too.
        replay, notes = _noted(evaluate, objective="outcome.sharpe", sample=DEMO_DECISIONS, database_url=url)
        drawn.result()
    result.verdict = (f"7. Would the suggestions have earned it? Replaying {replay.evaluated:,} past decisions "
                      f"(of {replay.decision_points:,}): {replay.verdict}")
    result.verdict_notes = list(dict.fromkeys([*notes, *replay.notes]))
    timed("evaluate and map")
    result.picture = picture
    result.phases = phases
    result.seconds = time.perf_counter() - started
    return result
