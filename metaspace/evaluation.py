"""Replay history to measure suggestions: would metaspace's pick have beaten a random pick, and the desk's
best-so-far config, at each decision actually taken?

A decision point is a set of runs that share one environment at one date (the same env object and
as_of_date): the configs actually tried there. At each point metaspace is asked, as of the decision date
(the as_of_date minus the horizon: when the outcome window began), to rank only the configs tried there, so
that every pick has a realised outcome; the horizon purges every run whose outcome window overlaps the
decision. Evaluated as of D (``until``), no run dated after D is read; the encoder version is the active one,
and the result says when it was fitted on runs after the earliest decision (``embed-runs --fit-until``).
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaspace import keys
from metaspace.errors import MetaspaceError
from metaspace.evidence import (
    confidence_bins,
    confidence_gap,
    fmt_signed,
    mean_ci,
    outcome_windows,
    share,
    top_bin,
)
from metaspace.overfitting import config_pbo
from metaspace.records import parse_date
from metaspace.store import evaluation as evaluation_store
from metaspace.store.connection import connect
from metaspace.store.session import session

NO_EDGE = "no config has a reliable edge here"
# How the verdict words a bin's check of its own claim: the verdict quotes a bin worth MIN_BIN_TRIALS trials, and
# a bin is "too few trials" only under that number (the same rounded number: see evidence.confidence_bins).
CLAIMS = {"consistent": "as claimed", "over-confident": "less often than claimed",
          "under-confident": "more often than claimed"}


@dataclass
class Decision:
    """One replayed decision. Objectives are realised values, in the objective's own units."""

    decision_date: str
    as_of_date: str
    configs: int
    chosen_config: str | None
    chosen: float | None
    confidence: float | None
    random: float
    oracle: float
    oracle_config: str
    baseline_config: str | None
    baseline: float
    regret: float | None


@dataclass
class EvaluationResult:
    """The replay's decisions and their aggregates; ``as_dict()`` is what ``--format json`` prints."""

    objective: str
    higher_is_better: bool
    horizon: int
    since: str | None
    until: str | None
    ranking: str
    decision_points: int
    evaluated: int
    picked: int
    summary: dict[str, Any]
    calibration: list[dict[str, Any]]
    verdict: str
    reliable_edge: bool
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    decisions: list[Decision] = field(default_factory=list)

    def as_dict(self, *, decisions: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not decisions:
            out.pop("decisions")
        return out


def _answered_as_suggest(conn, objective: str, higher_is_better: bool) -> str:
    stored, latest = evaluation_store.stored_calibrations(conn, objective=objective,
                                                          higher_is_better=higher_is_better)
    if not stored:
        return (f"ranked as metaspace suggest answers: no calibration of outcome.{objective} is stored, so v4's ranking "
                "(evaluate --save-calibration fits and stores one)")
    return (f"ranked as metaspace suggest answers: suggest_configs with the {stored:,} stored calibrations "
            f"of outcome.{objective}, each decision with the latest fitted by its date (the last until {latest})")


def _fit_note_for(conn, first_decision: dt.date | None) -> str | None:
    """What the replay should say of the encoder: every decision's env vector comes from the active version,
    whose scaling may have seen runs after the earliest decision (fit one with embed-runs --fit-until)."""
    from metaspace.queries import _fitted_through, active_version, fit_note

    version = active_version(conn)
    return fit_note(version, _fitted_through(conn, version), first_decision)


def evaluate(*, objective: str | None = None, since: Any = None, until: Any = None, horizon: int | None = None,
             sample: int | None = None, higher_is_better: bool = True, neighbours: int = 1000, min_runs: int = 3,
             seed: int = 0, plot: str | None = None, ranking: str | None = None, save_calibration: bool = False,
             database_url: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvaluationResult:
    """Replay the decisions in the store and score metaspace's top suggestion at each.

    ``since``: decisions taken on or after this date; ``until``: decisions whose outcome was known by this
    date (evaluate as of it: nothing dated later is read). ``horizon``: days from a decision to its outcome
    (by default inferred from the runs' ``test_start`` field). ``sample``: replay only N decision points,
    drawn with ``seed``. ``plot``: write the reliability plot (PNG) there. ``ranking`` picks the SQL ranking
    replayed: by default ``suggest``, what ``metaspace suggest`` answers (historical_db.suggest_configs with the
    calibrations stored as of each decision date; with none stored, version 4's answers), or ``v5`` (that
    ranking, calibrated by the replay itself), or the released ``v4``, ``v2``, ``v1`` or a function with version
    2's arguments, for the benchmarks that compare them. ``v5`` replays every decision
    known by ``until`` and calibrates as of each decision date on
    the decisions realised by then (metaspace.calibration); ``save_calibration`` (v5, the default with it)
    stores those calibrations, which suggest_configs then applies: what was measured is what suggest
    answers. ``progress(step, total)`` is called as decisions are replayed.
    """
    started = time.perf_counter()
    since_date, until_date = parse_date(since, "since"), parse_date(until, "until")
    if sample is not None and sample < 1:
        raise MetaspaceError(f"sample must be 1 or more, got {sample}")
    if horizon is not None and horizon < 1:
        raise MetaspaceError(f"horizon must be 1 or more days, got {horizon}")
    ranking = ranking or ("v5" if save_calibration else "suggest")
    if save_calibration and ranking != "v5":
        raise MetaspaceError(f"save_calibration calibrates ranking v5, not {ranking}")
    if ranking == "v5" and sample is not None:
        raise MetaspaceError("ranking v5 replays every decision (each calibration is fitted on all the decisions "
                             "realised before it): leave out sample")
    if plot and not Path(plot).resolve().parent.is_dir():
        raise MetaspaceError(f"--plot {plot}: no such folder to write the picture in")
    notes: list[str] = []
    with session(database_url) as asked:
        conn, url = asked.conn, asked.url
        notes.extend(asked.notes)
        version = evaluation_store.active_version(conn)
        key = keys.resolve(conn, objective, branch="outcome", option="objective", as_of=until_date)
        if key.note:
            notes.append(key.note)
        path = list(key.path)
        given_horizon = horizon  # v4 counts evidence in blocks of it; without it, of the runs' own windows
        if horizon is None:
            longest = evaluation_store.test_window_horizon(conn, until_date)
            if longest is None:  # a search's history: trials and runs, not backtests with outcome windows
                horizon = 1
                notes.append("the runs carry no outcome window (no test_start): each decision, the configs tried "
                             "together in one environment (a study, an experiment), is ranked from the runs dated "
                             "before its day; --horizon DAYS spaces them further")
            elif save_calibration:  # each stored calibration is applied as of its date: nothing later may shape it
                raise MetaspaceError(
                    f"--save-calibration needs --horizon DAYS: inferred, the horizon is read from every run known "
                    f"(today the longest outcome window is {longest} days, so --horizon {longest + 1}), and the "
                    f"calibrations stored for earlier dates would then depend on runs dated after them")
            else:
                horizon = longest + 1
                notes.append(f"horizon {horizon} days, inferred: the longest outcome window in the runs (as_of_date "
                             f"minus test_start, {longest} days) plus the decision day")
        else:
            notes.append(f"horizon {horizon} days, as given")
        every_point = evaluation_store.decision_points(conn, path, until_date)
        lag = dt.timedelta(days=horizon)
        points = [p for p in every_point if since_date is None or p.as_of_date - lag >= since_date]
        total_points = len(points)
        if sample is not None and sample < len(points):
            keep = np.sort(np.random.default_rng(seed).choice(len(points), size=sample, replace=False))
            points = [points[i] for i in keep]
            notes.append(f"replayed {sample:,} of {total_points:,} decision points, drawn with seed {seed}")
        if ranking == "suggest":
            notes.append(_answered_as_suggest(conn, ".".join(path), higher_is_better))
        fitted = _fit_note_for(conn, min((p.as_of_date - lag for p in points), default=None))
        if fitted:
            notes.append(fitted)
        history = _History(*evaluation_store.objective_history(conn, path, until_date),
                           direction=1.0 if higher_is_better else -1.0)
        # v5 and suggest are ranked as `metaspace suggest` ranks by default: evidence in blocks of the runs' own
        # outcome windows (point in time), the horizon only dating the decisions; a calibration to be stored is
        # replayed on the exact path, whose answers as of a date no later run can move (a graph walk's can).
        blocks = None if ranking in ("v5", "suggest") else given_horizon
        if ranking == "v5":
            rank = functools.partial(evaluation_store.picks_at_scales, objective=".".join(path),
                                     higher_is_better=higher_is_better, neighbours=neighbours, min_runs=min_runs,
                                     horizon=blocks, exact=save_calibration)
        else:
            rank = functools.partial(evaluation_store.ranked_eligible, objective=".".join(path),
                                     higher_is_better=higher_is_better, neighbours=neighbours, min_runs=min_runs,
                                     ranking=ranking, horizon=blocks, exact=save_calibration)
        if ranking == "v5":
            tops, fits = _calibrated_replay(conn, url, every_point, points, lag, rank, progress, horizon=horizon,
                                            higher_is_better=higher_is_better, notes=notes,
                                            context={"neighbours": neighbours, "min_runs": min_runs,
                                                     "horizon": horizon, "horizon_given": blocks})
        else:
            fits = []
            tops = [ranked[0] if ranked else None
                    for ranked in _replay(conn, url, points, lag, rank, progress)]
        decisions = [_decide(point, point.as_of_date - lag, top,
                             history.best_so_far(point.as_of_date - lag, point.configs), higher_is_better)
                     for point, top in zip(points, tops)]
        if save_calibration:
            _save(conn, version, fits, objective=".".join(path), higher_is_better=higher_is_better, notes=notes)
    result = _aggregate(decisions, key.name, higher_is_better, horizon, since_date, until_date, ranking,
                        total_points, notes)
    # Does a config's record carry from one half of these decisions to the other? (CSCV; not the picks' doing.)
    windows = outcome_windows(np.array([(p.as_of_date - lag).toordinal() for p in points], dtype=np.int64), horizon)
    result.summary["pbo"] = config_pbo(windows, [p.configs for p in points], [p.values for p in points],
                                       higher_is_better)
    if plot:
        reliability_plot(result, plot)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


REPLAY_CONNECTIONS = 2  # decisions are independent queries: a second connection uses a second server core


def _calibrated_replay(conn, url: str, every_point: list, points: list, lag: dt.timedelta,
                       rank: Callable[..., Any], progress: Callable[[int, int], None] | None, *,
                       horizon: int, higher_is_better: bool, notes: list[str], context: dict[str, Any]
                       ) -> tuple[list[dict[str, Any] | None], list[Any]]:
    """v5's top suggestion at each of ``points``: every decision known is replayed uncalibrated, oldest first
    (``rank`` gives its top config and raw confidence at every local scale of the grid, from SQL), and each is
    answered with the calibration fitted on the decisions realised by its date, the one suggest_configs
    reads once ``save`` has stored them. Maps are applied by the SQL that suggest applies them with."""
    from metaspace.calibration import OnlineCalibration

    online = OnlineCalibration(horizon, context=context)
    picks_all = _replay(conn, url, every_point, lag, functools.partial(rank, scales=online.scales), progress)
    sign = 1.0 if higher_is_better else -1.0
    tops: dict[Any, dict[str, Any] | None] = {}
    for point, picks in zip(every_point, picks_all):
        day = point.as_of_date - lag
        fit = online.as_of(day)
        if not picks:
            tops[point] = None
            continue
        values, random = dict(zip(point.configs, point.values)), float(np.mean(point.values))
        chosen = [picks[scale] for scale in online.scales]
        raw = [confidence for _, confidence in chosen]
        mapped = evaluation_store.calibrated_confidences(conn, raw, *(online.fitted_map or (None, None)))
        online.add(day, point.as_of_date, np.array([sign * (values[c] - random) for c, _ in chosen]),
                   np.array(raw), np.array(mapped))
        config, top_raw = picks[fit.local_scale if fit else 1.0]
        confidence = (evaluation_store.calibrated_confidences(conn, [top_raw], fit.confidence_from,
                                                              fit.confidence_to)[0] if fit else top_raw)
        tops[point] = {"config_id": config, "deflated_confidence": confidence, "raw_confidence": top_raw}
    if every_point:  # and on to the last outcome known, so that suggest as of today has the freshest fit
        online.as_of(max(p.as_of_date for p in every_point))
    last = online.fits[-1] if online.fits else None
    notes.append(
        f"v5: local scale and confidence map refitted on each date outcomes came in, on the decisions realised by then "
        f"({len(online.fits):,} fits; decisions fading with a half-life of {online.half_life:.0f} days)"
        + (f"; the last, fitted until {last.fitted_until}: local scale {last.local_scale:g} over "
           f"{last.decisions:,} decisions" if last else f"; fewer than {online.min_decisions} realised: none fitted"))
    return [tops[p] for p in points], online.fits


def _save(conn, version: int | None, fits: list[Any], *, objective: str, higher_is_better: bool,
          notes: list[str]) -> None:
    """Store the calibrations under the encoder version every decision was ranked on, and say what happened.
    Evaluate reads the store as it goes (a snapshot held for the whole replay would hold its tables' locks that
    long, and a DROP INDEX queued behind them would stall every search): if ``embed-runs --rebuild`` switched the
    active version meanwhile, the decisions were ranked partly on each, and nothing is stored."""
    now = evaluation_store.active_version(conn)
    if version is None or now != version:
        notes.append(f"the active encoder version changed from {version} to {now} while evaluate replayed "
                     "(embed-runs --rebuild): its decisions were ranked partly on each, so no calibration was "
                     "stored; run evaluate --save-calibration again")
        return
    saved = evaluation_store.save_calibrations(conn, objective=objective, higher_is_better=higher_is_better,
                                               fits=fits, encoder_version=version)
    if saved.already:
        notes.append(f"the same {saved.count:,} calibrations were stored already (another evaluate "
                     "--save-calibration finished first): left as they are")
    else:
        notes.append(f"stored {saved.count:,} calibrations for encoder version {version}: suggest_configs "
                     "(metaspace suggest) applies the latest fitted on or before each answer's date")


def _replay(conn, url: str, points: list, lag: dt.timedelta, rank: Callable[..., list[dict[str, Any]]],
            progress: Callable[[int, int], None] | None) -> list[list[dict[str, Any]]]:
    """The suggestions at each decision point, best first, in the points' order. The rankings are asked on
    ``REPLAY_CONNECTIONS`` connections at once (each worker its own), since each is one independent read of
    the same snapshot-free tables; the answers are the same as asked one by one."""
    tops: list[list[dict[str, Any]]] = [[] for _ in points]
    lock = threading.Lock()

    def work(share: range, own) -> None:
        for i in share:
            tops[i] = rank(own, points[i], as_of=points[i].as_of_date - lag)
            if progress:
                with lock:
                    progress(1, len(points))

    workers = max(1, min(REPLAY_CONNECTIONS, len(points) // 20))
    if workers == 1:
        work(range(len(points)), conn)
        return tops

    def other(start: int) -> None:
        with connect(url, autocommit=True) as own:
            work(range(start, len(points), workers), own)

    with ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="metaspace-replay") as pool:
        helpers = [pool.submit(other, start) for start in range(1, workers)]
        work(range(0, len(points), workers), conn)
        for helper in helpers:
            helper.result()
    return tops


class _History:
    """The objective by config as known at each date, for the best-so-far baseline."""

    def __init__(self, dates: np.ndarray, configs: list[str], sums: np.ndarray, counts: np.ndarray, *,
                 direction: float):
        self.dates, self.direction = dates, direction
        self.configs = configs
        self.sums, self.counts = sums, counts
        self._position = 0
        self._sum: dict[str, float] = {}
        self._count: dict[str, float] = {}
        self._last: np.datetime64 | None = None

    def best_so_far(self, day: dt.date, eligible: tuple[str, ...]) -> str | None:
        """Among ``eligible``, the config with the best mean objective over every run known by ``day``."""
        moment = np.datetime64(day, "D")
        if self._last is not None and moment < self._last:
            raise ValueError("best_so_far must be asked in date order")
        self._last = moment
        end = int(np.searchsorted(self.dates, moment, side="right"))
        for i in range(self._position, end):
            name = self.configs[i]
            self._sum[name] = self._sum.get(name, 0.0) + self.sums[i]
            self._count[name] = self._count.get(name, 0.0) + self.counts[i]
        self._position = max(self._position, end)
        known = [(self.direction * self._sum[c] / self._count[c], c) for c in eligible if self._count.get(c)]
        if not known:
            return None
        best = max(value for value, _ in known)
        return min(c for value, c in known if value == best)


def _decide(point, decision_date: dt.date, top: dict[str, Any] | None, baseline_config: str | None,
            higher_is_better: bool) -> Decision:
    values = dict(zip(point.configs, point.values))
    sign = 1.0 if higher_is_better else -1.0
    random = float(np.mean(point.values))
    oracle_config = max(point.configs, key=lambda c: (sign * values[c], c))
    oracle = values[oracle_config]
    chosen = values[top["config_id"]] if top else None
    spread = sign * (oracle - random)
    regret = sign * (oracle - chosen) / spread if chosen is not None and spread > 1e-12 else None
    return Decision(
        decision_date=decision_date.isoformat(), as_of_date=point.as_of_date.isoformat(), configs=len(values),
        chosen_config=top["config_id"] if top else None, chosen=chosen,
        confidence=None if top is None or top.get("deflated_confidence") is None
        else float(top["deflated_confidence"]),
        random=random, oracle=oracle, oracle_config=oracle_config, baseline_config=baseline_config,
        baseline=values[baseline_config] if baseline_config else random, regret=regret)


def _days(decisions: list[Decision]) -> np.ndarray:
    return np.array([dt.date.fromisoformat(d.decision_date).toordinal() for d in decisions], dtype=np.int64)


def _aggregate(decisions: list[Decision], objective: str, higher_is_better: bool, horizon: int,
               since: dt.date | None, until: dt.date | None, ranking: str, total_points: int,
               notes: list[str]) -> EvaluationResult:
    sign = 1.0 if higher_is_better else -1.0
    picked = [d for d in decisions if d.chosen is not None]
    if len(picked) < len(decisions):
        missed = len(decisions) - len(picked)
        notes.append(f"{missed:,} decision{'s' if missed != 1 else ''} had no eligible config with enough evidence as of "
                     "their date (metaspace abstained); the figures are over the others")
    days = _days(picked)
    blocks = outcome_windows(days, horizon)
    column = {name: np.array([getattr(d, name) for d in picked], dtype=float)
              for name in ("chosen", "random", "oracle", "baseline")}
    summary: dict[str, Any] = {name: mean_ci(values, blocks) for name, values in column.items()}
    summary["chosen_minus_random"] = mean_ci(sign * (column["chosen"] - column["random"]), blocks)
    summary["chosen_minus_baseline"] = mean_ci(sign * (column["chosen"] - column["baseline"]), blocks)
    summary["baseline_minus_random"] = mean_ci(sign * (column["baseline"] - column["random"]), blocks)
    defined = [(d, b) for d, b in zip(picked, blocks) if d.regret is not None]
    summary["regret"] = mean_ci(np.array([d.regret for d, _ in defined]), np.array([b for _, b in defined]))
    summary["beats_random"] = share(sign * (column["chosen"] - column["random"]) > 0)
    summary["beats_baseline"] = share(sign * (column["chosen"] - column["baseline"]) > 0)
    summary["independent_blocks"] = int(len(np.unique(blocks)))
    claims = np.array([np.nan if d.confidence is None else d.confidence for d in picked], dtype=float)
    edges = sign * (column["chosen"] - column["random"])
    summary["confidence_gap"] = confidence_gap(claims, edges, days, horizon)
    calibration = confidence_bins(claims, edges, days, horizon)
    edge = summary["chosen_minus_random"]
    reliable = edge["low"] is not None and edge["low"] > 0
    verdict = _verdict(reliable, summary, calibration, len(picked), objective)
    return EvaluationResult(
        objective=objective, higher_is_better=higher_is_better, horizon=horizon,
        since=since.isoformat() if since else None, until=until.isoformat() if until else None, ranking=ranking,
        decision_points=total_points, evaluated=len(decisions), picked=len(picked), summary=summary,
        calibration=calibration, verdict=verdict, reliable_edge=reliable, notes=notes, decisions=decisions)


def _verdict(reliable: bool, summary: dict[str, Any], calibration: list[dict[str, Any]], picked: int,
             objective: str) -> str:
    edge, versus = summary["chosen_minus_random"], summary["chosen_minus_baseline"]
    interval = f"95% CI {fmt_signed(edge['low'])}..{fmt_signed(edge['high'])}"
    if not picked:
        return f"{NO_EDGE}: no decision had a config with enough evidence to rank"
    if not reliable:
        return (f"{NO_EDGE}: over {picked:,} decisions the top suggestion's {objective} minus a random pick's is "
                f"{fmt_signed(edge['mean'])} ({interval})")
    top = top_bin(calibration)
    confident = (f"; picks at confidence {top['bin']} beat it {top['beats_random']:.0%} of the time, "
                 f"{CLAIMS[top['confidence_check']]} ({top['decisions']:,} decisions in "
                 f"{top['independent_blocks']:,} independent outcome windows)" if top else "")
    return (f"the top suggestion beat a random pick among the same configs by {fmt_signed(edge['mean'])} {objective} "
            f"({interval}) over {picked:,} decisions, {_against_baseline(versus)}{confident}")


def _against_baseline(versus: dict[str, float | None]) -> str:
    """The pick against the desk's best-so-far config: ahead or behind only where the interval says so (asked
    only of a reliable edge, which needs two effective windows or more, so the difference, over the same
    windows, has its interval too)."""
    interval = f"95% CI {fmt_signed(versus['low'])}..{fmt_signed(versus['high'])}"
    if versus["low"] <= 0 <= versus["high"]:
        return (f"level with the best-so-far config ({fmt_signed(versus['mean'])}, {interval}): no edge clear of noise "
                "over simply taking the config with the best record so far")
    if versus["mean"] >= 0:
        return f"and the best-so-far config by {versus['mean']:.3f} ({interval})"
    return f"but trailed the best-so-far config by {-versus['mean']:.3f} ({interval})"


def reliability_plot(result: EvaluationResult, out: str) -> str:
    """The reliability diagram: per confidence bin, how often the pick beat a random pick, against the
    confidence claimed (the diagonal is perfect calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.calibration if r["decisions"]]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.axhline(0.5, color="0.8", linewidth=1)
    if rows:
        x = [r["mean_confidence"] for r in rows]
        y = [r["beats_random"] for r in rows]
        err = [[r["beats_random"] - r["beats_random_low"] for r in rows],
               [r["beats_random_high"] - r["beats_random"] for r in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="picks (95% interval, windows as trials)")
        for r in rows:
            ax.annotate(f"{r['decisions']} in {r['independent_blocks']} windows", (r["mean_confidence"],
                        r["beats_random"]), textcoords="offset points",
                        xytext=(6, -10), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("deflated_confidence of the pick")
    ax.set_ylabel("share of picks that beat a random pick")
    ax.set_title(f"{result.objective}: {result.picked:,} decisions, ranking {result.ranking}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
