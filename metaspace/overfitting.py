"""The probability of backtest overfitting (PBO) by combinatorially symmetric cross-validation (CSCV; Bailey,
Borwein, Lopez de Prado and Zhu, "The probability of backtest overfitting", 2016).

What evaluate asks of a history with it: if a desk picks, on one half of the history, the config with the
best record, how often does that config land in the worse half of the configs on the other half? The
decisions' independent outcome windows are grouped, in date order, into S contiguous partitions of (nearly)
equal numbers of windows; every way of taking S/2 of them as the in-sample half is tried (C(S, S/2) splits: 12,870 for S = 16), the rest being the out-of-sample half.
PBO is the share of splits in which the in-sample best config ranks at or below the median out of sample:
near 0, a record that carries; near 0.5 or above, choosing by the record is fitting noise. Each config is
scored by its objective relative to the configs tried beside it (minus their mean), which removes the market
shock they share. Pure arithmetic: nothing here reads the database.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_PARTITIONS = 16  # C(16, 8) = 12,870 splits
MIN_PARTITIONS = 4


def pbo(performance: np.ndarray) -> dict[str, Any]:
    """CSCV over ``performance`` (partitions x strategies, higher is better; each cell a strategy's mean in
    that partition, every partition weighing the same). Returns the PBO, the splits tried and the median
    logit of the in-sample winner's relative rank out of sample (negative: it does worse than the median)."""
    partitions, strategies = performance.shape
    if partitions % 2 or partitions < 2 or strategies < 2:
        raise ValueError("CSCV needs an even number of partitions and two strategies or more")
    splits = np.array(list(itertools.combinations(range(partitions), partitions // 2)))
    inside = np.zeros((len(splits), partitions), dtype=bool)
    inside[np.arange(len(splits))[:, None], splits] = True
    in_sample = inside @ performance / (partitions // 2)
    out_of_sample = ~inside @ performance / (partitions // 2)
    best = np.argmax(in_sample, axis=1)  # ties: the first strategy
    winner = out_of_sample[np.arange(len(splits)), best][:, None]
    # Relative rank out of sample in (0, 1): 1/(N+1) the worst, N/(N+1) the best; ties share their mean rank.
    rank = ((out_of_sample < winner).sum(axis=1) + 0.5 * ((out_of_sample == winner).sum(axis=1) - 1) + 1) \
        / (strategies + 1)
    logits = np.log(rank / (1 - rank))
    return {"pbo": float((logits <= 0).mean()), "splits": len(logits), "median_logit": float(np.median(logits))}


def config_pbo(windows: Sequence[int], configs: Sequence[Sequence[str]], values: Sequence[Sequence[float]],
               higher_is_better: bool = True) -> dict[str, Any]:
    """PBO of choosing a config by its record, over decisions given by their independent outcome window
    (numbered in date order), the configs tried and their realised objectives. Partitions: whole windows,
    contiguous in date order, the same number of windows in each give or take one (two or more), as many as
    that allows up to 16, at least 4, so that no window is both in sample and out of it (two decisions either
    side of a boundary can still share a few outcome days: no gap is purged); strategies: the configs tried in
    every partition."""
    labels = np.unique(windows)
    partitions = min(MAX_PARTITIONS, 2 * (len(labels) // 4))
    out: dict[str, Any] = {"pbo": None, "partitions": partitions, "configs": 0, "splits": 0, "median_logit": None,
                           "reason": None}
    if partitions < MIN_PARTITIONS:
        out["reason"] = (f"too few independent outcome windows ({len(labels)}; CSCV needs "
                         f"{2 * MIN_PARTITIONS} or more for {MIN_PARTITIONS} partitions)")
        return out
    sign = 1.0 if higher_is_better else -1.0
    part_of = {int(w): p for p, group in enumerate(np.array_split(labels, partitions)) for w in group}
    sums: list[dict[str, float]] = [{} for _ in range(partitions)]
    counts: list[dict[str, int]] = [{} for _ in range(partitions)]
    for window, tried, realised in zip(windows, configs, values):
        part, mean = part_of[int(window)], float(np.mean(realised))
        for config, value in zip(tried, realised):
            sums[part][config] = sums[part].get(config, 0.0) + sign * (value - mean)
            counts[part][config] = counts[part].get(config, 0) + 1
    common = sorted(set.intersection(*(set(seen) for seen in counts)))
    out["configs"] = len(common)
    if len(common) < 2:
        out["reason"] = "fewer than two configs were tried in every partition of the history"
        return out
    performance = np.array([[total[c] / seen[c] for c in common] for total, seen in zip(sums, counts)])
    out.update(pbo(performance))
    return out
