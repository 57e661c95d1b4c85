"""How evaluate weighs its own evidence: decisions whose outcome windows overlap are one trial, not many.

Pure aggregation over replayed decisions (the replay itself is tested against PostgreSQL in
test_evaluate.py); these decisions are built by hand so that each case has a known answer.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from metaspace.evaluation import Decision, _aggregate
from metaspace.evidence import confidence_line, share_interval
from metaspace.overfitting import config_pbo, pbo

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
    assert ("picks at confidence 0.6-0.7 beat it 70% of the time, as claimed (40 decisions in 40 independent "
            "outcome windows)" in verdict), verdict
    assert "0.8-0.9" not in verdict


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


# The probability of backtest overfitting (CSCV) of choosing a config by its record.


def test_a_config_that_wins_in_every_partition_does_not_overfit() -> None:
    rng = np.random.default_rng(1)
    performance = rng.normal(0.0, 0.1, size=(8, 6))
    performance[:, 2] += 1.0
    result = pbo(performance)
    assert result == {"pbo": 0.0, "splits": 70, "median_logit": pytest.approx(np.log(6 / 1))}


def test_a_record_that_reverses_out_of_sample_overfits() -> None:
    """Configs whose luck in one half is paid back in the other: the in-sample winner is the out-of-sample
    loser in every split."""
    performance = np.zeros((6, 5))
    for split in range(6):
        performance[split] = np.arange(5) * (1 if split % 2 else -1) * (1 + 0.01 * split)
    # Three partitions against the other three: the halves always differ in how many odd partitions they hold,
    # and the half with more of them decides both its own winner and the other half's loser.
    assert pbo(performance)["pbo"] == 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(2, 9))
def test_pbo_ignores_what_every_config_shares_and_the_order_of_the_configs(seed: int, half: int, configs: int) -> None:
    """A shock common to all configs in a partition moves no ranking, and neither does listing the configs in
    another order: the PBO must not change."""
    rng = np.random.default_rng(seed)
    performance = rng.normal(size=(2 * half, configs))
    shocked = performance + rng.normal(0, 10, size=(2 * half, 1))
    shuffled = performance[:, rng.permutation(configs)]
    first = pbo(performance)
    assert first["splits"] == math.comb(2 * half, half) and 0.0 <= first["pbo"] <= 1.0
    assert pbo(shocked)["pbo"] == pytest.approx(first["pbo"])
    assert pbo(shuffled)["pbo"] == pytest.approx(first["pbo"])


def test_pure_noise_overfits_half_the_time_on_average() -> None:
    rng = np.random.default_rng(7)
    mean = np.mean([pbo(rng.normal(size=(8, 10)))["pbo"] for _ in range(60)])
    assert 0.4 < mean < 0.6


def test_config_pbo_takes_the_configs_tried_everywhere_relative_to_their_neighbours() -> None:
    """A shock shared by the configs of one decision cancels; a config missing from a partition is left out."""
    rng = np.random.default_rng(5)
    windows, configs, values = [], [], []
    for i in range(40):
        shock = float(rng.normal(0, 5))
        tried = ("A", "B", "C") if i != 3 else ("A", "B", "C", "D")  # D in one partition only
        windows.append(i)
        configs.append(tried)
        values.append(tuple(shock + (0.5 if c == "B" else 0.0) + float(rng.normal(0, 0.05)) for c in tried))
    result = config_pbo(windows, configs, values)
    assert (result["partitions"], result["configs"], result["pbo"]) == (16, 3, 0.0)
    lower = config_pbo(windows, configs, [tuple(-v for v in vs) for vs in values], higher_is_better=False)
    assert lower["pbo"] == 0.0
    few = config_pbo(windows[:6], configs[:6], values[:6])
    assert few["pbo"] is None and "too few independent outcome windows (6" in few["reason"]


def test_config_pbo_scores_a_config_against_the_configs_tried_beside_it() -> None:
    """A and B each run beside C, in markets that turn from good to bad between partitions, B's the opposite
    of A's; C earns 0.4 more than whatever runs beside it. On raw objectives the in-sample best is A or B,
    whichever had the good markets, and it is out of sample in the bad ones; against the config beside it,
    C is the best everywhere and its record carries."""
    windows, configs, values = [], [], []
    for window in range(16):
        good = 3.0 if (window // 2) % 2 == 0 else -3.0
        for other, market in (("A", good), ("B", -good)):
            windows.append(window)
            configs.append((other, "C"))
            values.append((market, market + 0.4 + 0.01 * (window % 3)))
    result = config_pbo(windows, configs, values)
    assert (result["partitions"], result["configs"], result["pbo"]) == (8, 3, 0.0)
    assert result["median_logit"] == pytest.approx(math.log(3 / 1))  # C best out of sample: rank 3 of 3


def test_ties_out_of_sample_share_their_rank_and_count_as_overfit() -> None:
    """Configs that all earn the same: the in-sample pick is no better than the median out of sample."""
    result = pbo(np.zeros((4, 3)))
    assert result == {"pbo": 1.0, "splits": 6, "median_logit": 0.0}


def test_no_skill_is_a_coin_flip_however_the_decisions_crowd_into_windows() -> None:
    """Each window draws fresh config effects (nothing carries); many decisions crowd into the last windows.
    Partitions cut by decisions put one window on both sides of a split and made such a record carry."""
    rng = np.random.default_rng(11)
    results = []
    for _ in range(80):
        windows, configs, values = [], [], []
        for window in range(34):
            effect = rng.normal(size=6)
            for _ in range(1 if window < 30 else 60):
                windows.append(window)
                configs.append(tuple("ABCDEF"))
                values.append(tuple(effect + rng.normal(0, 0.1, size=6)))
        results.append(config_pbo(windows, configs, values)["pbo"])
    assert 0.4 < np.mean(results) < 0.6


def test_a_bin_dominated_by_one_large_window_counts_about_one_trial() -> None:
    """100 winning picks in one window and nine lone losing ones: ten windows, but about one trial's worth
    of evidence; the verdict must not quote that bin. (Four hundred modest picks, each in its own window, give
    the replay as a whole a reliable edge, so that the verdict quotes a bin at all.)"""
    decisions = [_decision(day % 60, 0.85, 1.0) for day in range(100)]
    decisions += [_decision(1000 + HORIZON * i, 0.85, -1.0) for i in range(9)]
    decisions += [_decision(5000 + HORIZON * i, 0.65, 1.0 if i % 10 < 7 else -1.0) for i in range(400)]
    result = _aggregated(decisions)
    row = next(row for row in result.calibration if row["bin"] == "0.8-0.9")
    assert (row["decisions"], row["independent_blocks"]) == (109, 10)
    assert row["effective_trials"] < 1.5 and row["beats_random_low"] < 0.3
    assert "confidence 0.6-0.7" in result.verdict and "0.8-0.9" not in result.verdict


def test_an_episode_is_one_window_wherever_the_other_picks_fall() -> None:
    """Twelve picks eleven days apart at most are one window, whether or not another pick elsewhere shifts a
    grid of windows to cut through them."""
    for elsewhere in (0, 10):
        decisions = [_decision(elsewhere, 0.55, 1.0)] + [_decision(day, 0.85, 1.0) for day in range(86, 98)]
        row = next(row for row in _aggregated(decisions).calibration if row["bin"] == "0.8-0.9")
        assert row["independent_blocks"] == 1, elsewhere


def test_a_pick_clearly_ahead_of_the_best_so_far_config_is_said_to_be_ahead() -> None:
    decisions = [_decision(HORIZON * i, 0.6, 1.5 + 0.01 * (i % 3), baseline=1.0) for i in range(30)]
    verdict = _aggregated(decisions).verdict
    assert "and the best-so-far config by 0.510 (95% CI" in verdict, verdict


# Is the confidence what it claims? A bin's claim is the mean confidence of its picks; it is contradicted only
# where that claim lies outside the bin's interval over independent trials.


def _bin_of(decisions: list[Decision], name: str) -> dict:
    return next(row for row in _aggregated(decisions).calibration if row["bin"] == name)


def _lone(confidence: float, wins: int, picks: int = 40, start: int = 0) -> list[Decision]:
    """``picks`` picks at one confidence, each in its own outcome window, the first ``wins`` of them winning."""
    return [_decision(start + HORIZON * i, confidence, 1.0 if i < wins else -1.0) for i in range(picks)]


def test_a_bin_that_claims_more_than_its_picks_deliver_is_over_confident() -> None:
    row = _bin_of(_lone(0.95, 20), "0.9-1.0")
    assert row["beats_random_high"] < 0.95 and row["confidence_check"] == "over-confident"


def test_a_bin_near_a_coin_flip_whose_picks_nearly_always_win_is_under_confident() -> None:
    row = _bin_of(_lone(0.55, 36), "0.5-0.6")
    assert row["beats_random_low"] > 0.55 and row["confidence_check"] == "under-confident"


def test_a_bin_whose_picks_win_as_often_as_it_claims_is_consistent() -> None:
    row = _bin_of(_lone(0.65, 27), "0.6-0.7")
    assert row["confidence_check"] == "consistent"


def test_a_bin_with_too_few_trials_is_not_called_consistent() -> None:
    """Twelve picks in one window that win as often as claimed are one trial: nothing to tell either way."""
    decisions = [_decision(day, 0.75, 1.0 if day < 9 else -1.0) for day in range(12)]
    assert _bin_of(decisions, "0.7-0.8")["confidence_check"] == "too few trials"
    # Few trials that contradict the claim outright still say so: all lose at 0.95, over four windows.
    assert _bin_of(_lone(0.95, 0, picks=4), "0.9-1.0")["confidence_check"] == "over-confident"


def test_one_losing_window_does_not_contradict_a_confidence_of_083() -> None:
    """A pick that wins 83% of the time loses one window in six: one loss is no evidence against it (an exact
    test gives 0.17). A normal-approximation interval (Wilson's: 0.00..0.79 for no win in one trial) called
    the bin over-confident on the pre-held-out daily replay."""
    row = _bin_of([_decision(day, 0.83, -1.0) for day in range(2)], "0.8-0.9")
    assert row["effective_trials"] == 1.0 and row["beats_random_high"] > 0.83
    assert row["confidence_check"] == "too few trials"
    # Its interval is exact: no win in one trial leaves the share anywhere up to 1 - 0.025 = 0.975.
    assert row["beats_random_high"] == pytest.approx(0.975)


def test_the_verdict_says_whether_the_top_bin_wins_as_often_as_it_claims() -> None:
    honest = _aggregated(_lone(0.65, 28)).verdict
    assert "picks at confidence 0.6-0.7 beat it 70% of the time, as claimed (" in honest, honest
    boastful = _aggregated(_lone(0.95, 27) + _lone(0.65, 28, start=10_000)).verdict
    assert "picks at confidence 0.9-1.0 beat it 68% of the time, less often than claimed (" in boastful, boastful
    modest = _aggregated(_lone(0.55, 36)).verdict
    assert "picks at confidence 0.5-0.6 beat it 90% of the time, more often than claimed (" in modest, modest


def test_a_bin_just_under_ten_trials_is_judged_as_it_is_shown() -> None:
    """Nine lone picks and nine windows of 18: 9.997 effective trials, shown as 10.0. The verdict quoted that
    bin as the top one while its check said too few trials, and the verdict's wording had none for that."""
    decisions = [_decision(HORIZON * 2 * i, 0.65, 1.0 if i < 6 else -0.2) for i in range(9)]
    decisions += [_decision(5000 + HORIZON * 2 * i + j, 0.65, 1.0 if i < 6 else -0.2)
                  for i in range(9) for j in range(18)]
    result = _aggregated(decisions)
    row = next(row for row in result.calibration if row["bin"] == "0.6-0.7")
    assert row["effective_trials"] == 10.0 and row["confidence_check"] == "consistent"
    assert "picks at confidence 0.6-0.7 beat it 67% of the time, as claimed (" in result.verdict, result.verdict


def test_the_exact_interval_is_clopper_pearsons_and_a_fraction_of_a_trial_counts() -> None:
    for wins, n in ((0, 1), (1, 1), (3, 4), (28, 40), (13, 13)):
        low, high = share_interval(wins / n, n)
        exact = binomtest(wins, n).proportion_ci(0.95, method="exact")
        assert (low, high) == (pytest.approx(exact.low), pytest.approx(exact.high))
    # Between 12 and 13 trials the interval is strictly between theirs: not rounded either way.
    widths = [np.subtract(*share_interval(0.7, n)[::-1]) for n in (12.0, 12.5, 13.0)]
    assert widths[0] > widths[1] > widths[2]


def test_picks_without_a_confidence_neither_count_as_wins_nor_move_the_windows() -> None:
    """The claims are compared with the wins of the same picks, over their own windows: two confident picks
    80 days apart share one window, and a silent pick 50 days before them must not split it in two."""
    claimed = [_decision(300 * i + offset, 0.6, 1.0 if i < 12 else -1.0) for i in range(20) for offset in (50, 130)]
    silent = [Decision(**{**vars(d), "confidence": None}) for d in [_decision(300 * i, 0.6, 1.0) for i in range(20)]]
    alone, mixed = _aggregated(claimed).summary, _aggregated(claimed + silent).summary
    assert mixed["confidence_gap"] == alone["confidence_gap"]
    assert confidence_line(mixed) == confidence_line(alone)
    assert "beat a random pick 60% of the time, claimed 60% on average" in confidence_line(mixed)


def test_a_gap_over_few_windows_is_not_judged() -> None:
    """Six windows that each overclaim by exactly 0.1 have a zero-width normal interval; six windows are too
    few to call the confidence anything."""
    decisions = [_decision(HORIZON * i + j, 0.6, 1.0 if j < 5 else -1.0) for i in range(6) for j in range(10)]
    line = confidence_line(_aggregated(decisions).summary)
    assert line.endswith("6 outcome windows, too few to tell"), line


def test_the_summary_measures_the_gap_between_claims_and_outcomes_over_windows() -> None:
    """Hits minus claimed confidence, with the windows as units: twelve overclaiming picks in one window
    weigh one window, not twelve."""
    decisions = _lone(0.6, 24) + [_decision(20_000 + day, 0.95, -1.0) for day in range(12)]
    gap = _aggregated(decisions).summary["confidence_gap"]
    hits = np.array([1.0] * 24 + [0.0] * 16 + [0.0] * 12)
    claims = np.array([0.6] * 40 + [0.95] * 12)
    assert gap["mean"] == pytest.approx(float((hits - claims).mean()))
    assert gap["low"] < 0 < gap["high"]
    assert _aggregated(_lone(0.95, 10)).summary["confidence_gap"]["high"] < 0


def test_the_confidence_line_says_which_way_the_claims_miss() -> None:
    assert confidence_line(_aggregated(_lone(0.95, 10)).summary) == (
        "picks beat a random pick 25% of the time, claimed 95% on average (-0.700, 95% CI -0.840..-0.560): "
        "over-confident, the picks win less often than claimed")
    assert confidence_line(_aggregated(_lone(0.55, 36)).summary).endswith(
        "under-confident, the picks win more often than claimed")
    assert confidence_line(_aggregated(_lone(0.65, 27)).summary).endswith("consistent, no gap clear of noise")
    one_window = [_decision(day, 0.75, 1.0) for day in range(5)]
    assert confidence_line(_aggregated(one_window).summary).endswith("1 outcome window, too few to tell")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60),
       st.randoms(use_true_random=False))
def test_the_confidence_checks_do_not_depend_on_the_order_of_the_decisions(picks, rnd) -> None:
    decisions = [_decision(day, confidence, 1.0 if win else -1.0) for day, confidence, win in picks]
    shuffled = list(decisions)
    rnd.shuffle(shuffled)
    first, second = _aggregated(decisions), _aggregated(shuffled)
    assert [r["confidence_check"] for r in first.calibration] == [r["confidence_check"] for r in second.calibration]
    for key in ("mean", "low", "high"):
        assert first.summary["confidence_gap"][key] == pytest.approx(second.summary["confidence_gap"][key])


def test_an_edge_over_three_windows_needs_students_t_to_be_called_reliable() -> None:
    """Three windows whose edges are +1.0, +0.2 and +0.6: the normal interval (0.15..1.05) clears zero, Student's
    t with two degrees of freedom (-0.39..1.59) does not. A user's short history must not be told it has a
    reliable edge on three outcome windows of this spread."""
    decisions = [_decision(HORIZON * 3 * i, 0.6, edge) for i, edge in enumerate((1.0, 0.2, 0.6))]
    result = _aggregated(decisions)
    edge = result.summary["chosen_minus_random"]
    assert edge["mean"] == pytest.approx(0.6) and edge["low"] == pytest.approx(0.6 - 4.302653 * 0.4 / math.sqrt(3))
    assert not result.reliable_edge and result.verdict.startswith("no config has a reliable edge here")


def test_each_confidence_falls_in_one_bin_by_its_lower_edge_and_none_in_no_bin() -> None:
    confidences = [0.0, 0.49, 0.5, 0.6, 0.69999, 0.9, 0.99, 1.0, None, float("nan")]
    decisions = [_decision(HORIZON * 2 * i, c, 1.0) for i, c in enumerate(confidences)]
    counts = {row["bin"]: row["decisions"] for row in _aggregated(decisions).calibration}
    assert counts == {"0.0-0.5": 2, "0.5-0.6": 1, "0.6-0.7": 2, "0.7-0.8": 0, "0.8-0.9": 0, "0.9-1.0": 3}


def test_one_crowded_episode_is_no_reliable_edge_however_many_decisions_it_holds() -> None:
    """200 winning decisions inside one outcome window and eleven lone ones that break even: twelve windows,
    but about one window's worth of evidence (Kish 1.1). Weighting windows by their decisions and counting
    degrees of freedom by windows called this a reliable edge of +0.95 (0.83..1.06)."""
    decisions = [_decision(day % 60, 0.6, 1.0) for day in range(200)]
    decisions += [_decision(1000 + HORIZON * i, 0.6, 0.1 if i % 2 else -0.1) for i in range(11)]
    result = _aggregated(decisions)
    assert result.summary["independent_blocks"] == 12
    assert not result.reliable_edge and result.verdict.startswith("no config has a reliable edge here")
    assert confidence_line(result.summary).endswith("too few to tell")
    # Under two effective windows there is no interval to give, as with one window: n/a, not +-6e9.
    assert result.summary["chosen_minus_random"]["low"] is None and "(95% CI n/a..n/a)" in result.verdict


def test_a_huge_window_beside_one_lone_decision_gives_no_interval_rather_than_nan() -> None:
    """Kish 1.005, which rounds to 1.0: Student's t with zero degrees of freedom is NaN, and the JSON output
    would carry a bare NaN."""
    decisions = [_decision(day % 60, 0.6, 1.0) for day in range(450)] + [_decision(1000, 0.6, -1.0)]
    result = _aggregated(decisions)
    edge = result.summary["chosen_minus_random"]
    assert edge["mean"] == pytest.approx(449 / 451) and edge["low"] is None and edge["high"] is None
    assert "nan" not in result.verdict.lower()
    json.dumps(result.as_dict(), allow_nan=False)
