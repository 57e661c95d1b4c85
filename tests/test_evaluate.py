"""metaspace evaluate: replaying decisions against a random pick, the oracle and the best-so-far config, on
real PostgreSQL; and suggest_configs_v2, the ranking it replays."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from conftest import assert_same_answer
from psycopg import sql
from psycopg.conninfo import make_conninfo

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.evaluation import NO_EDGE, _decide
from metaspace.evidence import confidence_line
from metaspace.sample import write_runs
from metaspace.store.connection import connect
from metaspace.store.evaluation import DecisionPoint

START = dt.date(2012, 1, 2)
CONFIGS = ("TREND", "REVERT", "FLAT", "LEVER")
WINDOW = 28  # days from a decision to its outcome's as_of_date


def _history(seed: int, *, signal: bool, dates: int = 90, shift: int = 0) -> list[dict]:
    """Four configs tried together every week in one market: with ``signal``, TREND wins when the trailing
    trend is up and REVERT when it is down; without it, every outcome is noise around a shared shock."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(dates):
        decision = START + dt.timedelta(days=7 * (i + shift))
        trend = float(rng.choice([-1, 1]) * rng.uniform(0.2, 2.0))
        env = {"trend": round(trend, 4), "realized_vol": round(float(rng.uniform(0.1, 0.3)), 4),
               "universe": {"market": "X"}}
        shock = float(rng.normal(0.0, 1.0))
        for config in CONFIGS:
            edge = 0.0
            if signal:
                edge = 1.5 * ((config == "TREND") == (trend > 0)) if config in ("TREND", "REVERT") else 0.3
            value = shock + edge + float(rng.normal(0.0, 0.3 if signal else 1.0))
            records.append({
                "run_id": f"R{seed}_{i + shift:04d}_{config}", "config_id": config, "strategy_id": config,
                "as_of_date": (decision + dt.timedelta(days=WINDOW)).isoformat(),
                "test_start": (decision + dt.timedelta(days=1)).isoformat(),
                "config": {"family": config.lower(), "lookback": 20 + CONFIGS.index(config)},
                "env": env, "outcome": {"sharpe": round(value, 4)}})
    return records


def _load(url: str, records: list[dict], tmp_path: Path, name: str = "runs.jsonl") -> None:
    pipeline.import_runs([str(write_runs(records, tmp_path / name))], database_url=url)
    pipeline.embed_runs(database_url=url)


def _loaded_database(server_url: str, template_url: str, records: list[dict], tmp_path: Path):
    """A database of its own (from the migrated template) holding ``records``, embedded; dropped after."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(psycopg.conninfo.conninfo_to_dict(template_url)["dbname"])))
    url = make_conninfo(server_url, dbname=name)
    _load(url, records, tmp_path)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def signal_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory):
    """A history with a real edge (90 weekly decisions), shared by the module's read-only tests."""
    yield from _loaded_database(server_url, template_url, _history(1, signal=True), tmp_path_factory.mktemp("signal"))


# -- the numbers of one decision ------------------------------------------------------------------


@pytest.mark.parametrize(("chosen", "higher", "regret"), [
    ("C", True, 0.0), ("B", True, 1.0), ("A", True, 2.0),
    ("A", False, 0.0), ("B", False, 1.0), ("C", False, 2.0),
])
def test_regret_is_zero_at_the_oracle_and_one_at_a_random_pick(chosen: str, higher: bool, regret: float) -> None:
    point = DecisionPoint(dt.date(2020, 3, 31), "k", "run", ("A", "B", "C"), (1.0, 2.0, 3.0))
    decision = _decide(point, dt.date(2020, 1, 1), {"config_id": chosen, "deflated_confidence": 0.7}, "A", higher)
    assert decision.random == 2.0
    assert decision.oracle == (3.0 if higher else 1.0)
    assert decision.chosen == {"A": 1.0, "B": 2.0, "C": 3.0}[chosen]
    assert decision.regret == pytest.approx(regret)
    assert decision.baseline == 1.0 and decision.configs == 3


def test_a_decision_without_a_pick_has_no_regret() -> None:
    point = DecisionPoint(dt.date(2020, 3, 31), "k", "run", ("A", "B"), (1.0, 2.0))
    decision = _decide(point, dt.date(2020, 1, 1), None, None, True)
    assert decision.chosen is None and decision.regret is None and decision.baseline == 1.5


# -- the replay -----------------------------------------------------------------------------------


def test_each_decision_ranks_only_the_configs_tried_there(signal_db: str) -> None:
    result = metaspace.evaluate(database_url=signal_db)
    assert result.horizon == WINDOW  # inferred: as_of_date - test_start (27 days) plus the decision day
    assert result.evaluated == result.decision_points == 90
    for decision in result.decisions:
        assert decision.configs == 4
        assert decision.chosen_config in (*CONFIGS, None)
        day = dt.date.fromisoformat(decision.as_of_date) - dt.timedelta(days=WINDOW)
        assert decision.decision_date == day.isoformat()
        if decision.chosen is not None:
            assert decision.oracle >= decision.chosen and decision.oracle >= decision.random


def test_evaluate_finds_the_edge_a_history_really_has(signal_db: str) -> None:
    result = metaspace.evaluate(database_url=signal_db)
    s = result.summary
    assert result.reliable_edge and not result.verdict.startswith(NO_EDGE)
    assert s["chosen_minus_random"]["low"] > 0
    assert s["chosen"]["mean"] > s["baseline"]["mean"]
    assert s["regret"]["mean"] < 0.5
    confident = [row for row in result.calibration if row["low"] >= 0.8 and row["decisions"]]
    assert confident and all(row["beats_random"] >= 0.7 for row in confident)


def test_a_history_of_pure_noise_has_no_reliable_edge(db_url: str, tmp_path: Path) -> None:
    _load(db_url, _history(2, signal=False, dates=120), tmp_path)
    result = metaspace.evaluate(database_url=db_url)
    assert not result.reliable_edge
    assert result.verdict.startswith(NO_EDGE)


def _steady_history(seed: int, dates: int = 120) -> list[dict]:
    """Four configs tried together every week under a shared shock; STEADY earns 0.4 more than the others in
    every environment, and the environment says nothing about which config wins."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(dates):
        decision = START + dt.timedelta(days=7 * i)
        env = {"trend": round(float(rng.normal()), 4), "realized_vol": round(float(rng.uniform(0.1, 0.3)), 4)}
        shock = float(rng.normal(0.0, 1.0))
        for config in ("STEADY", *CONFIGS[1:]):
            value = shock + (0.4 if config == "STEADY" else 0.0) + float(rng.normal(0.0, 1.5))
            records.append({
                "run_id": f"S{seed}_{i:04d}_{config}", "config_id": config, "strategy_id": config,
                "as_of_date": (decision + dt.timedelta(days=WINDOW)).isoformat(),
                "test_start": (decision + dt.timedelta(days=1)).isoformat(),
                "config": {"family": config.lower()}, "env": env, "outcome": {"sharpe": round(value, 4)}})
    return records


def test_a_config_that_wins_everywhere_is_suggested_even_from_a_noisy_neighbourhood(db_url: str,
                                                                                    tmp_path: Path) -> None:
    """v2 judged each config only by its few neighbouring environments, so a small edge that holds everywhere
    was drowned by their noise; v4 starts from each config's record over the history known at the date."""
    _load(db_url, _steady_history(5), tmp_path)
    result = metaspace.evaluate(since=START + dt.timedelta(days=7 * 60), neighbours=40, database_url=db_url)
    picks = [d.chosen_config for d in result.decisions if d.chosen_config is not None]
    assert len(picks) >= 50
    assert picks.count("STEADY") / len(picks) >= 0.8


def test_without_test_start_evaluate_decides_from_the_runs_before_each_day_and_says_so(db_url: str,
                                                                                      tmp_path: Path) -> None:
    """It asked for --horizon in terms of test_start, which an ML history does not have (issue 27)."""
    records = [{k: v for k, v in r.items() if k != "test_start"} for r in _history(3, signal=True, dates=12)]
    _load(db_url, records, tmp_path)
    result = metaspace.evaluate(database_url=db_url)
    assert result.horizon == 1 and any("no outcome window" in note for note in result.notes)
    assert metaspace.evaluate(horizon=WINDOW, database_url=db_url).horizon == WINDOW


@pytest.mark.parametrize("weeks", [40, 70])
def test_evaluate_as_of_a_date_never_depends_on_later_runs(db_url: str, tmp_path: Path, weeks: int) -> None:
    _load(db_url, _history(4, signal=True, dates=80), tmp_path)
    until = START + dt.timedelta(days=7 * weeks)
    before = metaspace.evaluate(until=until, database_url=db_url).as_dict()
    # Later runs with extreme outcomes: new decisions after the date, in the same environments as earlier ones.
    later = _history(4, signal=True, dates=30, shift=90)
    for record in later:
        record["outcome"]["sharpe"] = 50.0 if record["config_id"] == "FLAT" else -50.0
    _load(db_url, later, tmp_path, "later.jsonl")
    after = metaspace.evaluate(until=until, database_url=db_url).as_dict()
    assert before["decisions"]
    for result in (before, after):
        result.pop("seconds")
    # every decision, pick and count exactly; floats within 1e-12 (on Citus a sum meets the shards' partial sums
    # in whatever order they arrive, which more rows can change in the last bit)
    assert_same_answer(after, before)
    assert metaspace.evaluate(database_url=db_url).evaluated > before["evaluated"]


def test_since_and_sample_choose_the_decisions(signal_db: str) -> None:
    since = START + dt.timedelta(days=7 * 50)
    result = metaspace.evaluate(since=since, database_url=signal_db)
    assert result.evaluated == 40 and min(d.decision_date for d in result.decisions) >= since.isoformat()
    sampled = metaspace.evaluate(since=since, sample=10, database_url=signal_db)
    assert sampled.evaluated == 10 and sampled.decision_points == 40
    assert {d.as_of_date for d in sampled.decisions} <= {d.as_of_date for d in result.decisions}


def test_v1_can_be_replayed_for_comparison(signal_db: str) -> None:
    result = metaspace.evaluate(ranking="v1", min_runs=1, database_url=signal_db)
    assert result.ranking == "v1" and result.picked > 0


# -- the command ----------------------------------------------------------------------------------


def test_cli_evaluate_json_and_reliability_plot(signal_db: str, tmp_path: Path) -> None:
    plot = tmp_path / "reliability.png"
    result = CliRunner().invoke(cli, ["--database-url", signal_db, "evaluate", "--format", "json", "--plot",
                                      str(plot)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    expected = json.loads(json.dumps(metaspace.evaluate(database_url=signal_db).as_dict()))
    assert answer == expected | {"seconds": answer["seconds"]}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_table_ends_with_the_verdict(signal_db: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", signal_db, "evaluate", "--since", "2012-06-01"])
    assert result.exit_code == 0, result.output
    assert "verdict: " in result.output.splitlines()[-1]
    expected = metaspace.evaluate(since="2012-06-01", database_url=signal_db)
    summary, overfit = expected.summary, expected.summary["pbo"]
    assert overfit["pbo"] is not None and overfit["configs"] >= 2
    assert (f"probability of backtest overfitting (choosing a config by its record; CSCV, {overfit['partitions']} "
            f"partitions of whole outcome windows, the {overfit['configs']} configs tried in every one, "
            f"{overfit['splits']:,} splits): {overfit['pbo']:.2f}" in result.output)
    assert f"confidence against outcomes: {confidence_line(summary)}" in result.output
    lines = result.output.splitlines()
    for row in (r for r in expected.calibration if r["decisions"]):
        shown = next(line for line in lines if line.startswith(row["bin"] + " "))
        assert shown.rstrip().endswith(row["confidence_check"]), shown
    assert "Example:" in CliRunner().invoke(cli, ["evaluate", "--help"]).output


def test_cli_evaluate_bad_objective_lists_the_keys(signal_db: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", signal_db, "evaluate", "--objective", "sharp"])
    assert result.exit_code == 1 and "outcome.sharpe" in result.output


# -- suggest_configs_v2 ---------------------------------------------------------------------------


def _env(conn: psycopg.Connection, run_id: str):
    return conn.execute("SELECT vector FROM historical_db.run_vectors_v1 WHERE space = 'env' AND run_id = %s",
                        (run_id,)).fetchone()[0]


def test_suggest_v2_ranks_only_eligible_configs_and_counts_environments(signal_db: str) -> None:
    with connect(signal_db, autocommit=True) as conn:
        env = _env(conn, "R1_0080_TREND")
        rows = conn.execute(
            "SELECT config_id, environments, runs, candidates, deflated_confidence FROM "
            "historical_db.suggest_configs_v2(%s, 10, as_of => '2013-06-01', eligible_configs => ARRAY['FLAT', 'TREND'])",
            (env,)).fetchall()
        assert {r[0] for r in rows} == {"FLAT", "TREND"}
        assert all(r[3] == 2 and r[1] <= r[2] and 0 <= r[4] <= 1 for r in rows)
        everything = conn.execute("SELECT count(*) FROM historical_db.suggest_configs_v2(%s, 10)", (env,)).fetchone()
        assert everything[0] == 4


_BAD_SUGGEST_ARGUMENTS = [
    ("encoder_version => 99", psycopg.errors.ObjectNotInPrerequisiteState, "version 99 was asked for, but version 1"),
    ("eligible_configs => ARRAY[]::text[]", psycopg.errors.InvalidParameterValue, "eligible_configs"),
    ("min_runs => 0", psycopg.errors.InvalidParameterValue, "min_runs"),
    ("objective => ''", psycopg.errors.InvalidParameterValue, "not an outcome key"),
]


@pytest.mark.parametrize(("function", "arguments", "error", "message"), [
    *(("suggest_configs_v2", *case) for case in _BAD_SUGGEST_ARGUMENTS),
    *(("suggest_configs_v4", *case) for case in _BAD_SUGGEST_ARGUMENTS),
    ("suggest_configs_v4", "history => 0", psycopg.errors.InvalidParameterValue, "history must be 1 or more runs"),
    ("suggest_configs_v4", "horizon => 0", psycopg.errors.InvalidParameterValue, "horizon must be 1 or more days"),
    *(("suggest_configs", *case) for case in _BAD_SUGGEST_ARGUMENTS),
    ("suggest_configs", "history => 0", psycopg.errors.InvalidParameterValue, "history must be 1 or more runs"),
    ("suggest_configs", "horizon => 0", psycopg.errors.InvalidParameterValue, "horizon must be 1 or more days"),
    ("suggest_configs", "local_scale => 2", psycopg.errors.InvalidParameterValue, "local_scale must be between"),
    ("suggest_configs", "objective => 'sharp'", psycopg.errors.InvalidParameterValue, "sharp: no run reports it"),
])
def test_suggest_checks_its_arguments(signal_db: str, function: str, arguments: str, error, message: str) -> None:
    with connect(signal_db, autocommit=True) as conn, pytest.raises(error, match=message):
        conn.execute(f"SELECT * FROM historical_db.{function}(%s, 3, {arguments})", (_env(conn, "R1_0010_TREND"),))


# -- suggest_configs_v4 ---------------------------------------------------------------------------


def _v4(conn: psycopg.Connection, env, **arguments) -> dict[str, dict]:
    named = "".join(f", {name} => %({name})s" for name in arguments)
    cursor = conn.execute(f"SELECT * FROM historical_db.suggest_configs_v4(%(env)s, 10{named})",
                          {"env": env} | arguments)
    columns = [d.name for d in cursor.description]
    return {row[0]: dict(zip(columns, row)) for row in cursor.fetchall()}


def test_suggest_v4_record_reads_the_latest_history_runs_known_at_the_date(signal_db: str) -> None:
    with connect(signal_db, autocommit=True) as conn:
        env = _env(conn, "R1_0080_TREND")
        every = _v4(conn, env, as_of=dt.date(2013, 6, 1), history=None)
        latest = _v4(conn, env, as_of=dt.date(2013, 6, 1), history=4)   # the last date: its 4 configs
        weekly = _v4(conn, env, as_of=dt.date(2013, 6, 1), history=None, horizon=7)
    known = sum(1 for i in range(90) if START + dt.timedelta(days=7 * i + WINDOW) <= dt.date(2013, 6, 1))
    assert set(every) == set(CONFIGS)
    assert all(row["history_blocks"] == 1 for row in latest.values())
    assert all(row["history_blocks"] == known for row in weekly.values())   # a block a week: one per date
    assert all(every[c]["history_blocks"] < known for c in CONFIGS)          # a block a 28-day window
    assert all(0 <= row["local_weight"] <= 1 and 0 < row["deflated_confidence"] < 1 for row in every.values())
    # the records: each config's mean relative objective over its blocks, from the runs themselves
    assert every["TREND"]["history_objective"] != latest["TREND"]["history_objective"]


def test_suggest_answers_when_most_neighbours_share_the_query_environment(signal_db: str) -> None:
    """Four of seven neighbours at distance 0 made v2's kernel bandwidth (the median distance) 1e-9, and the
    weight of every other neighbour underflowed: "value out of range: underflow" instead of an answer."""
    with connect(signal_db, autocommit=True) as conn:
        env = _env(conn, "R1_0080_TREND")
        rows = _v4(conn, env, neighbours=7, min_runs=1)
    assert set(rows) == set(CONFIGS)
    env_record = next(r for r in _history(1, signal=True) if r["run_id"] == "R1_0080_TREND")["env"]
    [answer] = metaspace.suggest([env_record], k=4, neighbours=7, min_runs=1, database_url=signal_db)
    assert {row["config_id"] for row in answer} == set(CONFIGS)


def _three_and_a_loner(seed: int = 9, weeks: int = 40) -> list[dict]:
    """A is 0.4 better than B, C 5 worse, all run together every week under a shared shock; D runs alone in
    an environment of its own each week, so it never has a record."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(weeks):
        decision = START + dt.timedelta(days=7 * i)
        env = {"trend": round(float(rng.normal()), 4), "realized_vol": round(float(rng.uniform(0.1, 0.3)), 4)}
        shock = float(rng.normal())
        for config, edge in (("A", 0.4), ("B", 0.0), ("C", -5.0), ("D", 0.0)):
            records.append({
                "run_id": f"T{i:04d}_{config}", "config_id": config, "strategy_id": config,
                "as_of_date": (decision + dt.timedelta(days=WINDOW)).isoformat(),
                "test_start": (decision + dt.timedelta(days=1)).isoformat(), "config": {"name": config},
                "env": {**env, "solo": 1} if config == "D" else env,
                "outcome": {"sharpe": round(shock + edge + float(rng.normal(0.0, 0.1)), 4)}})
    return records


@pytest.fixture(scope="module")
def loner_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory):
    yield from _loaded_database(server_url, template_url, _three_and_a_loner(), tmp_path_factory.mktemp("loner"))


def test_suggest_v4_judges_the_local_result_and_the_record_against_the_same_configs(loner_db: str) -> None:
    """The local result was measured against every config run in the environment (C included) and the record
    against the candidates only: the offset between them looked like an environment effect (local_weight
    0.99 with eligible A and B, 0.00 with A, B and C)."""
    with connect(loner_db, autocommit=True) as conn:
        env = _env(conn, "T0039_A")
        two = _v4(conn, env, eligible_configs=["A", "B"], exact=True)
        three = _v4(conn, env, eligible_configs=["A", "B", "C"], exact=True)
    for rows in (two, three):
        assert all(row["local_weight"] < 0.5 for row in rows.values())
        for row in rows.values():  # the same yardstick: nothing here depends on the environment
            assert row["relative_objective"] == pytest.approx(row["history_objective"], abs=0.15)
    assert two["A"]["history_objective"] == pytest.approx(0.2, abs=0.1)
    assert list(two) == ["A", "B"] and list(three) == ["A", "B", "C"]


def test_suggest_v4_a_config_without_a_record_leaves_the_others_weights_alone(loner_db: str) -> None:
    with connect(loner_db, autocommit=True) as conn:
        env = _env(conn, "T0039_A")
        without = _v4(conn, env, eligible_configs=["A", "B", "C"], exact=True, neighbours=200)
        with_loner = _v4(conn, env, eligible_configs=["A", "B", "C", "D"], exact=True, neighbours=200)
    assert with_loner["D"]["history_blocks"] == 0
    for config in ("A", "B", "C"):
        assert with_loner[config]["local_weight"] == pytest.approx(without[config]["local_weight"], abs=0.1)


def test_suggest_v4_history_keeps_whole_dates_whatever_the_run_ids(loner_db: str) -> None:
    """history => 2 once kept two of the last date's three runs, chosen by how their run_ids sort."""
    with connect(loner_db, autocommit=True) as conn:
        rows = _v4(conn, _env(conn, "T0039_A"), eligible_configs=["A", "B", "C"], exact=True, history=2)
    assert all(row["history_blocks"] == 1 for row in rows.values())
