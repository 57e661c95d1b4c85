"""The calibration of what suggest ranks by (historical_db.suggest_configs), fitted on replayed past decisions: how far the neighbourhood moves each
config's record (the local scale), and what a raw confidence is worth (a monotone map to the observed
frequency that a pick beat the random pick). Only the fit lives here: the ranking at each local scale and the
confidence through a map are computed in SQL (sql/suggest_v6.sql, suggest_ranking_v1, and
calibrated_confidence_v1), the one place suggest and the replay both read them from.

A calibration as of a date D is fitted only on decisions whose outcomes were known by D (their runs'
as_of_date on or before D), each replayed as of its own decision date: nothing after D enters it. The
replay of ``metaspace evaluate`` refits one at every decision date where new outcomes have come in and
applies it to that date's decisions; ``--save-calibration`` stores every one it used, and
``historical_db.suggest_configs`` applies the latest stored on or before an answer's date, so what evaluate
measured is what suggest answers. This module never touches the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Chosen before any held-out figure was seen (docs/suggestions.md, "Version 5"): the grid of local scales
# (0 = the record alone, 1 = version 4), how fast old decisions fade (a half-life of this many outcome
# windows: a regime change shows within a few years on daily data), how many realised decisions a fit
# needs, and how many pseudo-decisions at the raw confidence each bin of the map starts from.
LOCAL_SCALES = (0.0, 0.25, 0.5, 1.0)
HALF_LIFE_HORIZONS = 12
MIN_DECISIONS = 30
PRIOR_STRENGTH = 10.0


@dataclass(frozen=True)
class Calibration:
    """One fit: the local scale and the confidence map (knots; linear between, flat beyond)."""

    fitted_until: dt.date
    local_scale: float
    confidence_from: tuple[float, ...]
    confidence_to: tuple[float, ...]
    decisions: int
    settings: dict[str, Any] = field(default_factory=dict)


def isotonic_map(raw: np.ndarray, hits: np.ndarray, weights: np.ndarray, prior_strength: float = PRIOR_STRENGTH,
                 prior_toward: float | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots of a non-decreasing map from raw confidence to the weighted frequency of a hit (pool adjacent
    violators), each pooled bin drawn toward its own raw confidence (or ``prior_toward``) by
    ``prior_strength`` pseudo-decisions and pooled again where that broke the order. With prior_strength 0
    and frequencies that already rise with the raw confidence, the knots are those frequencies.

    Not scikit-learn's IsotonicRegression: it pools only strict violations and its fitted function steps
    between the sample points of a pooled block, where this map has one knot at each pooled block's weighted
    mean raw confidence (equal rates pooled too) and is linear between knots; the two differ on every random
    case tried (200 of 200, prior strength 0), and switching would change what every stored calibration
    means to historical_db.calibrated_confidence_v1."""
    order = np.argsort(raw, kind="stable")
    values, first = np.unique(raw[order], return_index=True)
    w = np.add.reduceat(weights[order], first)
    blocks = [[float(x), float(y), float(wt)] for x, y, wt in
              zip(values, np.add.reduceat((weights * hits)[order], first) / w, w)]  # [mean raw, rate, weight]
    blocks = _pool(blocks)
    blocks = [[x, (y * wt + prior_strength * (x if prior_toward is None else prior_toward)) / (wt + prior_strength),
               wt + prior_strength] for x, y, wt in blocks]
    blocks = _pool(blocks)
    return tuple(b[0] for b in blocks), tuple(min(max(b[1], 0.0), 1.0) for b in blocks)


def _pool(blocks: list[list[float]]) -> list[list[float]]:
    out: list[list[float]] = []
    for block in blocks:
        out.append(list(block))
        while len(out) > 1 and out[-2][1] >= out[-1][1]:
            (x1, y1, w1), (x2, y2, w2) = out[-2], out[-1]
            out[-2:] = [[(x1 * w1 + x2 * w2) / (w1 + w2), (y1 * w1 + y2 * w2) / (w1 + w2), w1 + w2]]
    return out


IDENTITY = ((0.0, 1.0), (0.0, 1.0))  # the map that keeps the raw confidence


@dataclass
class _Realised:
    decision_day: int
    gains: np.ndarray  # per local scale: the pick's objective above the random pick, signed
    raw: np.ndarray  # per local scale: the pick's raw confidence
    mapped: np.ndarray  # per local scale: that raw confidence through the map fitted when it was decided


class OnlineCalibration:
    """Refit as of each decision date on the decisions realised by then (a replay feeds it in date order)."""

    def __init__(self, horizon: int, *, scales: tuple[float, ...] = LOCAL_SCALES,
                 half_life_horizons: float = HALF_LIFE_HORIZONS, min_decisions: int = MIN_DECISIONS,
                 prior_strength: float = PRIOR_STRENGTH, per_block: bool = False, prior_toward: float | None = None,
                 context: dict[str, Any] | None = None):
        self.scales, self.horizon = scales, max(1, horizon)
        self.per_block, self.prior_toward = per_block, prior_toward
        self.context = dict(context or {})  # what the replay was asked with, recorded with each fit
        self.half_life = max(1.0, half_life_horizons * horizon)
        self.min_decisions, self.prior_strength = min_decisions, prior_strength
        self.pending: list[tuple[dt.date, _Realised]] = []  # outcome known on that date
        self.realised: list[_Realised] = []
        self.current: Calibration | None = None
        self.fits: list[Calibration] = []
        self.fitted_map: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # the last, adopted or not

    def add(self, decision_date: dt.date, outcome_date: dt.date, gains: np.ndarray, raw: np.ndarray,
            mapped: np.ndarray) -> None:
        """A decision replayed (as of its decision date), to be used once its outcome is known: per local scale,
        the pick's gain over the random pick, its raw confidence, and that confidence through the map fitted
        when it was decided (:attr:`fitted_map`; historical_db.calibrated_confidence_v1 applies maps)."""
        self.pending.append((outcome_date, _Realised(decision_date.toordinal(), np.asarray(gains, dtype=float),
                                                     np.asarray(raw, dtype=float), np.asarray(mapped, dtype=float))))

    def as_of(self, day: dt.date) -> Calibration | None:
        """The calibration in force on ``day``: refitted on each date since the last fit on which outcomes came
        in, dated that date. (Not on ``day`` itself: which days a replay asks about depends on the decisions
        there are, and so on runs dated after them; the dates outcomes come in on do not.)"""
        known = sorted(((when, r) for when, r in self.pending if when <= day), key=lambda item: item[0])
        if known:
            self.pending = [(when, r) for when, r in self.pending if when > day]
            for i, (when, realised) in enumerate(known):
                self.realised.append(realised)
                if (i + 1 == len(known) or known[i + 1][0] != when) and len(self.realised) >= self.min_decisions:
                    self.current = self._fit(when)
                    self.fits.append(self.current)
        return self.current

    def _fit(self, day: dt.date) -> Calibration:
        ages = day.toordinal() - np.array([r.decision_day for r in self.realised], dtype=float)
        weights = 0.5 ** (ages / self.half_life)
        if self.per_block:  # decisions less than an outcome window apart share their outcome days: one unit
            blocks = np.array([r.decision_day for r in self.realised]) // self.horizon
            weights = weights / np.unique(blocks, return_counts=True)[1][np.unique(blocks, return_inverse=True)[1]]
        gains = np.array([r.gains for r in self.realised])
        means = weights @ gains / weights.sum()
        best = max(range(len(self.scales)), key=lambda i: (round(float(means[i]), 12), self.scales[i]))
        raw = np.array([r.raw[best] for r in self.realised])
        hits = (gains[:, best] > 0).astype(float)
        self.fitted_map = isotonic_map(raw, hits, weights, self.prior_strength, self.prior_toward)
        # The map is used only while it has earned it: over the realised decisions, each confidence through the
        # map fitted before that decision (never one that saw its outcome) must have beaten the raw confidence
        # (weighted Brier score, recent decisions weighing more); otherwise the raw confidence stands.
        mapped = np.array([r.mapped[best] for r in self.realised])
        map_brier = float(weights @ (mapped - hits) ** 2 / weights.sum())
        raw_brier = float(weights @ (raw - hits) ** 2 / weights.sum())
        knots_from, knots_to = self.fitted_map if map_brier < raw_brier else IDENTITY
        settings = {"local_scales": list(self.scales), "mean_gains": [round(float(m), 6) for m in means],
                    "half_life_days": self.half_life, "prior_strength": self.prior_strength,
                    "min_decisions": self.min_decisions, "map_brier": round(map_brier, 6),
                    "raw_brier": round(raw_brier, 6), "map_used": map_brier < raw_brier, **self.context}
        return Calibration(day, float(self.scales[best]), knots_from, knots_to, len(self.realised), settings)
