"""suggest_configs' calibration (version 5's, kept by version 6): fitted on past decisions only, monotone,
choosing the record where the neighbourhood stopped predicting, and what evaluate measures is what the SQL
answers. np.interp is the tests' oracle of a map (linear between the knots, flat beyond); the product applies
maps in SQL only (historical_db.calibrated_confidence_v1)."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from conftest import assert_same_answer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_evaluate import START, WINDOW, _history, _load, _loaded_database
from test_roles import _login

import metaspace
from metaspace import pipeline
from metaspace.calibration import IDENTITY, Calibration, OnlineCalibration, isotonic_map
from metaspace.cli import cli
from metaspace.errors import MetaspaceError
from metaspace.sample import write_runs
from metaspace.store import migrate
from metaspace.store.connection import connect
from metaspace.store.evaluation import decision_points, picks_at_scales, ranked_eligible

# -- the map ----------------------------------------------------------------------------------------


def test_the_map_reproduces_observed_frequencies_that_rise_with_the_raw_confidence() -> None:
    raw = np.repeat([0.55, 0.65, 0.75, 0.85], 100)
    rates = {0.55: 0.5, 0.65: 0.6, 0.75: 0.62, 0.85: 0.9}
    hits = np.concatenate([np.r_[np.ones(int(rates[x] * 100)), np.zeros(100 - int(rates[x] * 100))]
                           for x in (0.55, 0.65, 0.75, 0.85)])
    knots_from, knots_to = isotonic_map(raw, hits, np.ones_like(raw), prior_strength=0)
    assert knots_from == pytest.approx((0.55, 0.65, 0.75, 0.85))
    assert knots_to == pytest.approx((0.5, 0.6, 0.62, 0.9))


def test_an_over_confident_bin_is_pooled_with_its_neighbour() -> None:
    raw = np.repeat([0.6, 0.8], 50)
    hits = np.r_[np.ones(35), np.zeros(15), np.ones(20), np.zeros(30)]  # 70 percent at 0.6, 40 at 0.8
    knots_from, knots_to = isotonic_map(raw, hits, np.ones_like(raw), prior_strength=0)
    assert knots_to == pytest.approx((0.55,)) and knots_from == pytest.approx((0.7,))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans(), st.floats(0.01, 5.0)), min_size=1, max_size=60),
       st.floats(0.0, 30.0))
def test_the_map_is_monotone_and_stays_between_0_and_1(points, strength) -> None:
    raw, hits, weights = (np.array(column, dtype=float) for column in zip(*points))
    knots_from, knots_to = isotonic_map(raw, hits, weights, prior_strength=strength)
    assert list(knots_from) == sorted(set(knots_from))
    assert all(b >= a for a, b in zip(knots_to, knots_to[1:]))
    assert all(0.0 <= y <= 1.0 for y in knots_to)
    grid = np.linspace(0, 1, 21)
    mapped = [float(np.interp(x, knots_from, knots_to)) for x in grid]
    assert all(b >= a - 1e-12 for a, b in zip(mapped, mapped[1:]))


def test_the_sql_map_is_linear_between_its_knots_and_flat_beyond(conn: psycopg.Connection) -> None:
    knots_from, knots_to = (0.52, 0.6, 0.71, 0.9), (0.4, 0.55, 0.55, 0.8)
    for raw in (0.0, 0.52, 0.55, 0.6, 0.65, 0.71, 0.8, 0.9, 0.95, 1.0):
        (sql_value,) = conn.execute("SELECT historical_db.calibrated_confidence_v1(%s, %s, %s)",
                                    (raw, list(knots_from), list(knots_to))).fetchone()
        assert sql_value == pytest.approx(float(np.interp(raw, knots_from, knots_to)), abs=1e-12)
    assert conn.execute("SELECT historical_db.calibrated_confidence_v1(0.7, NULL, NULL)").fetchone()[0] == 0.7


# -- the online fit ---------------------------------------------------------------------------------


def _add(online: OnlineCalibration, day: dt.date, known: dt.date, gains: np.ndarray, raw: np.ndarray) -> None:
    """A decision, its raw confidences through the map in force (as the replay has SQL apply it)."""
    mapped = np.interp(raw, *online.fitted_map) if online.fitted_map else raw
    online.add(day, known, gains, raw, mapped)


def _feed(online: OnlineCalibration, rng: np.random.Generator, first: dt.date, count: int, *,
          better: int) -> None:
    """``count`` weekly decisions whose picks at local scale index ``better`` gain 0.5 and the others -0.2."""
    for i in range(count):
        day = first + dt.timedelta(days=7 * i)
        gains = np.full(len(online.scales), -0.2) + rng.normal(0, 0.05, len(online.scales))
        gains[better] = 0.5
        _add(online, day, day + dt.timedelta(days=WINDOW), gains, rng.uniform(0.5, 0.9, len(online.scales)))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 200), st.integers(1, 60), st.integers(0, 3))
def test_a_fit_as_of_d_never_depends_on_decisions_realised_after_d(offset: int, later: int, scale: int) -> None:
    day = START + dt.timedelta(days=300 + offset)
    fits = []
    for extra in (0, later):
        online = OnlineCalibration(WINDOW)
        rng = np.random.default_rng(3)
        _feed(online, rng, START, 40 + offset // 7, better=1)
        # decisions realised after day, with extreme gains for whichever scale
        for i in range(extra):
            gains = np.zeros(len(online.scales))
            gains[scale] = 1e6
            _add(online, day, day + dt.timedelta(days=1 + i), gains, np.full(len(online.scales), 0.99))
        fits.append(online.as_of(day))
    assert fits[0] == fits[1]


def test_the_local_scale_follows_which_scale_won_lately() -> None:
    online = OnlineCalibration(WINDOW)
    rng = np.random.default_rng(0)
    _feed(online, rng, START, 60, better=3)  # the neighbourhood helped: v4's full local weight
    assert online.as_of(START + dt.timedelta(days=7 * 60 + WINDOW)).local_scale == 1.0
    _feed(online, rng, START + dt.timedelta(days=7 * 60), 200, better=0)  # then it stopped: the record alone
    assert online.as_of(START + dt.timedelta(days=7 * 260 + WINDOW)).local_scale == 0.0


def _replay_confidences(online: OnlineCalibration, hits: list[bool], raw: list[float]) -> Calibration:
    """Daily decisions, each asking for the calibration in force first (as the replay does), every scale's pick
    at that day's ``raw`` confidence; ``hits``: whether it beat the random pick. Returns the last fit."""
    for i, (hit, confidence) in enumerate(zip(hits, raw)):
        day = START + dt.timedelta(days=i)
        online.as_of(day)
        _add(online, day, day + dt.timedelta(days=1), np.full(len(online.scales), 0.3 if hit else -0.3),
             np.full(len(online.scales), confidence))
    return online.as_of(START + dt.timedelta(days=len(hits) + 1))


def test_the_map_is_used_where_it_has_beaten_the_raw_confidence() -> None:
    online = OnlineCalibration(1)  # over-confident throughout: 0.9 said, half of the picks beat random
    fit = _replay_confidences(online, [i % 2 == 0 for i in range(120)], [0.9] * 120)
    assert fit.settings["map_used"] and fit.settings["map_brier"] < fit.settings["raw_brier"]
    assert np.interp(0.9, fit.confidence_from, fit.confidence_to) < 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_map_is_dropped_where_it_only_adds_noise_to_a_calibrated_confidence(seed: int) -> None:
    """Before, the map fitted on the past was applied however it had fared: where the raw confidence already
    says how often a pick wins, a map fitted on a few effective decisions (recent ones weigh most) only moved
    it around, and made it worse."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.5, 0.95, 400)
    online = OnlineCalibration(1)
    _replay_confidences(online, list(rng.uniform(size=400) < raw), list(raw))
    used = [fit.settings["map_used"] for fit in online.fits]
    assert len(used) > 300 and sum(used) < 0.5 * len(used)  # the two score alike: most dates keep the raw one
    for fit in online.fits:
        assert fit.settings["map_used"] == (fit.settings["map_brier"] < fit.settings["raw_brier"])
        if not fit.settings["map_used"]:
            assert fit.confidence_from == (0.0, 1.0) == fit.confidence_to


def test_no_calibration_before_enough_decisions_are_realised() -> None:
    online = OnlineCalibration(WINDOW)
    _feed(online, np.random.default_rng(0), START, online.min_decisions - 1, better=2)
    assert online.as_of(START + dt.timedelta(days=1000)) is None


# -- against the database ---------------------------------------------------------------------------


def _regime_change(seed: int, weeks: int = 70, steady: float = 0.9, markets: int = 3) -> list[dict]:
    """Four configs a week in each market: for the first 40 weeks TREND wins when the trailing trend is up and
    REVERT when it is down; from then on it is the other way round, while STEADY earns 0.9 everywhere: for
    the weeks after the change, the neighbourhood (most of it from before) says the opposite of what
    happens, and the record (STEADY) holds."""
    rng = np.random.default_rng(seed)
    records = []
    for market in range(markets):
        for i in range(weeks):
            decision = START + dt.timedelta(days=7 * i)
            trend = float(rng.choice([-1, 1]) * rng.uniform(0.2, 2.0))
            env = {"trend": round(trend, 4), "realized_vol": round(float(rng.uniform(0.1, 0.3)), 4),
                   "universe": {"market": f"M{market}"}}
            shock = float(rng.normal(0.0, 1.0))
            for config in ("TREND", "REVERT", "STEADY", "FLAT"):
                follows = (config == "TREND") == (trend > 0)
                edge = {"STEADY": steady, "FLAT": 0.0}.get(config, 1.5 * (follows if i < 40 else not follows))
                records.append({
                    "run_id": f"G{seed}_{market}_{i:04d}_{config}", "config_id": config, "strategy_id": config,
                    "as_of_date": (decision + dt.timedelta(days=WINDOW)).isoformat(),
                    "test_start": (decision + dt.timedelta(days=1)).isoformat(),
                    "config": {"family": config.lower()}, "env": env,
                    "outcome": {"sharpe": round(shock + edge + float(rng.normal(0.0, 0.3)), 4)}})
    return records


@pytest.fixture(scope="module")
def signal_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory):
    """The 90-week signal history of test_evaluate, in a database of this module's own (it stores calibrations)."""
    yield from _loaded_database(server_url, template_url, _history(1, signal=True), tmp_path_factory.mktemp("sig"))


@pytest.fixture(scope="module")
def regime_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory):
    yield from _loaded_database(server_url, template_url, _regime_change(5), tmp_path_factory.mktemp("regime"))


def _last_fit(url: str) -> tuple:
    with connect(url) as conn:
        return conn.execute("SELECT local_scale, fitted_until FROM historical_db.suggest_calibrations "
                            "ORDER BY fitted_until DESC LIMIT 1").fetchone()


def test_v5_keeps_the_neighbourhood_where_it_predicts(signal_db: str) -> None:
    result = metaspace.evaluate(save_calibration=True, horizon=WINDOW, database_url=signal_db)
    assert result.ranking == "v5" and result.reliable_edge
    assert _last_fit(signal_db)[0] > 0
    assert result.summary["chosen"]["mean"] > result.summary["baseline"]["mean"]


def test_v5_leans_on_the_record_where_the_neighbourhood_turned_anti_predictive(regime_db: str) -> None:
    since = (START + dt.timedelta(days=7 * 45)).isoformat()
    v4 = metaspace.evaluate(database_url=regime_db, since=since, ranking="v4")
    v5 = metaspace.evaluate(save_calibration=True, horizon=WINDOW, database_url=regime_db, since=since)
    assert _last_fit(regime_db)[0] < 1.0  # less of the neighbourhood than v4 lets through
    assert v5.summary["chosen"]["mean"] > v4.summary["chosen"]["mean"]


def test_a_plain_evaluate_measures_what_suggest_answers_once_calibrations_are_stored(db_url: str,
                                                                                     tmp_path: Path) -> None:
    """Before this, evaluate's default replayed v4 while suggest answered with the stored calibrations: a
    user saw one policy's figures and acted on another's."""
    _load(db_url, _regime_change(5), tmp_path)
    since = (START + dt.timedelta(days=7 * 45)).isoformat()
    before = metaspace.evaluate(database_url=db_url, since=since)
    assert any("no calibration of outcome.sharpe is stored" in note for note in before.notes)
    v5 = metaspace.evaluate(save_calibration=True, horizon=WINDOW, database_url=db_url, since=since)
    after = metaspace.evaluate(database_url=db_url, since=since, horizon=WINDOW)
    assert after.ranking == "suggest" and any("stored calibrations of outcome.sharpe" in n for n in after.notes)
    assert [d.chosen_config for d in after.decisions] == [d.chosen_config for d in v5.decisions]
    assert [d.confidence for d in after.decisions] == pytest.approx([d.confidence for d in v5.decisions], abs=1e-9)
    assert after.summary["chosen"]["mean"] == pytest.approx(v5.summary["chosen"]["mean"])
    assert after.summary["chosen"]["mean"] != pytest.approx(before.summary["chosen"]["mean"])
    sampled = metaspace.evaluate(database_url=db_url, since=since, sample=8, seed=3, horizon=WINDOW)  # no replay
    chosen = {(d.as_of_date, d.random, d.oracle): d.chosen_config for d in v5.decisions}  # one per point
    assert len(chosen) == len(v5.decisions) and len(sampled.decisions) == 8
    assert [d.chosen_config for d in sampled.decisions] == [chosen[d.as_of_date, d.random, d.oracle]
                                                            for d in sampled.decisions]
    # suggest says when the calibration it applies was measured on a replay asked otherwise
    env = _regime_change(5)[-1]["env"]
    with warnings.catch_warnings(record=True) as same:
        warnings.simplefilter("always")
        metaspace.suggest(env, database_url=db_url)  # as suggest is asked by default
    assert not [w for w in same if "other settings" in str(w.message)]
    with pytest.warns(UserWarning, match=r"other settings \(neighbours 1000 there, 50 here\)"):
        metaspace.suggest(env, neighbours=50, database_url=db_url)


def test_calibrations_stored_for_a_date_never_depend_on_runs_dated_after_it(db_url: str, empty_db: str,
                                                                           tmp_path: Path) -> None:
    """Found in review: with the horizon inferred from every run, later runs with a longer outcome window moved
    every decision date of the replay, and so the calibrations stored for earlier dates (0.591 against 0.431 for
    the same answer as of D). Now --save-calibration needs the horizon; given, the runs after D change nothing
    stored for D or before, nor an answer as of D."""
    history = _history(1, signal=True, dates=90)
    day = dt.date.fromisoformat(history[len(history) * 2 // 3]["as_of_date"])
    early = [r for r in history if dt.date.fromisoformat(r["as_of_date"]) <= day]
    late = [dict(r, run_id=f"L{r['run_id']}", test_start=(dt.date.fromisoformat(r["as_of_date"])
                                                          - dt.timedelta(days=90)).isoformat())
            for r in history if dt.date.fromisoformat(r["as_of_date"]) > day]
    migrate.upgrade(empty_db)
    stored, answers = [], []
    for url, records in ((db_url, early), (empty_db, early + late)):
        pipeline.import_runs([str(write_runs(records, tmp_path / f"{len(records)}.jsonl"))], database_url=url)
        pipeline.embed_runs(database_url=url, fit_until=day.isoformat())
        with pytest.raises(MetaspaceError, match="--save-calibration needs --horizon"):
            metaspace.evaluate(save_calibration=True, database_url=url)
        metaspace.evaluate(save_calibration=True, horizon=WINDOW, database_url=url)
        with connect(url) as conn:
            stored.append(conn.execute(
                "SELECT fitted_until, local_scale, confidence_from, confidence_to, decisions "
                "FROM historical_db.suggest_calibrations WHERE fitted_until <= %s ORDER BY 1", (day,)).fetchall())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            [answer] = metaspace.suggest([early[-1]["env"]], k=4, as_of=day.isoformat(), database_url=url)
        answers.append([(r["config_id"], r["deflated_confidence"], r["calibrated_until"]) for r in answer])
    # Equal but for the order of a floating-point sum: with the later runs in the table the planner may
    # aggregate the same rows in another order (PostgreSQL 16 does here), which moves a confidence by one ulp.
    # No later run's value enters: a difference beyond rounding fails.
    assert stored[0] and len(stored[0]) == len(stored[1])
    for before, after in zip(stored[0], stored[1]):
        assert (before[0], before[1], before[4]) == (after[0], after[1], after[4])
        assert np.allclose(before[2], after[2], rtol=1e-12, atol=0) and np.allclose(before[3], after[3], rtol=1e-12,
                                                                                    atol=0)
    assert [(c, u) for c, _, u in answers[0]] == [(c, u) for c, _, u in answers[1]] and answers[0][0][2] is not None
    assert np.allclose([d for _, d, _ in answers[0]], [d for _, d, _ in answers[1]], rtol=1e-12, atol=0)


def _sql_top(conn: psycopg.Connection, point, day: dt.date, **arguments) -> dict:
    env = conn.execute("SELECT vector FROM historical_db.branch_embeddings WHERE run_id = %s AND branch = 'env' "
                       "AND encoder_version = historical_db.active_encoder_version_v1()",
                       (point.env_run_id,)).fetchone()[0]
    cursor = conn.execute(
        "SELECT * FROM historical_db.suggest_configs(%s, k => 4, as_of => %s, eligible_configs => %s"
        + "".join(f", {name} => %s" for name in arguments) + ")",
        (env, day, list(point.configs), *arguments.values()))
    columns = [d.name for d in cursor.description]
    return dict(zip(columns, cursor.fetchone()))


def test_what_evaluate_measured_is_what_suggest_configs_answers(signal_db: str) -> None:
    result = metaspace.evaluate(save_calibration=True, horizon=WINDOW, database_url=signal_db)
    with connect(signal_db) as conn:
        points = {p.as_of_date.isoformat(): p for p in decision_points(conn, ["sharpe"], None)}
        calibrated = 0
        for decision in result.decisions:
            if decision.chosen_config is None:
                continue
            top = _sql_top(conn, points[decision.as_of_date], dt.date.fromisoformat(decision.decision_date))
            assert top["config_id"] == decision.chosen_config, decision
            assert top["deflated_confidence"] == pytest.approx(decision.confidence, abs=1e-9)
            calibrated += top["calibrated_until"] is not None
    assert calibrated > len(result.decisions) // 2


@pytest.mark.parametrize("higher", [True, False])
def test_the_replay_picks_at_every_local_scale_what_suggest_configs_picks_at_it(signal_db: str, higher: bool) -> None:
    with connect(signal_db) as conn:
        for point in decision_points(conn, ["sharpe"], None)[40::10]:
            day = point.as_of_date - dt.timedelta(days=WINDOW)
            picks = picks_at_scales(conn, point, as_of=day, objective="sharpe", higher_is_better=higher,
                                    neighbours=1000, min_runs=3, scales=(0.0, 0.25, 0.5, 1.0))
            assert sorted(picks) == [0.0, 0.25, 0.5, 1.0]
            for scale in (0.0, 0.25, 0.5, 1.0):
                top = _sql_top(conn, point, day, local_scale=scale, calibrated=False, higher_is_better=higher)
                config, raw = picks[scale]
                assert (config, raw) == (top["config_id"], pytest.approx(top["raw_confidence"], abs=1e-12))


@pytest.mark.parametrize("higher", [True, False])
def test_versions_6_and_7_answer_exactly_as_version_5_where_runs_carry_outcome_windows(
        signal_db: str, higher: bool) -> None:
    """Version 6 is version 5 cut into shared parts (and what it says when its answer is empty); version 7
    differs only on a search's history, where no run carries an outcome window."""
    answered = 0
    with connect(signal_db) as conn:
        for point in decision_points(conn, ["sharpe"], None)[::15]:
            for day in (point.as_of_date - dt.timedelta(days=WINDOW), None):
                for scale in (None, 0.25):
                    answers = [conn.execute(
                        f"SELECT * FROM historical_db.suggest_configs_{version}((SELECT vector FROM "
                        "historical_db.branch_embeddings WHERE run_id = %s AND branch = 'env'), k => 20, "
                        "as_of => %s, higher_is_better => %s, local_scale => %s)",
                        (point.env_run_id, day, higher, scale)).fetchall() for version in ("v5", "v6", "v7")]
                    assert_same_answer(answers[1], answers[0])  # (sums' order: floats within 1e-12)
                    assert_same_answer(answers[2], answers[0])
                    answered += bool(answers[0])
    assert answered > 10


def test_without_a_calibration_v5_answers_as_v4_and_says_so(db_url: str, tmp_path: Path) -> None:
    _load(db_url, _history(4, signal=True, dates=40), tmp_path)
    with connect(db_url) as conn:
        point = decision_points(conn, ["sharpe"], None)[-1]
        day = point.as_of_date - dt.timedelta(days=WINDOW)
        v4 = ranked_eligible(conn, point, as_of=day, objective="sharpe", higher_is_better=True, neighbours=1000,
                             min_runs=3, ranking="v4")
        v5 = _sql_top(conn, point, day)
    assert v5["calibrated_until"] is None and v5["local_scale"] == 1.0
    assert_same_answer({k: v5[k] for k in v4[0]}, v4[0])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 80), st.integers(1, 400), st.sampled_from([0.0, 0.25, 0.5]),
       st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
def test_a_calibration_fitted_after_d_never_changes_an_answer_as_of_d(signal_db: str, week: int, after: int,
                                                                      scale: float, targets: list[float]) -> None:
    with connect(signal_db) as conn:
        point = decision_points(conn, ["sharpe"], None)[10 + week % 75]
        day = point.as_of_date - dt.timedelta(days=WINDOW)
        before = _sql_top(conn, point, day)
        later = Calibration(day + dt.timedelta(days=after), scale, tuple(np.linspace(0.01, 0.99, len(targets))),
                            tuple(sorted(targets)), 99)
        with conn.transaction(force_rollback=True):
            conn.execute(
                "INSERT INTO historical_db.suggest_calibrations (objective, higher_is_better, encoder_version, "
                "fitted_until, local_scale, confidence_from, confidence_to, decisions) VALUES "
                "('sharpe', true, historical_db.active_encoder_version_v1(), %s, %s, %s, %s, 99) "
                "ON CONFLICT (objective, higher_is_better, encoder_version, fitted_until) DO UPDATE SET "
                "local_scale = excluded.local_scale, confidence_from = excluded.confidence_from, "
                "confidence_to = excluded.confidence_to",
                (later.fitted_until, later.local_scale, list(later.confidence_from), list(later.confidence_to)))
            assert _sql_top(conn, point, day) == before
            conn.execute(
                "INSERT INTO historical_db.suggest_calibrations (objective, higher_is_better, encoder_version, "
                "fitted_until, local_scale, confidence_from, confidence_to, decisions) VALUES "
                "('sharpe', true, historical_db.active_encoder_version_v1(), %s, 0, '{0.5}', '{0.123}', 99) "
                "ON CONFLICT (objective, higher_is_better, encoder_version, fitted_until) DO UPDATE SET "
                "local_scale = 0, confidence_from = '{0.5}', confidence_to = '{0.123}'", (day,))
            read = _sql_top(conn, point, day)  # one fitted by D is read: the test can see a calibration
            assert (read["deflated_confidence"], read["local_scale"], read["calibrated_until"]) == (0.123, 0.0, day)


def test_save_calibration_needs_v5_and_every_decision(signal_db: str) -> None:
    with pytest.raises(MetaspaceError, match="v5"):
        metaspace.evaluate(save_calibration=True, ranking="v4", database_url=signal_db)
    with pytest.raises(MetaspaceError, match="sample"):
        metaspace.evaluate(ranking="v5", sample=10, database_url=signal_db)


def test_downgrade_keeps_stored_calibrations_unless_told(db_url: str, tmp_path: Path) -> None:
    _load(db_url, _history(6, signal=True, dates=60), tmp_path)
    metaspace.evaluate(save_calibration=True, horizon=WINDOW, database_url=db_url)
    with connect(db_url) as conn:
        stored = conn.execute("SELECT count(*) FROM historical_db.suggest_calibrations").fetchone()[0]
        runs = conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
    assert stored > 0
    with pytest.raises(MetaspaceError, match=f"suggest_calibrations holds {stored}"):
        migrate.downgrade(db_url, "0014_asof_tail")
    migrate.downgrade(db_url, "0014_asof_tail", allow_data_loss=True)
    migrate.upgrade(db_url)
    with connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0] == runs
        assert conn.execute("SELECT count(*) FROM historical_db.suggest_calibrations").fetchone()[0] == 0


def test_a_writer_login_stores_calibrations_and_suggest_then_answers_with_them(server_url: str, db_url: str,
                                                                              tmp_path: Path) -> None:
    records = _history(7, signal=True, dates=50)
    _load(db_url, records, tmp_path)
    env, as_of = records[-1]["env"], records[-1]["as_of_date"]
    with pytest.warns(UserWarning, match="no calibration of outcome.sharpe"):
        before = metaspace.suggest(env=env, k=4, as_of=as_of, objective="sharpe", database_url=db_url)
    assert before and before[0]["calibrated_until"] is None
    logins = _login(server_url, db_url, "metaspace_writer")
    writer = next(logins)
    try:
        result = CliRunner().invoke(cli, ["--database-url", writer, "evaluate", "--save-calibration", "--horizon", str(WINDOW)])
        assert result.exit_code == 0, result.output
        assert "stored" in result.output
    finally:
        next(logins, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = metaspace.suggest(env=env, k=4, as_of=as_of, objective="sharpe", database_url=db_url)
    assert not [w for w in caught if "no calibration" in str(w.message)]
    assert after[0]["calibrated_until"] is not None
    assert dt.date.fromisoformat(as_of) >= after[0]["calibrated_until"]


def test_suggest_says_when_its_calibration_ranks_by_the_records_alone(db_url: str, tmp_path: Path) -> None:
    """With a calibration at local scale 0 the environment asked about only chooses the candidates, which are
    ranked by their records: the answer says so (before, it looked like any other), and not where the
    calibration lets the neighbourhood in."""
    from metaspace.store.evaluation import save_calibrations

    history = _regime_change(5)
    _load(db_url, history, tmp_path)
    record_only, neighbourhood = dt.date(2012, 6, 1), dt.date(2012, 9, 1)
    with connect(db_url, autocommit=True) as conn:
        version = conn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]
        save_calibrations(conn, objective="sharpe", higher_is_better=True, encoder_version=version, fits=[
            Calibration(record_only, 0.0, *IDENTITY, 40, {"neighbours": 1000, "min_runs": 3, "horizon_given": None}),
            Calibration(neighbourhood, 1.0, *IDENTITY, 60, {"neighbours": 1000, "min_runs": 3, "horizon_given": None})])
    trending_up = dict(history[-1]["env"], trend=1.5)
    for day, says in ((record_only, True), (neighbourhood, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            up = metaspace.suggest(trending_up, as_of=day + dt.timedelta(days=10), database_url=db_url)
        said = [str(w.message) for w in caught if "ranked by their records (local scale 0" in str(w.message)]
        assert bool(said) == says, (day, [str(w.message) for w in caught])
        if says:
            assert f"fitted until {day}" in said[0]
        ranked_by_record = sorted(up, key=lambda r: (-r["record_estimate"], r["config_id"]))
        assert ([r["config_id"] for r in up] == [r["config_id"] for r in ranked_by_record]) or not says
        assert all(r["local_scale"] == (0.0 if says else 1.0) for r in up)
