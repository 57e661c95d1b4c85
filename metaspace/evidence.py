"""How ``metaspace evaluate`` weighs its evidence: decisions whose outcome windows overlap are one trial,
and a confidence is judged against how often its picks won, over independent trials only.

Pure arithmetic on replayed decisions (numpy and scipy, no database): windows, interval estimates, the
calibration bins of ``deflated_confidence`` and whether each is what it claims.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BIN_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# A bin, or the picks as a whole, is judged only when worth at least this many independent trials (outcome
# windows, Kish-weighted by their sizes): decisions less than a horizon apart share outcome days.
MIN_BIN_TRIALS = 10


def outcome_windows(days: np.ndarray, horizon: int) -> np.ndarray:
    """A window number per decision day: in date order, a window starts at the first decision not yet in one
    and takes every decision less than a horizon after that start (they share outcome days). Windows are the
    independent units of every interval here, counted among the decisions in question, so no decision
    elsewhere moves them."""
    days = np.asarray(days, dtype=np.int64)
    order = np.argsort(days, kind="stable")
    windows = np.empty(len(days), dtype=np.int64)
    window, start = -1, None
    for i in order:
        if start is None or days[i] >= start + max(horizon, 1):
            window, start = window + 1, days[i]
        windows[i] = window
    return windows


def mean_ci(values: np.ndarray, blocks: np.ndarray) -> dict[str, float | None]:
    """Mean and a 95 percent interval from block means (batch means), blocks weighted by their size, with
    Student's t quantile for the blocks' Kish-effective number less one degrees of freedom: a user's history
    may hold only a few outcome windows, or one crowded episode among lone decisions, and the normal quantile
    (or windows counted as equals) calls an edge there reliable when it is not. Under two effective blocks
    there is no interval (None), as with one. The degrees of freedom are a heuristic (Satterthwaite's when
    decisions inside a window are independent); a few large windows among many lone decisions still leave
    the interval somewhat narrow."""
    if len(values) == 0:
        return {"mean": None, "low": None, "high": None}
    mean = float(values.mean())
    labels, index = np.unique(blocks, return_inverse=True)
    sizes = np.bincount(index).astype(float)
    effective = float(sizes.sum() ** 2 / (sizes ** 2).sum())  # not rounded: it sets the degrees of freedom
    if effective < 2:
        return {"mean": mean, "low": None, "high": None}
    block_means = np.bincount(index, weights=values) / sizes
    # Variance of the overall mean from the spread of block means around it (a cluster-robust estimate).
    spread = ((sizes * (block_means - mean)) ** 2).sum() / sizes.sum() ** 2
    var = float(spread * len(labels) / (len(labels) - 1))
    from scipy.special import stdtrit  # scipy comes with scikit-learn; imported here, off the CLI's start

    half = float(stdtrit(effective - 1, 0.975)) * math.sqrt(var)
    return {"mean": mean, "low": mean - half, "high": mean + half}


def effective_count(sizes: np.ndarray) -> float:
    """Kish's effective number of windows of these sizes, (sum of sizes)^2 / sum of squared sizes: equal
    windows count one each, one large window among small ones about once. Rounded as shown."""
    sizes = np.asarray(sizes, dtype=float)
    return round(float(sizes.sum() ** 2 / (sizes ** 2).sum()), 2) if sizes.size else 0.0


def share_interval(p: float, n: float) -> tuple[float | None, float | None]:
    """The Clopper-Pearson 95 percent interval for a share ``p`` observed over ``n`` independent trials, from
    beta quantiles: exact (and conservative) for whole trials, its smooth extension for a fractional
    (effective) number. Not Wilson's approximation: a bin's trials are few, and that one called a single lost
    trial evidence against a confidence of 0.83. Inside it, a claim is not contradicted, not confirmed."""
    if n <= 0:
        return None, None
    from scipy.special import betaincinv  # scipy comes with scikit-learn; imported here, off the CLI's start

    wins = p * n
    low = float(betaincinv(wins, n - wins + 1, 0.025)) if wins > 0 else 0.0
    high = float(betaincinv(wins + 1, n - wins, 0.975)) if wins < n else 1.0
    return low, high


def share(flags: np.ndarray) -> float | None:
    """The share of true flags; None for none."""
    return float(flags.mean()) if len(flags) else None


def fmt_signed(x: float | None, digits: int = 3) -> str:
    """A figure with its sign, as the verdicts print them; n/a for none."""
    return "n/a" if x is None else f"{x:+.{digits}f}"


def confidence_bins(confidence: np.ndarray, edges: np.ndarray, days: np.ndarray,
                    horizon: int) -> list[dict[str, Any]]:
    """Per confidence bin (``confidence`` NaN where a pick carried none): how often the pick beat a random
    pick among the same configs (``edges``: its objective above that pick's, signed so that higher is
    better), and by how much. Its picks fall in independent outcome windows (counted among the bin's own
    picks); the interval counts them as Kish's effective number of trials (``effective_count``): windows of
    equal size are one trial each, and one large window among small ones counts about once, so
    twelve wins inside one window are one piece of evidence, not twelve."""
    rows = []
    for low, high in zip(BIN_EDGES[:-1], BIN_EDGES[1:]):
        top = (high == 1.0) & (confidence == 1.0)
        inside = np.flatnonzero((confidence >= low) & ((confidence < high) | top))
        found = len(inside) > 0
        hits = edges[inside] > 0
        sizes = np.bincount(outcome_windows(days[inside], horizon)) if found else np.zeros(0, dtype=np.int64)
        trials = effective_count(sizes)  # rounded: the check, the interval and top_bin judge what is shown
        won = share(hits)
        hit_low, hit_high = share_interval(won, trials) if found else (None, None)
        claimed = float(confidence[inside].mean()) if found else None
        rows.append({"bin": f"{low:.1f}-{high:.1f}", "low": low, "high": high, "decisions": len(inside),
                     "independent_blocks": len(sizes), "effective_trials": trials,
                     "mean_confidence": claimed, "beats_random": won, "beats_random_low": hit_low,
                     "beats_random_high": hit_high,
                     "mean_edge": float(edges[inside].mean()) if found else None,
                     "confidence_check": confidence_check(claimed, hit_low, hit_high, trials)})
    return rows


def confidence_check(claimed: float | None, low: float | None, high: float | None,
                     trials: float) -> str | None:
    """Is a bin what it claims? Contradicted only where its mean confidence lies outside the interval of how
    often its picks beat a random pick; inside it, a bin worth fewer than MIN_BIN_TRIALS trials tells
    nothing."""
    if claimed is None or low is None or high is None:
        return None
    if claimed > high:
        return "over-confident"
    if claimed < low:
        return "under-confident"
    return "consistent" if trials >= MIN_BIN_TRIALS else "too few trials"


def top_bin(calibration: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest confidence bin whose picks are worth MIN_BIN_TRIALS independent trials or more."""
    return next((row for row in reversed(calibration) if row["effective_trials"] >= MIN_BIN_TRIALS), None)


def confidence_gap(confidence: np.ndarray, edges: np.ndarray, days: np.ndarray,
                    horizon: int) -> dict[str, Any]:
    """How much more often the picks that carry a confidence beat a random pick than they claimed to
    (positive: the confidence is too modest; negative: it claims too much): ``won`` and ``claimed`` are their
    shares, and the interval takes their own outcome windows as the units (NaN confidences are none)."""
    known = ~np.isnan(confidence)
    claimed, hits = confidence[known], (edges[known] > 0).astype(float)
    windows = outcome_windows(days[known], horizon)
    return {**mean_ci(hits - claimed, windows), "won": share(hits),
            "claimed": float(claimed.mean()) if len(claimed) else None, "decisions": int(known.sum()),
            "windows": int(len(np.unique(windows))),
            "effective_windows": effective_count(np.bincount(windows))}


def confidence_line(summary: dict[str, Any]) -> str:
    """One sentence: do the picks beat a random pick as often as their confidence claims, over all bins?
    Judged only over MIN_BIN_TRIALS effective outcome windows or more, as a bin is."""
    gap = summary["confidence_gap"]
    if not gap["decisions"]:
        return "no pick carried a confidence"
    head = f"picks beat a random pick {gap['won']:.0%} of the time, claimed {gap['claimed']:.0%} on average"
    if gap["effective_windows"] < MIN_BIN_TRIALS:
        worth = "" if gap["effective_windows"] == gap["windows"] else f" worth {gap['effective_windows']:g}"
        windows = f"{gap['windows']} outcome window{'s' if gap['windows'] > 1 else ''}"
        return f"{head}: {windows}{worth}, too few to tell"
    interval = f"{fmt_signed(gap['mean'])}, 95% CI {fmt_signed(gap['low'])}..{fmt_signed(gap['high'])}"
    if gap["low"] > 0:
        return f"{head} ({interval}): under-confident, the picks win more often than claimed"
    if gap["high"] < 0:
        return f"{head} ({interval}): over-confident, the picks win less often than claimed"
    return f"{head} ({interval}): consistent, no gap clear of noise"
