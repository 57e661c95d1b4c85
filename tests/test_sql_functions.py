"""Every argument of the SQL functions has an effect, checked against a brute-force answer computed here
from the stored vectors (numpy) and the stored records: the stable search_runs, neighbours and suggest_configs
(what the CLI calls), and the released suggest_configs_v1, v2 and v4 a pinned client may call, on the module's
sample history (3,000 runs, the default layout)."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import assert_same_answer
from psycopg.types.json import Jsonb

from metaspace.store.connection import connect
from metaspace.store.graphs import INDEX_NAMES, IndexSettings

SPACES = ("joint", "config", "env", "outcome")
SEARCHES = ("search_runs", "neighbours")
PROBE = 17  # the sample run the searches start from


@dataclass
class Stored:
    """The stored vectors of one space (active version), with what the filters look at."""

    run_ids: np.ndarray
    vectors: np.ndarray
    strategies: np.ndarray
    configs: np.ndarray
    dates: np.ndarray
    scopes: list[dict[str, Any]]

    def index(self, run_id: str) -> int:
        return int(np.flatnonzero(self.run_ids == run_id)[0])


@pytest.fixture(scope="module")
def sconn(sample_db: str):
    with connect(sample_db, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def stored(sconn) -> dict[str, Stored]:
    out = {}
    for space in SPACES:
        rows = sconn.execute(
            "SELECT run_id, vector, strategy_id, config_id, as_of_date, entity_scope FROM historical_db.run_vectors_v1 "
            "WHERE space = %s AND encoder_version = historical_db.active_encoder_version_v1() ORDER BY run_id",
            (space,)).fetchall()
        out[space] = Stored(np.array([r[0] for r in rows]), np.stack([r[1].to_numpy() for r in rows]),
                            np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
                            np.array([r[4] for r in rows]), [r[5] for r in rows])
    return out


@pytest.fixture(scope="module")
def probe(sample_history) -> dict:
    return sample_history[PROBE]


def _brute(data: Stored, query: np.ndarray, k: int, *, as_of: dt.date | None = None,
           strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
           scope: dict[str, Any] | None = None, exclude: str | None = None) -> list[tuple[str, float]]:
    """The exact answer: every stored run that passes the filters, nearest first (ties by run_id)."""
    keep = np.ones(len(data.run_ids), dtype=bool)
    if as_of is not None:
        keep &= data.dates <= as_of
    if strategy_ids is not None:
        keep &= np.isin(data.strategies, strategy_ids)
    if config_ids is not None:
        keep &= np.isin(data.configs, config_ids)
    if scope is not None:
        keep &= np.array([all(s.get(key) == value for key, value in scope.items()) for s in data.scopes])
    if exclude is not None:
        keep &= data.run_ids != exclude
    distances = np.linalg.norm(data.vectors.astype(np.float64) - query.astype(np.float64), axis=1)
    chosen = np.flatnonzero(keep)
    order = chosen[np.lexsort((data.run_ids[chosen], distances[chosen]))][:k]
    return [(str(data.run_ids[i]), float(distances[i])) for i in order]


def _call(conn: psycopg.Connection, function: str, first: Any, **arguments: Any) -> list[dict[str, Any]]:
    """Call a search function with PostgreSQL's named arguments, only those given."""
    named = "".join(f", {name} => %({name})s" for name in arguments)
    params = {name: Jsonb(value) if name == "scope" else value for name, value in arguments.items()}
    cursor = conn.execute(f"SELECT * FROM historical_db.{function}(%(first)s{named})", {"first": first} | params)
    columns = [d.name for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _first(function: str, data: Stored, run_id: str) -> Any:
    """What the function is asked about: the run's stored vector (search) or its id (neighbours)."""
    return data.vectors[data.index(run_id)] if function == "search_runs" else run_id


def _expected(function: str, data: Stored, run_id: str, k: int, **filters: Any) -> list[tuple[str, float]]:
    exclude = run_id if function == "neighbours" else None
    return _brute(data, data.vectors[data.index(run_id)], k, exclude=exclude, **filters)


def _assert_same_answer(rows: list[dict[str, Any]], expected: list[tuple[str, float]]) -> None:
    """Same length, same distances in order; runs equal wherever the distance does not tie."""
    assert len(rows) == len(expected)
    assert [r["distance"] for r in rows] == pytest.approx([d for _, d in expected], abs=1e-5)
    truth = dict(expected)
    for row, (run_id, distance) in zip(rows, expected):
        if row["run_id"] != run_id:  # only a tie (to float precision) may swap two runs
            assert truth.get(row["run_id"], np.inf) == pytest.approx(distance, abs=1e-5), row


def _hnsw_scans(conn: psycopg.Connection, space: str) -> int:
    index = INDEX_NAMES[(space, IndexSettings().kind(space))]  # the default layout's graph
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (index,)).fetchone()[0]


# -- search_runs and neighbours --------------------------------------------------------------------------


@pytest.mark.parametrize("function", SEARCHES)
@pytest.mark.parametrize("k", [1, 7, 1000])
def test_search_k_returns_exactly_the_k_nearest_runs(sconn, stored, probe, function, k) -> None:
    data = stored["joint"]
    exact = _call(sconn, function, _first(function, data, probe["run_id"]), k=k, exact=True)
    _assert_same_answer(exact, _expected(function, data, probe["run_id"], k))
    walked = _call(sconn, function, _first(function, data, probe["run_id"]), k=k)
    assert len(walked) == k and [r["distance"] for r in walked] == sorted(r["distance"] for r in walked)


@pytest.mark.parametrize("function", SEARCHES)
@pytest.mark.parametrize("space", SPACES)
def test_search_space_compares_runs_in_that_space_only(sconn, stored, probe, function, space) -> None:
    data = stored[space]
    rows = _call(sconn, function, _first(function, data, probe["run_id"]), k=15, space=space, exact=True)
    _assert_same_answer(rows, _expected(function, data, probe["run_id"], 15))
    other = "env" if space != "env" else "outcome"
    elsewhere = _expected(function, stored[other], probe["run_id"], 15)
    assert {r["run_id"] for r in rows} != {run_id for run_id, _ in elsewhere}


@pytest.mark.parametrize("function", SEARCHES)
def test_search_as_of_keeps_only_runs_dated_on_or_before_it(sconn, stored, probe, function) -> None:
    data = stored["env"]
    as_of = dt.date(2004, 6, 30)
    first = _first(function, data, probe["run_id"])
    rows = _call(sconn, function, first, k=20, space="env", as_of=as_of, exact=True)
    _assert_same_answer(rows, _expected(function, data, probe["run_id"], 20, as_of=as_of))
    walked = _call(sconn, function, first, k=20, space="env", as_of=as_of)
    assert len(walked) == 20 and all(r["as_of_date"] <= as_of for r in walked)
    unfiltered = _call(sconn, function, first, k=20, space="env")
    assert any(r["as_of_date"] > as_of for r in unfiltered)


@pytest.mark.parametrize("function", SEARCHES)
def test_search_strategy_ids_keep_only_those_strategies_runs(sconn, stored, probe, function) -> None:
    data = stored["joint"]
    chosen = ["FX_G10_VOL_TARGET", "US_EQ_MEAN_REVERSION"]
    first = _first(function, data, probe["run_id"])
    rows = _call(sconn, function, first, k=30, strategy_ids=chosen, exact=True)
    _assert_same_answer(rows, _expected(function, data, probe["run_id"], 30, strategy_ids=chosen))
    walked = _call(sconn, function, first, k=30, strategy_ids=chosen)
    assert len(walked) == 30 and {r["strategy_id"] for r in walked} <= set(chosen)
    assert {r["strategy_id"] for r in _call(sconn, function, first, k=30)} - set(chosen)


@pytest.mark.parametrize("function", SEARCHES)
def test_search_config_ids_keep_only_those_configs_runs(sconn, stored, probe, function) -> None:
    data = stored["joint"]
    chosen = ["MEANREV_L5_Z5", "TREND_L250_W_TV15"]
    first = _first(function, data, probe["run_id"])
    rows = _call(sconn, function, first, k=150, config_ids=chosen, exact=True)
    _assert_same_answer(rows, _expected(function, data, probe["run_id"], 150, config_ids=chosen))
    assert {r["config_id"] for r in rows} == set(chosen)
    walked = _call(sconn, function, first, k=25, config_ids=chosen)
    assert len(walked) == 25 and {r["config_id"] for r in walked} <= set(chosen)
    assert {r["config_id"] for r in _call(sconn, function, first, k=25)} - set(chosen)


@pytest.mark.parametrize("function", SEARCHES)
def test_search_scope_keeps_runs_whose_entity_scope_contains_it(sconn, stored, probe, function) -> None:
    data = stored["joint"]
    first = _first(function, data, probe["run_id"])
    scope = {"strategy_id": "CMDTY_VOL_TARGET", "source": "meta-config-env"}
    rows = _call(sconn, function, first, k=12, scope=scope, exact=True)
    _assert_same_answer(rows, _expected(function, data, probe["run_id"], 12, scope=scope))
    assert all(r["entity_scope"].items() >= scope.items() for r in rows)
    assert rows == _call(sconn, function, first, k=12, strategy_ids=["CMDTY_VOL_TARGET"], exact=True)
    assert _call(sconn, function, first, k=12, scope={"source": "elsewhere"}) == []


@pytest.mark.parametrize("function", SEARCHES)
@pytest.mark.parametrize("space", ["joint", "outcome"])
def test_search_exact_is_the_brute_force_answer_and_never_walks_the_graph(sconn, stored, probe, function,
                                                                          space) -> None:
    data = stored[space]
    first = _first(function, data, probe["run_id"])
    before = _hnsw_scans(sconn, space)
    rows = _call(sconn, function, first, k=50, space=space, exact=True)
    assert _hnsw_scans(sconn, space) == before
    _assert_same_answer(rows, _expected(function, data, probe["run_id"], 50))
    _call(sconn, function, first, k=50, space=space, exact=False)
    assert _hnsw_scans(sconn, space) == before + 1


@pytest.mark.parametrize("function", SEARCHES)
def test_search_encoder_version_must_be_the_active_one(sconn, stored, probe, function) -> None:
    data = stored["joint"]
    first = _first(function, data, probe["run_id"])
    active = sconn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]
    assert _call(sconn, function, first, k=5, encoder_version=active) == _call(sconn, function, first, k=5)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as raised:
        _call(sconn, function, first, k=5, encoder_version=active + 1)
    assert raised.value.sqlstate == "55000"
    assert raised.value.diag.message_primary == (f"the query was encoded with encoder version {active + 1}, "
                                                 f"but version {active} is active now")


@pytest.mark.parametrize("function", SEARCHES)
@pytest.mark.parametrize("arguments, message", [
    ({"k": 0}, "k must be between 1 and 1000, got 0"),
    ({"k": 1001}, "k must be between 1 and 1000, got 1001"),
    ({"space": "style"}, "unknown space 'style'"),
])
def test_search_v2_checks_its_arguments(sconn, stored, probe, function, arguments, message) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        _call(sconn, function, _first(function, stored["joint"], probe["run_id"]), **arguments)


# -- suggest_configs_v1 ----------------------------------------------------------------------------


def _value(record: dict, path: list[str]) -> float | None:
    value: Any = record["outcome"]
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _expected_max_normal(n: int) -> float:
    if n <= 1:
        return 0.0
    q = statistics.NormalDist().inv_cdf
    gamma = 0.5772156649015329
    return (1 - gamma) * q(1 - 1 / n) + gamma * q(1 - 1 / (n * np.e))


def _reference_suggest(data: Stored, records: dict[str, dict], env: np.ndarray, *, k: int = 5,
                       as_of: dt.date | None = None, objective: str = "sharpe", higher_is_better: bool = True,
                       neighbours: int = 200, min_runs: int = 3,
                       strategy_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """suggest_configs_v1 as the README states it, in numpy: kernel-weighted objective per config, shrunk
    toward the neighbourhood's mean (empirical Bayes), edge in standard errors, deflated by E[max of N]."""
    direction = 1.0 if higher_is_better else -1.0
    path = objective.removeprefix("outcome.").split(".")
    near = _brute(data, env, neighbours, as_of=as_of, strategy_ids=strategy_ids)
    scored = [(run_id, d, records[run_id].get("config_id") or run_id, _value(records[run_id], path))
              for run_id, d in near]
    scored = [s for s in scored if s[3] is not None]
    h = max(float(np.median([d for _, d, _, _ in scored])), 1e-9)
    groups: dict[str, list[tuple[str, float, float, float]]] = defaultdict(list)
    for run_id, d, config_id, value in scored:
        groups[config_id].append((run_id, d, value, float(np.exp(-0.5 * (d / h) ** 2))))
    stats = {}
    for config_id, members in groups.items():
        values = np.array([m[2] for m in members])
        weights = np.array([m[3] for m in members])
        best = min(members, key=lambda m: (-direction * m[2], m[0]))
        stats[config_id] = {
            "config_id": config_id, "runs": len(members), "mean_distance": float(np.mean([m[1] for m in members])),
            "objective_mean": float(values.mean()),
            "objective_std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "weighted_objective": float((weights * values).sum() / weights.sum()),
            "effective_runs": float(weights.sum() ** 2 / (weights**2).sum()),
            "best_run_id": best[0], "best_objective": best[2],
        }
    all_values = np.array([s[3] for s in scored])
    all_weights = np.array([m[3] for members in groups.values() for m in members])
    all_w_values = np.array([m[2] for members in groups.values() for m in members])
    mean = float((all_weights * all_w_values).sum() / all_weights.sum())
    n, g = len(scored), len(groups)
    within = (sum((m[2] - stats[c]["objective_mean"]) ** 2 for c, ms in groups.items() for m in ms) / (n - g)
              if n > g else None)
    between = float(np.var([s["weighted_objective"] for s in stats.values()], ddof=1)) if g > 1 else None
    typical = float(np.mean([s["effective_runs"] for s in stats.values()]))
    total = float(np.var(all_values, ddof=1)) if n > 1 else None
    within = within if within is not None else total
    floor = 1e-3 * total if total is not None else None
    spread = [x for x in ((between - within / typical) if between is not None else None, floor) if x is not None]
    prior_runs = within / max(spread) if spread and within is not None else 0.0
    kept = [s for s in stats.values() if s["runs"] >= min_runs]
    for s in kept:
        s["score"] = mean + (s["weighted_objective"] - mean) * s["effective_runs"] / (s["effective_runs"] + prior_runs)
        se = np.sqrt(within / s["effective_runs"])
        s["edge_z"] = direction * (s["weighted_objective"] - mean) / se if se else None
        s["deflated_confidence"] = (statistics.NormalDist().cdf(s["edge_z"] - _expected_max_normal(len(kept)))
                                    if s["edge_z"] is not None else None)
        s["candidates"] = len(kept)
    return sorted(kept, key=lambda s: (-direction * s["score"], s["config_id"]))[:k]


SUGGESTS = ("suggest_configs", "suggest_configs_v1", "suggest_configs_v2", "suggest_configs_v4")
EVIDENCE = {"suggest_configs_v1": "runs", "suggest_configs_v2": "environments",  # what min_runs counts
            "suggest_configs_v4": "environments", "suggest_configs": "environments"}


def _suggest(conn: psycopg.Connection, env: np.ndarray, function: str = "suggest_configs_v1",
             **arguments: Any) -> list[dict[str, Any]]:
    named = "".join(f", {name} => %({name})s" for name in arguments)
    cursor = conn.execute(f"SELECT * FROM historical_db.{function}(%(env)s{named})", {"env": env} | arguments)
    columns = [d.name for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _env(stored: dict[str, Stored], run_id: str) -> np.ndarray:
    return stored["env"].vectors[stored["env"].index(run_id)]


@pytest.fixture(scope="module")
def records(sample_history) -> dict[str, dict]:
    return {r["run_id"]: r for r in sample_history}


COMPARED = ("config_id", "runs", "best_run_id", "candidates")
APPROX = ("score", "weighted_objective", "mean_distance", "objective_mean", "objective_std", "best_objective",
          "edge_z", "deflated_confidence")


@pytest.mark.parametrize("arguments", [
    {},
    {"k": 12, "min_runs": 1},
    {"neighbours": 40, "min_runs": 2},
    {"as_of": dt.date(2006, 3, 31)},
    {"objective": "outcome.robustness.worst_third_sharpe"},
    {"objective": "max_drawdown", "higher_is_better": False, "k": 8},
    {"strategy_ids": ["US_EQ_TREND", "FX_G10_MEAN_REVERSION"], "min_runs": 2},
], ids=["defaults", "k-min_runs", "neighbours", "as_of", "nested-objective", "lower-is-better", "strategy_ids"])
def test_suggest_exact_equals_the_documented_computation(sconn, stored, records, probe, arguments) -> None:
    env = _env(stored, probe["run_id"])
    rows = _suggest(sconn, env, exact=True, **arguments)
    expected = _reference_suggest(stored["env"], records, env, **arguments)
    assert rows, arguments
    assert [tuple(r[c] for c in COMPARED) for r in rows] == [tuple(e[c] for c in COMPARED) for e in expected]
    for row, want in zip(rows, expected):
        for column in APPROX:
            assert row[column] == pytest.approx(want[column], rel=1e-4, abs=1e-6), (column, row["config_id"])


@pytest.mark.parametrize("function", SUGGESTS)
def test_suggest_k_caps_the_number_of_configs_best_first(sconn, stored, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    many = _suggest(sconn, env, function, k=1000, min_runs=1, exact=True)
    assert len(many) == many[0]["candidates"] > 10
    assert _suggest(sconn, env, function, k=4, min_runs=1, exact=True) == many[:4]


@pytest.mark.parametrize("function", SUGGESTS)
@pytest.mark.parametrize("neighbours", [10, 200, 1500])
def test_suggest_neighbours_is_how_many_runs_are_taken_as_evidence(sconn, stored, probe, function,
                                                                   neighbours) -> None:
    rows = _suggest(sconn, _env(stored, probe["run_id"]), function, k=1000, min_runs=1, neighbours=neighbours)
    assert sum(r["runs"] for r in rows) == neighbours


@pytest.mark.parametrize("function", SUGGESTS)
def test_suggest_min_runs_drops_configs_with_less_evidence(sconn, stored, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    evidence = EVIDENCE[function]
    every = _suggest(sconn, env, function, k=1000, min_runs=1, neighbours=300, exact=True)
    kept = _suggest(sconn, env, function, k=1000, min_runs=6, neighbours=300, exact=True)
    assert any(r[evidence] < 6 for r in every) and kept
    assert all(r[evidence] >= 6 and r["candidates"] == len(kept) for r in kept)
    assert {r["config_id"] for r in kept} == {r["config_id"] for r in every if r[evidence] >= 6}


@pytest.mark.parametrize("function", SUGGESTS)
def test_suggest_as_of_uses_only_runs_dated_on_or_before_it(sconn, stored, records, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    as_of = dt.date(2003, 12, 31)
    rows = _suggest(sconn, env, function, k=1000, min_runs=1, neighbours=200, as_of=as_of)
    assert rows and all(dt.date.fromisoformat(records[r["best_run_id"]]["as_of_date"]) <= as_of for r in rows)
    assert sum(r["runs"] for r in rows) == 200
    later = _suggest(sconn, env, function, k=1000, min_runs=1, neighbours=200)
    assert any(dt.date.fromisoformat(records[r["best_run_id"]]["as_of_date"]) > as_of for r in later)


@pytest.mark.parametrize("function", SUGGESTS)
def test_suggest_objective_ranks_by_a_nested_outcome_key(sconn, stored, records, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    rows = _suggest(sconn, env, function, k=10, objective="outcome.robustness.worst_third_sharpe", exact=True)
    assert rows
    for row in rows:
        assert row["best_objective"] == records[row["best_run_id"]]["outcome"]["robustness"]["worst_third_sharpe"]
    by_sharpe = _suggest(sconn, env, function, k=10, exact=True)
    assert [r["config_id"] for r in rows] != [r["config_id"] for r in by_sharpe]


@pytest.mark.parametrize("function", SUGGESTS)
def test_suggest_lower_is_better_ranks_ascending_and_picks_the_lowest_run(sconn, stored, records, probe,
                                                                          function) -> None:
    env = _env(stored, probe["run_id"])
    rows = _suggest(sconn, env, function, k=10, objective="max_drawdown", higher_is_better=False, exact=True)
    higher = _suggest(sconn, env, function, k=10, objective="max_drawdown", exact=True)
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    assert [r["score"] for r in higher] == sorted((r["score"] for r in higher), reverse=True)
    for row in rows:
        assert row["best_objective"] <= row["objective_mean"] + 1e-12
        assert records[row["best_run_id"]]["outcome"]["max_drawdown"] == row["best_objective"]
    assert rows[0]["config_id"] != higher[0]["config_id"]


@pytest.mark.parametrize("function", SUGGESTS)
def test_suggest_strategy_ids_take_evidence_only_from_those_strategies(sconn, stored, records, probe,
                                                                       function) -> None:
    env = _env(stored, probe["run_id"])
    rows = _suggest(sconn, env, function, k=1000, min_runs=1, neighbours=200, strategy_ids=["EU_EQ_MEAN_REVERSION"])
    assert rows and all(r["config_id"].startswith("MEANREV_") for r in rows)
    assert all(records[r["best_run_id"]]["strategy_id"] == "EU_EQ_MEAN_REVERSION" for r in rows)
    assert sum(r["runs"] for r in rows) == 200


@pytest.mark.parametrize("function", ["suggest_configs", "suggest_configs_v4"])  # v1, v2 walk float32 graphs only
def test_suggest_exact_never_walks_the_env_graph(sconn, stored, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    before = _hnsw_scans(sconn, "env")
    _suggest(sconn, env, function, exact=True)
    assert _hnsw_scans(sconn, "env") == before
    _suggest(sconn, env, function)
    assert _hnsw_scans(sconn, "env") == before + 1


@pytest.mark.parametrize("function", ["suggest_configs", "suggest_configs_v2", "suggest_configs_v4"])
def test_suggest_eligible_configs_restrict_the_candidates_not_the_evidence(sconn, stored, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    every = _suggest(sconn, env, function, k=1000, min_runs=1, exact=True)
    chosen = [every[-1]["config_id"], every[len(every) // 2]["config_id"]]
    rows = _suggest(sconn, env, function, k=1000, min_runs=1, exact=True, eligible_configs=chosen)
    assert sorted(r["config_id"] for r in rows) == sorted(chosen)
    assert all(r["candidates"] == 2 for r in rows)
    before = {r["config_id"]: r for r in every}
    for row in rows:  # the same neighbours are evidence: each config's own figures do not change
        assert (row["runs"], row["environments"], row["best_run_id"]) == tuple(
            before[row["config_id"]][c] for c in ("runs", "environments", "best_run_id"))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="eligible_configs must be a non-empty"):
        _suggest(sconn, env, function, eligible_configs=[])


@pytest.mark.parametrize("function", ["suggest_configs", "suggest_configs_v2", "suggest_configs_v4"])
def test_suggest_encoder_version_must_be_the_active_one(sconn, stored, probe, function) -> None:
    env = _env(stored, probe["run_id"])
    active = sconn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]
    assert _suggest(sconn, env, function, encoder_version=active) == _suggest(sconn, env, function)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as raised:
        _suggest(sconn, env, function, encoder_version=active + 1)
    assert raised.value.sqlstate == "55000"


# -- suggest_configs_v4, recomputed from its documented formula -------------------------------------


def _percentile_cont(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values, dtype=np.float64), q))  # linear interpolation, as PostgreSQL's


def _percentile_disc(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(int(np.ceil(q * len(ordered))) - 1, 0)]


def _key(env: dict) -> str:
    return json.dumps(env, sort_keys=True)


def _window_days(record: dict) -> int | None:
    try:
        start = dt.date.fromisoformat(record["test_start"])
    except (KeyError, TypeError, ValueError):
        return None
    return (dt.date.fromisoformat(record["as_of_date"]) - start).days


def _block(day: dt.date, block_days: int) -> int:
    return (day - dt.date(2000, 1, 3)).days // block_days


def _reference_suggest_v4(data: Stored, records: dict[str, dict], env: np.ndarray, *, k: int = 5,
                          as_of: dt.date | None = None, objective: str = "sharpe", higher_is_better: bool = True,
                          neighbours: int = 1000, min_runs: int = 3, strategy_ids: list[str] | None = None,
                          eligible_configs: list[str] | None = None, history: int | None = 20000,
                          horizon: int | None = None) -> list[dict[str, Any]]:
    """suggest_configs_v4 as its header and docs/suggestions.md state it, in plain Python: each candidate's
    record (relative to the other candidates, in blocks of one outcome window, shrunk to their mean), moved by
    local_weight toward its kernel-weighted relative result in the neighbourhood."""
    direction = 1.0 if higher_is_better else -1.0
    path = objective.removeprefix("outcome.").split(".")
    config_of = {run_id: r.get("config_id") or run_id for run_id, r in records.items()}
    scored = []
    for run_id, distance in _brute(data, env, neighbours, as_of=as_of, strategy_ids=strategy_ids):
        value = _value(records[run_id], path)
        if value is not None:
            scored.append({"run_id": run_id, "config_id": config_of[run_id], "distance": distance, "value": value,
                           "day": dt.date.fromisoformat(records[run_id]["as_of_date"]),
                           "env": _key(records[run_id]["env"]), "window": _window_days(records[run_id])})
    h = max(_percentile_cont([s["distance"] for s in scored], 0.1), 1e-9)
    windows = [s["window"] for s in scored if s["window"] is not None and s["window"] > 0]
    block_days = horizon or max(1, _percentile_disc(windows, 0.5) if windows else 1)

    def weight(distance: float) -> float:
        return float(np.exp(-min(0.5 * (distance / h) ** 2, 300)))

    cells: dict[tuple, list[dict]] = defaultdict(list)  # one piece of evidence per config and environment
    for s in scored:
        cells[(s["day"], s["env"], s["config_id"])].append(s)
    cell_rows = [{"day": day, "env": e, "config_id": c, "value": float(np.mean([s["value"] for s in ss])),
                  "distance": min(s["distance"] for s in ss)} for (day, e, c), ss in cells.items()]
    count = defaultdict(int)
    for c in cell_rows:
        if eligible_configs is None or c["config_id"] in eligible_configs:
            count[c["config_id"]] += 1
    wanted = {c for c, n in count.items() if n >= min_runs}

    mine = [c for c in cell_rows if c["config_id"] in wanted]
    overall = float(np.mean([c["value"] for c in mine]))
    by_env = defaultdict(list)
    for c in mine:
        by_env[(c["day"], c["env"])].append(c["value"])
    local_blocks: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for c in mine:
        beside = by_env[(c["day"], c["env"])]
        rel = c["value"] - (float(np.mean(beside)) if len(beside) >= 2 else overall)
        local_blocks[c["config_id"]][_block(c["day"], block_days)].append((rel, weight(c["distance"])))
    local = {}
    for config_id, blocks in local_blocks.items():
        parts = [(sum(w * r for r, w in b) / sum(w for _, w in b), sum(w for _, w in b), len(b))
                 for b in blocks.values()]
        local[config_id] = {"blocks": parts, "envs": [r for b in blocks.values() for r, _ in b],
                            "rel": sum(w * r for r, w, _ in parts) / sum(w for _, w, _ in parts),
                            "environments": sum(n for _, _, n in parts)}

    share = None if history is None else int(np.ceil(history / len(wanted)))
    recent = []
    for config_id in wanted:  # each candidate's latest runs known at the date, whole dates
        runs = sorted((r for run_id, r in records.items() if config_of[run_id] == config_id
                       and (as_of is None or dt.date.fromisoformat(r["as_of_date"]) <= as_of)
                       and _value(r, path) is not None
                       and (strategy_ids is None or r["strategy_id"] in strategy_ids)),
                      key=lambda r: r["as_of_date"], reverse=True)
        if share is not None and len(runs) > share:
            runs = [r for r in runs if r["as_of_date"] >= runs[share - 1]["as_of_date"]]
        recent += [(config_id, r) for r in runs]
    history_cells: dict[tuple, list[float]] = defaultdict(list)
    for config_id, r in recent:
        history_cells[(r["as_of_date"], _key(r["env"]), config_id)].append(_value(r, path))
    history_env = defaultdict(list)
    for (day, e, config_id), values in history_cells.items():
        history_env[(day, e)].append((config_id, float(np.mean(values))))
    history_blocks: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (day, _), members in history_env.items():
        if len(members) >= 2:
            centre = float(np.mean([v for _, v in members]))
            for config_id, v in members:
                history_blocks[config_id][_block(dt.date.fromisoformat(day), block_days)].append(v - centre)
    record = {c: [float(np.mean(b)) for b in blocks.values()] for c, blocks in history_blocks.items()}
    between = sum(sum((x - np.mean(xs)) ** 2 for x in xs) for xs in record.values())
    dof = sum(len(xs) for xs in record.values()) - len(record)
    block_s2 = between / dof if dof > 0 else None

    candidates = sorted(c for c in wanted if local[c]["environments"] >= min_runs)
    rel = {c: direction * local[c]["rel"] for c in candidates}
    prior = {c: direction * float(np.mean(record[c])) for c in candidates if c in record}

    def pooled(pieces: list[tuple[str, float]]) -> float | None:
        dof = len(pieces) - len({c for c, _ in pieces})
        return sum((direction * x - rel[c]) ** 2 for c, x in pieces) / dof if dof > 0 else None

    one_env_s2 = pooled([(c, r) for c in candidates for r in local[c]["envs"]])
    local_s2 = pooled([(c, r) for c in candidates for r, _, _ in local[c]["blocks"]])

    def first(*values: float | None) -> float:
        return next((v for v in values if v is not None), 0.0)

    es2 = max(first(one_env_s2), 1e-12)
    ls2 = max(first(local_s2, block_s2, one_env_s2), 1e-12)
    bs2 = max(first(block_s2, local_s2, one_env_s2), 1e-12)
    prior_centre = float(np.mean(list(prior.values()))) if prior else None
    centre = float(np.mean(list(rel.values())))
    spread = (float(np.var(list(prior.values()), ddof=1)) - float(np.mean([bs2 / len(record[c]) for c in prior]))
              if len(prior) >= 2 else None)
    prior_tau2 = max(first(spread, -np.inf), 1e-6 * bs2)
    rows = {}
    for c in candidates:
        w = np.array([w for _, w, _ in local[c]["blocks"]])
        local_var = max(ls2 * float((w**2).sum() / w.sum() ** 2), 1e-12)
        if c in prior:
            blocks = len(record[c])
            base = prior_centre + (prior[c] - prior_centre) * prior_tau2 / (prior_tau2 + bs2 / blocks)
            base_var = 1 / (1 / prior_tau2 + blocks / bs2)
        else:
            base, base_var = centre, prior_tau2
        rows[c] = {"local_var": local_var, "base": base, "base_var": base_var}
    tau2 = max(float(np.mean([(rel[c] - r["base"]) ** 2 for c, r in rows.items()]))
               - float(np.mean([r["local_var"] + r["base_var"] for r in rows.values()])),
               1e-6 * float(np.mean([r["local_var"] for r in rows.values()])))
    for c, r in rows.items():
        r["local_weight"] = tau2 / (tau2 + r["local_var"])
        r["expected"] = r["base"] + r["local_weight"] * (rel[c] - r["base"])
        r["posterior_var"] = (1 - r["local_weight"]) ** 2 * r["base_var"] + r["local_weight"] * r["local_var"]
    mean_expected = float(np.mean([r["expected"] for r in rows.values()]))
    out = []
    for c, r in rows.items():
        edge = r["expected"] - mean_expected
        members = [s for s in scored if s["config_id"] == c]
        weights = np.array([weight(s["distance"]) for s in members])
        values = np.array([s["value"] for s in members])
        best = min(members, key=lambda s: (-direction * s["value"], s["run_id"]))
        out.append({
            "config_id": c, "score": direction * edge, "edge": edge, "runs": len(members),
            "weighted_objective": float((weights * values).sum() / weights.sum()),
            "mean_distance": float(np.mean([s["distance"] for s in members])),
            "objective_mean": float(values.mean()),
            "objective_std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "best_run_id": best["run_id"], "best_objective": best["value"],
            "edge_z": (rel[c] - centre) / np.sqrt(r["local_var"]),
            "deflated_confidence": statistics.NormalDist().cdf(edge / np.sqrt(es2 + r["posterior_var"])),
            "candidates": len(candidates), "environments": local[c]["environments"],
            "relative_objective": direction * rel[c],
            "history_objective": direction * prior[c] if c in prior else None,
            "history_blocks": len(record.get(c, [])), "local_weight": r["local_weight"],
        })
    return sorted(out, key=lambda s: (-s["edge"], s["config_id"]))[:k]


V4_COMPARED = ("config_id", "runs", "best_run_id", "candidates", "environments", "history_blocks")
V4_APPROX = APPROX + ("relative_objective", "history_objective", "local_weight")


# Argument sets that reach every part of v4's computation (and of v5's copy of it).
V4_ARGUMENTS = {
    "defaults": {},
    "min_runs-neighbours": {"k": 40, "min_runs": 1, "neighbours": 300},
    "as_of": {"as_of": dt.date(2006, 3, 31), "k": 10},
    "lower-is-better": {"objective": "max_drawdown", "higher_is_better": False, "k": 8},
    "history-horizon": {"history": 400, "horizon": 30, "k": 12},
    "all-history-strategies": {"history": None, "strategy_ids": ["US_EQ_TREND", "FX_G10_MEAN_REVERSION"],
                               "min_runs": 2, "k": 12},
}


@pytest.mark.parametrize("arguments", [*V4_ARGUMENTS.values(), {"eligible_configs": "every third", "k": 100}],
                         ids=[*V4_ARGUMENTS, "eligible"])
def test_suggest_v4_equals_its_documented_computation(sconn, stored, records, probe, arguments) -> None:
    env = _env(stored, probe["run_id"])
    if arguments.get("eligible_configs") == "every third":
        every = _suggest(sconn, env, "suggest_configs_v4", k=1000, exact=True)
        arguments = arguments | {"eligible_configs": [r["config_id"] for r in every[::3]]}
    rows = _suggest(sconn, env, "suggest_configs_v4", exact=True, **arguments)
    expected = _reference_suggest_v4(stored["env"], records, env, **arguments)
    assert len(rows) >= 2 and any(0 < r["local_weight"] < 1 for r in rows), arguments  # both parts at work
    assert [tuple(r[c] for c in V4_COMPARED) for r in rows] == [tuple(e[c] for c in V4_COMPARED) for e in expected]
    for row, want in zip(rows, expected):
        for column in V4_APPROX:
            expected_value = want[column] if want[column] is None else pytest.approx(want[column], rel=1e-4, abs=1e-6)
            assert row[column] == expected_value, (column, row["config_id"])


@pytest.mark.parametrize("arguments", V4_ARGUMENTS.values(), ids=V4_ARGUMENTS)
def test_suggest_configs_uncalibrated_at_scale_1_answers_as_v4(sconn, stored, probe, arguments) -> None:
    """Without a calibration, version 6 (what suggest answers where runs carry outcome windows: the test below)
    is v4's ranking, recomputed above from its documented formula."""
    env = _env(stored, probe["run_id"])
    v4 = _suggest(sconn, env, "suggest_configs_v4", exact=True, **arguments)
    shipped = _suggest(sconn, env, "suggest_configs_v6", exact=True, calibrated=False, local_scale=1.0, **arguments)
    # (the records' sums may meet their terms in another order than v4's: floats within 1e-12)
    assert v4
    assert_same_answer([{c: row[c] for c in v4[0]} for row in shipped], v4)


@pytest.mark.parametrize("arguments", V4_ARGUMENTS.values(), ids=V4_ARGUMENTS)
def test_suggest_configs_answers_as_version_6_where_the_runs_carry_outcome_windows(sconn, stored, probe,
                                                                                  arguments) -> None:
    """Version 7 changes only what a windowless history (a search's) is answered with."""
    env = _env(stored, probe["run_id"])
    v6 = _suggest(sconn, env, "suggest_configs_v6", exact=True, **arguments)
    shipped = _suggest(sconn, env, "suggest_configs", exact=True, **arguments)
    assert v6 and [row["config_id"] for row in shipped] == [row["config_id"] for row in v6]
    for got, want in zip(shipped, v6):
        assert {k: v for k, v in got.items() if not isinstance(v, float)} == {
            k: v for k, v in want.items() if not isinstance(v, float)}
        assert [v for v in got.values() if isinstance(v, float)] == pytest.approx(
            [v for v in want.values() if isinstance(v, float)], rel=1e-12, abs=1e-12)


@pytest.mark.one_node(reason="on Citus each config's cutoff comes from the shards' own walks, then one join reads from it: tests/test_citus.py counts the rows the shards read")
def test_suggest_reads_each_candidates_newest_runs_in_index_order_and_stops(sconn) -> None:
    """suggest's records (recent_records_v1): each config's newest runs walked from runs_config_as_of, newest
    first, stopping at the count asked for, so a call touches far fewer pages than hold those configs' runs. The
    planner takes "the objective is a number" to keep one run in 200; left to itself it read every run of each
    config by a bitmap and sorted them (3.9 s a call at 1,000,000 runs against 21 ms in index order). The pages
    are counted by EXPLAIN's buffers, which include the function's own query (auto_explain, which would show
    its plan, is not on every server)."""
    configs = [row[0] for row in sconn.execute(
        "SELECT config_id FROM historical_db.runs GROUP BY config_id ORDER BY count(*) DESC, config_id LIMIT 5")]
    call = "SELECT config_id, as_of_date FROM historical_db.recent_records_v1(%s, 3, NULL, '{sharpe}', NULL)"
    sconn.execute(call, (configs,)).fetchall()  # (the first call of a session also reads the catalogs)
    [explained] = sconn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + call, (configs,)).fetchone()
    top = explained[0]["Plan"]
    touched = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    holding = sconn.execute("SELECT count(DISTINCT (ctid::text::point)[0]) FROM historical_db.runs "
                            "WHERE config_id = ANY (%s)", (configs,)).fetchone()[0]
    assert holding >= 100, holding  # enough pages for the difference to show
    assert touched < holding / 2, (touched, holding)
    rows = sconn.execute(call, (configs,)).fetchall()
    for config in configs:
        dates = sorted((d for c, d in rows if c == config), reverse=True)
        newest = sconn.execute("SELECT as_of_date FROM historical_db.runs WHERE config_id = %s "
                               "ORDER BY as_of_date DESC LIMIT 3", (config,)).fetchall()
        assert len(dates) >= 3 and dates[:3] == [d for (d,) in newest], config
