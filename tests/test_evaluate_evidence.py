"""How evaluate weighs its own evidence: decisions whose outcome windows overlap are one trial, not many.

Pure aggregation over replayed decisions (the replay itself is tested against PostgreSQL in
test_evaluate.py); these decisions are built by hand so that each case has a known answer.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from metaspace.evaluation import Decision, _aggregate

HORIZON = 92
START = dt.date(2001, 1, 1)


def _decision(day: int, confidence: float, chosen: float, *, baseline: float | None = None) -> Decision:
    date = START + dt.timedelta(days=day)
    return Decision(decision_date=date.isoformat(), as_of_date=(date + dt.timedelta(days=HORIZON)).isoformat(),
                    configs=4, chosen_config="A", chosen=chosen, confidence=confidence, random=0.0, oracle=2.0,
                    oracle_config="B", baseline_config="A" if baseline is None else "C",
                    baseline=chosen if baseline is None else baseline, regret=None)


def _aggregated(decisions: list[Decision]):
    return _aggregate(decisions, "sharpe", True, HORIZON, None, None, "suggest", len(decisions), [])


def _one_episode_and_many_windows() -> list[Decision]:
    """Twelve confident picks inside one outcome window, all winning, and forty modest picks, each in its own
    window, winning 28 times."""
    episode = [_decision(day, 0.85, 1.0) for day in range(12)]
    spread = [_decision(1000 + HORIZON * i, 0.65, 1.0 if i < 28 else -1.0) for i in range(40)]
    return episode + spread


def test_a_bin_counts_its_independent_outcome_windows_and_its_interval_knows_them() -> None:
    result = _aggregated(_one_episode_and_many_windows())
    confident = next(row for row in result.calibration if row["bin"] == "0.8-0.9")
    modest = next(row for row in result.calibration if row["bin"] == "0.6-0.7")
    assert (confident["decisions"], confident["independent_blocks"]) == (12, 1)
    assert (modest["decisions"], modest["independent_blocks"]) == (40, 40)
    # Twelve wins in one window are one win: the interval must not claim the bin is surely above a coin flip.
    assert confident["beats_random"] == 1.0 and confident["beats_random_low"] < 0.5
    # Forty windows give a real interval, and it is as wide as forty trials make it, no wider.
    assert 0.5 < modest["beats_random_low"] < 0.7 < modest["beats_random_high"] < 0.85


def test_the_verdict_judges_the_top_bin_that_has_independent_evidence() -> None:
    verdict = _aggregated(_one_episode_and_many_windows()).verdict
    assert "picks at confidence >= 0.6 beat it 70% of the time (40 decisions in 40 independent outcome windows)" \
        in verdict, verdict
    assert ">= 0.8" not in verdict


def test_a_bin_counts_decisions_in_one_window_once_whatever_their_confidence_order() -> None:
    rng = np.random.default_rng(3)
    days = rng.permutation(np.repeat(np.arange(5) * HORIZON * 3, 7))
    result = _aggregated([_decision(int(day), 0.75, float(rng.choice([-1.0, 1.0]))) for day in days])
    row = next(row for row in result.calibration if row["bin"] == "0.7-0.8")
    assert (row["decisions"], row["independent_blocks"]) == (35, 5)


def test_a_pick_level_with_the_best_so_far_config_is_said_to_be_level() -> None:
    """chosen minus best-so-far of -0.002 with an interval around zero is a tie, not a loss (nor a win)."""
    rng = np.random.default_rng(0)
    decisions = []
    for i in range(60):
        chosen = 1.0 + float(rng.normal(0.0, 0.5))
        if i % 10 == 0:  # a few decisions where the pick was another config than the best-so-far one
            decisions.append(_decision(HORIZON * i, 0.6, chosen, baseline=chosen + (0.03 if i % 20 else -0.02)))
        else:
            decisions.append(_decision(HORIZON * i, 0.6, chosen))
    result = _aggregated(decisions)
    versus = result.summary["chosen_minus_baseline"]
    assert versus["low"] < 0 < versus["high"] and versus["mean"] < 0
    assert "level with the best-so-far config" in result.verdict, result.verdict
    assert "trailed" not in result.verdict


def test_a_pick_clearly_behind_the_best_so_far_config_is_said_to_trail_it() -> None:
    decisions = [_decision(HORIZON * i, 0.6, 1.0, baseline=1.5 + 0.01 * (i % 3)) for i in range(30)]
    result = _aggregated(decisions)
    assert result.summary["chosen_minus_baseline"]["high"] < 0
    assert "trailed the best-so-far config by 0.510" in result.verdict, result.verdict
