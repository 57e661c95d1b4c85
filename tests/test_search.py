"""Search inside the database: the SQL functions, their Python and CLI callers, against real pgvector."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.errors import MetaspaceError
from metaspace.sample import sample_runs, write_runs
from metaspace.store import migrate
from metaspace.store.connection import connect
from metaspace.store.graphs import DEFAULT_SPACES, INDEX_NAMES, IndexSettings

SPACES = ("joint", "config", "env", "outcome")
INDEXED = DEFAULT_SPACES  # the spaces with a graph by default: config's copies are searched exactly
SLOW_DB = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# (where the suite runs on Citus, tests/test_citus.py checks the shards' walks instead)
ON_THE_COORDINATOR = "plans and index-scan counts are the coordinator's there"


def _vector(conn: psycopg.Connection, run_id: str, space: str = "joint") -> np.ndarray:
    row = conn.execute("SELECT vector FROM historical_db.run_vectors_v1 WHERE space = %s AND run_id = %s",
                       (space, run_id)).fetchone()
    return row[0].to_numpy()


def _graph(space: str) -> str:
    """The HNSW index a space has on the default layout (float32 joint, halfvec branches)."""
    return INDEX_NAMES[(space, IndexSettings().kind(space))]


def _hnsw_scans(conn: psycopg.Connection) -> dict[str, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return dict(conn.execute(
        "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE indexrelname LIKE '%hnsw'").fetchall())


@pytest.fixture(scope="module")
def sconn(sample_db: str):
    with connect(sample_db, autocommit=True) as conn:
        yield conn


# -- the SQL functions ----------------------------------------------------------------------------


@pytest.mark.one_node(reason=ON_THE_COORDINATOR)
@pytest.mark.parametrize("space", INDEXED)
def test_search_walks_the_space_hnsw_index_and_exact_does_not(sconn, sample_history, space: str) -> None:
    index = _graph(space)
    query = _vector(sconn, sample_history[0]["run_id"], space)
    before = _hnsw_scans(sconn)[index]
    # HNSW is approximate and its graph is built with random levels: a wide beam makes a miss here
    # vanishingly unlikely on 3,000 runs (recall at the default width is measured in benchmarks/).
    sconn.execute("SET hnsw.ef_search = 200")
    try:
        rows = sconn.execute("SELECT distance FROM historical_db.search_runs(%s, 10, %s)", (query, space)).fetchall()
    finally:
        sconn.execute("RESET hnsw.ef_search")
    walked = _hnsw_scans(sconn)[index]
    exact = sconn.execute("SELECT distance FROM historical_db.search_runs(%s, 10, %s, exact => true)",
                          (query, space)).fetchall()
    assert walked == before + 1
    assert _hnsw_scans(sconn)[index] == walked
    assert len(rows) == 10 and rows[0][0] < 1e-5  # the run itself (or a run with the very same config)
    # Runs sharing a config share a config vector: compare distances, not ids, with the exact answer.
    hnsw, truth = (sorted(round(r[0], 5) for r in rs) for rs in (rows, exact))
    assert sum(min(hnsw.count(d), truth.count(d)) for d in set(hnsw)) >= 9


@pytest.mark.one_node(reason=ON_THE_COORDINATOR)
@pytest.mark.parametrize("space", INDEXED)
def test_plain_sql_uses_the_space_index(sconn, space: str) -> None:
    """The plain form of the README's table: ``vector <-> :q`` walks a float32 graph, and on a space whose
    graph is halfvec (the default for the branches) the same query cast to halfvec walks it. For the joint
    space that is run_vectors_v1 (or joint_embeddings); a branch space's graph is over its distinct vectors,
    branch_entities (revision 0019), and the query docs/sql.md shows walks it, then joins their runs."""
    query = sconn.execute("SELECT vector FROM historical_db.run_vectors_v1 WHERE space = %s LIMIT 1", (space,)).fetchone()[0]
    order = ("vector <-> %(q)s" if IndexSettings().kind(space) == "vector"
             else "vector::halfvec(384) <-> %(q)s::halfvec(384)")
    if space == "joint":
        statement = ("SELECT run_id FROM historical_db.run_vectors_v1 WHERE space = %(space)s AND encoder_version = 1 "
                     f"ORDER BY {order} LIMIT 10")
    else:
        statement = f"""
            WITH nearest AS (
                SELECT e.entity_id, e.vector <-> %(q)s AS distance FROM historical_db.branch_entities e
                WHERE e.branch = %(space)s AND e.encoder_version = historical_db.active_encoder_version_v1()
                ORDER BY e.{order} LIMIT 10)
            SELECT r.run_id, n.distance FROM nearest n JOIN historical_db.run_entities r
              ON %(space)s = 'config' AND r.config_entity = n.entity_id OR %(space)s = 'env' AND r.env_entity = n.entity_id
              OR %(space)s = 'outcome' AND r.outcome_entity = n.entity_id
            ORDER BY n.distance, r.run_id"""
    plan = "\n".join(row[0] for row in sconn.execute("EXPLAIN " + statement, {"space": space, "q": query}).fetchall())
    assert f"Index Scan using {_graph(space)}" in plan, plan


@pytest.mark.one_node(reason=ON_THE_COORDINATOR)
def test_product_sql_form_keeps_using_the_joint_index(sconn, sample_history) -> None:
    query = _vector(sconn, sample_history[1]["run_id"])
    plan = "\n".join(row[0] for row in sconn.execute(
        "EXPLAIN SELECT entity_scope->>'run_id' AS run_id, vector <-> %(q)s AS distance "
        "FROM historical_db.joint_embeddings WHERE joint_type = 'META_CONFIG_ENV_V0' "
        "ORDER BY vector <-> %(q)s LIMIT 10", {"q": query}).fetchall())
    assert "Index Scan using joint_embeddings_vector_hnsw" in plan, plan


@SLOW_DB
@given(day=st.integers(0, 9500), space=st.sampled_from(SPACES), k=st.integers(1, 40), exact=st.booleans(),
       pick=st.integers(0, 2999))
def test_search_never_returns_runs_after_as_of(sconn, sample_history, day, space, k, exact, pick) -> None:
    as_of = dt.date(1996, 6, 1) + dt.timedelta(days=day)
    query = _vector(sconn, sample_history[pick]["run_id"], space)
    rows = sconn.execute("SELECT as_of_date FROM historical_db.search_runs(%s, %s, %s, %s, exact => %s)",
                         (query, k, space, as_of, exact)).fetchall()
    matching = sum(1 for r in sample_history if dt.date.fromisoformat(r["as_of_date"]) <= as_of)
    assert all(row[0] <= as_of for row in rows)
    assert len(rows) == min(k, matching)


@SLOW_DB
@given(day=st.integers(0, 9500), pick=st.integers(0, 2999))
def test_neighbours_and_suggestions_never_look_ahead(sconn, sample_history, day, pick) -> None:
    as_of = dt.date(1997, 1, 1) + dt.timedelta(days=day)
    run_id = sample_history[pick]["run_id"]
    dates = sconn.execute("SELECT as_of_date FROM historical_db.neighbours(%s, 20, 'env', %s)",
                          (run_id, as_of)).fetchall()
    assert all(d[0] <= as_of for d in dates)
    env = _vector(sconn, run_id, "env")
    best = sconn.execute(
        "SELECT r.as_of_date FROM historical_db.suggest_configs(%s, 5, %s, min_runs => 1) s "
        "JOIN historical_db.runs r ON r.run_id = s.best_run_id", (env, as_of)).fetchall()
    assert all(d[0] <= as_of for d in best)


def _matching(history, *, strategies=None, before=None):
    return [r for r in history if (strategies is None or r["strategy_id"] in strategies)
            and (before is None or r["as_of_date"] <= before.isoformat())]


@pytest.mark.parametrize("space", SPACES)
def test_selective_filters_still_return_exactly_k_rows(sconn, sample_history, space) -> None:
    by_strategy = defaultdict(list)
    for run in sample_history:
        by_strategy[run["strategy_id"]].append(run)
    rare = min(by_strategy, key=lambda s: len(by_strategy[s]))
    dates = sorted(r["as_of_date"] for r in by_strategy[rare])
    as_of = dt.date.fromisoformat(dates[11])  # exactly 12 runs of that strategy on or before it
    query = _vector(sconn, sample_history[0]["run_id"], space)
    rows = sconn.execute(
        "SELECT strategy_id, as_of_date, distance FROM historical_db.search_runs(%s, 10, %s, %s, %s)",
        (query, space, as_of, [rare])).fetchall()
    exact = sconn.execute(
        "SELECT distance FROM historical_db.search_runs(%s, 10, %s, %s, %s, exact => true)",
        (query, space, as_of, [rare])).fetchall()
    assert len(rows) == 10
    assert all(s == rare and d <= as_of for s, d, _ in rows)
    assert [round(r[2], 5) for r in rows] == [round(r[0], 5) for r in exact]
    fewer = sconn.execute("SELECT count(*) FROM historical_db.search_runs(%s, 50, %s, %s, %s)",
                          (query, space, as_of, [rare])).fetchone()[0]
    assert fewer == 12


@pytest.mark.one_node(reason=ON_THE_COORDINATOR)
def test_an_as_of_date_leaving_few_runs_skips_the_graph(sconn, sample_history) -> None:
    dates = sorted(r["as_of_date"] for r in sample_history)
    query = _vector(sconn, sample_history[0]["run_id"])
    before = _hnsw_scans(sconn)[_graph("joint")]
    few = sconn.execute("SELECT count(*) FROM historical_db.search_runs(%s, 10, as_of => %s)",
                        (query, dates[100])).fetchone()[0]
    assert few == 10 and _hnsw_scans(sconn)["joint_embeddings_vector_hnsw"] == before
    many = sconn.execute("SELECT count(*) FROM historical_db.search_runs(%s, 10, as_of => %s)",
                         (query, dates[-1])).fetchone()[0]
    assert many == 10 and _hnsw_scans(sconn)["joint_embeddings_vector_hnsw"] == before + 1


@pytest.mark.one_node(reason=ON_THE_COORDINATOR)
def test_a_walk_that_stops_short_falls_back_to_the_exact_answer(sconn, sample_history) -> None:
    config_id = sample_history[4]["config_id"]
    query = _vector(sconn, sample_history[0]["run_id"])
    exact = sconn.execute("SELECT run_id FROM historical_db.search_runs(%s, 10, config_ids => %s, exact => true)",
                          (query, [config_id])).fetchall()
    before = _hnsw_scans(sconn)["joint_embeddings_vector_hnsw"]
    # A filter the planner takes for unselective (forced here: no scan-and-sort plans) meets a graph walk
    # that gives up long before it finds 10 matches.
    sconn.execute("SET hnsw.max_scan_tuples = 5")
    sconn.execute("SET enable_seqscan = off")
    sconn.execute("SET enable_sort = off")
    try:
        rows = sconn.execute("SELECT run_id FROM historical_db.search_runs(%s, 10, config_ids => %s)",
                             (query, [config_id])).fetchall()
    finally:
        sconn.execute("RESET hnsw.max_scan_tuples")
        sconn.execute("RESET enable_seqscan")
        sconn.execute("RESET enable_sort")
    assert _hnsw_scans(sconn)["joint_embeddings_vector_hnsw"] == before + 1
    assert rows == exact and len(rows) == 10


def test_config_and_scope_filters(sconn, sample_history) -> None:
    target = sample_history[5]
    query = _vector(sconn, target["run_id"])
    rows = sconn.execute("SELECT config_id FROM historical_db.search_runs(%s, 7, config_ids => %s)",
                         (query, [target["config_id"]])).fetchall()
    expected = sum(1 for r in sample_history if r["config_id"] == target["config_id"])
    assert len(rows) == min(7, expected) and {r[0] for r in rows} == {target["config_id"]}
    scoped = sconn.execute("SELECT entity_scope FROM historical_db.search_runs(%s, 5, scope => %s::jsonb)",
                           (query, json.dumps({"strategy_id": target["strategy_id"]}))).fetchall()
    assert len(scoped) == 5 and all(s[0]["strategy_id"] == target["strategy_id"] for s in scoped)


def test_neighbours_exclude_the_run_itself(sconn, sample_history) -> None:
    run_id = sample_history[3]["run_id"]
    rows = sconn.execute("SELECT run_id, distance FROM historical_db.neighbours(%s, 5, 'config')", (run_id,)).fetchall()
    assert len(rows) == 5 and run_id not in {r[0] for r in rows}
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)


@pytest.mark.parametrize("call, message", [
    ("SELECT * FROM historical_db.search_runs(%(q)s, 0)", "k must be between 1 and 1000"),
    ("SELECT * FROM historical_db.search_runs(%(q)s, 1001)", "k must be between 1 and 1000"),
    ("SELECT * FROM historical_db.search_runs('[1,2,3]'::vector)", "has 3 dimensions"),
    ("SELECT * FROM historical_db.search_runs(%(q)s, 5, 'style')", "unknown space 'style'"),
    ("SELECT * FROM historical_db.search_runs(NULL::vector)", "query vector is NULL"),
    ("SELECT * FROM historical_db.neighbours('NO_SUCH_RUN')", "has no joint vector"),
    ("SELECT * FROM historical_db.suggest_configs(%(q)s, objective => '')", "is not an outcome key"),
    ("SELECT * FROM historical_db.suggest_configs(%(q)s, min_runs => 0)", "min_runs must be 1 or more"),
])
def test_function_arguments_are_checked_with_clear_errors(sconn, sample_history, call, message) -> None:
    query = _vector(sconn, sample_history[0]["run_id"])
    with pytest.raises(psycopg.Error, match=message):
        sconn.execute(call, {"q": query})


INJECTIONS = ["x'; DROP TABLE historical_db.runs; --", "joint' OR '1'='1", "'); DELETE FROM historical_db.runs; --",
              "$q$; DROP TABLE historical_db.runs; $q$", "sharpe}'; DROP TABLE historical_db.runs; --"]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_attempts_in_every_text_argument_fail_safely(sconn, sample_history, text) -> None:
    query = _vector(sconn, sample_history[0]["run_id"])
    before = sconn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
    calls = [
        ("SELECT count(*) FROM historical_db.search_runs(%s, 5, %s)", (query, text)),
        ("SELECT count(*) FROM historical_db.search_runs(%s, 5, strategy_ids => %s)", (query, [text])),
        ("SELECT count(*) FROM historical_db.search_runs(%s, 5, config_ids => %s)", (query, [text])),
        ("SELECT count(*) FROM historical_db.search_runs(%s, 5, scope => jsonb_build_object('run_id', %s::text))",
         (query, text)),
        ("SELECT count(*) FROM historical_db.neighbours(%s)", (text,)),
        ("SELECT count(*) FROM historical_db.neighbours(%s, 5, %s)", (sample_history[0]["run_id"], text)),
        ("SELECT count(*) FROM historical_db.suggest_configs(%s, objective => %s)", (_vector(sconn, sample_history[0]["run_id"], "env"), text)),
    ]
    for statement, params in calls:
        try:
            count = sconn.execute(statement, params).fetchone()[0]
            assert count == 0, statement
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.NoDataFound):
            pass
    assert sconn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0] == before


WRITERS = ("store_run", "embed_pending", "attach_entities", "forget_vectors", "drop_orphans")


def test_functions_pin_search_path_and_are_stable(sconn) -> None:
    rows = sconn.execute(
        "SELECT p.proname, p.proconfig, p.provolatile, p.proparallel FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'historical_db' AND p.prorettype <> "
        "'trigger'::regtype").fetchall()
    assert {r[0] for r in rows} >= {"search_runs_v1", "neighbours_v1", "suggest_configs_v1", "search_runs_v2",
                                    "neighbours_v2", "store_run_v2", "query_version_v2", "search_runs",
                                    "suggest_configs", "store_run", "embed_pending", "encoder_transform_v1"}
    for name, config, volatility, parallel in rows:
        assert any(c.startswith("search_path=pg_catalog,") for c in config or []), name
        if name.startswith(WRITERS):  # writers: volatile, never in a parallel worker
            assert volatility == "v" and parallel == "u", name
        else:
            assert volatility in ("s", "i") and parallel == "s", name


def test_normal_helpers_match_the_standard_library(sconn) -> None:
    dist = statistics.NormalDist()
    for x in (-4.0, -1.3, 0.0, 0.7, 2.5):
        assert sconn.execute("SELECT historical_db.normal_cdf_v1(%s)", (x,)).fetchone()[0] == pytest.approx(dist.cdf(x), abs=2e-7)
    for p in (0.001, 0.02, 0.3, 0.5, 0.9, 0.999):
        assert sconn.execute("SELECT historical_db.normal_quantile_v1(%s)", (p,)).fetchone()[0] == pytest.approx(
            dist.inv_cdf(p), rel=1e-8)
    maxima = [sconn.execute("SELECT historical_db.expected_max_normal_v1(%s)", (n,)).fetchone()[0] for n in (1, 2, 10, 100, 1000)]
    assert maxima[0] == 0 and maxima == sorted(maxima)
    assert maxima[3] == pytest.approx(2.51, abs=0.05)  # E[max of 100 normals] ~ 2.51


def _truth(history: list[dict]) -> dict[str, dict[str, float]]:
    """The simulation's ground truth: each config's mean forward Sharpe per (hidden) trailing regime."""
    sharpes: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in history:
        sharpes[(run["sim"]["trailing_regime"], run["config_id"])].append(run["outcome"]["sharpe"])
    truth: dict[str, dict[str, float]] = defaultdict(dict)
    for (regime, config_id), values in sharpes.items():
        truth[regime][config_id] = float(np.mean(values))
    return truth


def test_suggestions_recover_what_works_in_each_regime(sconn, sample_history) -> None:
    truth = _truth(sample_history)
    family = {r["config_id"]: r["config"]["strategy"] for r in sample_history}
    for regime, expected_family in (("trending", "trend"), ("mean_reverting", "mean_reversion"), ("calm", None)):
        targets = [r for r in sample_history if r["sim"]["trailing_regime"] == regime
                   and r["sim"]["forward_regime"] == regime][:10]
        picks = []
        for target in targets:
            env = _vector(sconn, target["run_id"], "env")
            picks.append(sconn.execute("SELECT config_id FROM historical_db.suggest_configs(%s, 1, exact => true)",
                                       (env,)).fetchone()[0])
        # What the picks really earn in that regime, against picking a config at random. (The shipped ranking
        # anchors each config on its record, which knows no regime: +0.30 on trending, +1.53 mean reverting,
        # +0.58 calm, where version 1's kernel alone earned +0.40, +1.61, +0.84; a random ranking earns 0.)
        earned = np.mean([truth[regime][p] for p in picks])
        random_pick = np.mean(list(truth[regime].values()))
        assert earned > random_pick + 0.25, (regime, earned, random_pick, picks)
        if expected_family:
            families = [family[p] for p in picks]
            assert families.count(expected_family) >= 6, (regime, families)


def test_suggestions_carry_evidence_and_a_deflated_confidence(sconn, sample_history) -> None:
    env = _vector(sconn, sample_history[0]["run_id"], "env")
    cursor = sconn.execute("SELECT * FROM historical_db.suggest_configs(%s, 10, min_runs => 2)", (env,))
    columns = [d.name for d in cursor.description]
    rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
    assert rows
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for row in rows:
        assert row["runs"] >= 2 and row["config"]["strategy"]
        assert 0.0 <= row["deflated_confidence"] <= 1.0 and row["candidates"] >= len(rows)
        assert row["best_objective"] >= row["objective_mean"] - 1e-9
    # Shrinkage pulls every score toward one common centre: the ranking by score is never more spread out.
    spread = [abs(r["score"] - rows[-1]["score"]) for r in rows]
    assert max(spread) <= max(r["weighted_objective"] for r in rows) - min(r["weighted_objective"] for r in rows) + 1e-9
    lower = sconn.execute(
        "SELECT score FROM historical_db.suggest_configs(%s, 10, objective => 'outcome.max_drawdown', "
        "higher_is_better => false)", (env,)).fetchall()
    assert [r[0] for r in lower] == sorted(r[0] for r in lower)


@pytest.mark.one_node(reason="Citus reaches the workers as the current role: SET ROLE to a NOLOGIN role cannot log in")
def test_reader_role_can_search_but_not_write(sconn, sample_history) -> None:
    query = _vector(sconn, sample_history[0]["run_id"])
    with sconn.transaction():
        sconn.execute("SET LOCAL ROLE metaspace_reader")
        assert len(sconn.execute("SELECT * FROM historical_db.search_runs(%s, 3)", (query,)).fetchall()) == 3
        with pytest.raises(psycopg.errors.InsufficientPrivilege), sconn.transaction():
            sconn.execute("DELETE FROM historical_db.runs")


@pytest.mark.one_node(reason="a downgrade of a distributed schema is not supported")
def test_search_functions_survive_a_downgrade_upgrade_cycle(db_url: str, tmp_path: Path) -> None:
    path = write_runs(sample_runs(300, seed=3), tmp_path / "runs.jsonl")
    pipeline.import_runs([str(path)], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    before = metaspace.search(run="SIM_3_0000001", k=5, database_url=db_url)
    migrate.downgrade(db_url, "0004_search_indexes")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regproc('historical_db.search_runs_v1')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0] == 300
    migrate.upgrade(db_url)
    assert metaspace.search(run="SIM_3_0000001", k=5, database_url=db_url) == before


# -- Python API and command line ----------------------------------------------------------------------


def test_python_search_by_run_record_and_env(sample_db: str, sample_history) -> None:
    run = sample_history[7]
    by_run = metaspace.search(run=run["run_id"], k=5, exact=True, database_url=sample_db)
    assert len(by_run) == 5 and run["run_id"] not in {r["run_id"] for r in by_run}
    assert set(by_run[0]) >= {"run_id", "config_id", "strategy_id", "as_of_date", "distance", "entity_scope"}
    by_record = metaspace.search(record=run, k=6, exact=True, database_url=sample_db)
    assert by_record[0]["run_id"] == run["run_id"] and by_record[0]["distance"] < 1e-4
    # A record carries its own as_of_date, and is asked as of it.
    as_of_run = metaspace.search(run=run["run_id"], k=5, exact=True, as_of=run["as_of_date"], database_url=sample_db)
    assert [r["run_id"] for r in by_record[1:]] == [r["run_id"] for r in as_of_run]
    by_env = metaspace.search(env=run["env"], k=3, as_of=run["as_of_date"], database_url=sample_db)
    assert by_env[0]["run_id"] == run["run_id"] or by_env[0]["distance"] < 1e-4
    with pytest.warns(UserWarning, match="imputed with the mean outcome vector"):
        partial = metaspace.search(record={"config": run["config"], "env": run["env"]}, k=3, database_url=sample_db)
    assert len(partial) == 3
    with pytest.raises(MetaspaceError, match="exactly one of"):
        metaspace.search(run="a", env={}, database_url=sample_db)


@pytest.mark.parametrize("space", SPACES)
def test_python_search_by_vector_finds_the_run_it_was_stored_for(sconn, sample_db: str, sample_history,
                                                                  space: str) -> None:
    run = sample_history[7]
    vector = _vector(sconn, run["run_id"], space)
    rows = metaspace.search(vector=vector, space=space, k=5, exact=True, database_url=sample_db)
    assert rows[0]["distance"] < 1e-5 and len(rows) == 5
    # Runs sharing a config share its config vector: in that space the run ties with them at distance 0.
    assert run["run_id"] in {r["run_id"] for r in rows if r["distance"] < 1e-5}
    if space != "config":
        assert rows[0]["run_id"] == run["run_id"]
    as_list = metaspace.search(vector=vector.tolist(), space=space, k=5, exact=True, database_url=sample_db)
    assert as_list == rows
    earlier = metaspace.search(vector=vector, space=space, k=5, as_of="2000-01-01", strategy=run["strategy_id"],
                               database_url=sample_db)
    assert all(r["as_of_date"] <= "2000-01-01" and r["strategy_id"] == run["strategy_id"] for r in earlier)


@pytest.mark.parametrize("wrong", [[0.1, 0.2, 0.3], np.zeros(383), np.zeros(385, dtype=np.float32)])
def test_python_search_by_a_vector_of_the_wrong_dimension_is_a_clear_error(sample_db: str, wrong) -> None:
    with pytest.raises(MetaspaceError, match=rf"the query vector has {len(wrong)} dimensions; metaspace spaces "
                                             r"have 384"):
        metaspace.search(vector=wrong, database_url=sample_db)


def test_python_suggest_and_optuna_params(sample_db: str, sample_history) -> None:
    run = sample_history[9]
    suggestions = metaspace.suggest(run["env"], k=3, as_of="2015-12-31", database_url=sample_db)
    assert 1 <= len(suggestions) <= 3
    params = metaspace.optuna_params(suggestions[0])
    assert "risk.target_vol" in params and "strategy" in params


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_search_formats(sample_db: str, sample_history) -> None:
    run_id = sample_history[2]["run_id"]
    table = _cli("--database-url", sample_db, "search", "--run", run_id, "-k", "4")
    assert table.exit_code == 0, table.output
    assert "run_id" in table.output and len(table.stdout.strip().splitlines()) == 1 + 2 + 4
    as_json = _cli("--database-url", sample_db, "search", "--run", run_id, "--run", sample_history[3]["run_id"],
                   "-k", "4", "--format", "json", "--space", "env")
    lines = [json.loads(line) for line in as_json.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(len(line["rows"]) == 4 and line["space"] == "env" for line in lines)
    assert lines[0]["rows"] == metaspace.search(run=run_id, k=4, space="env", database_url=sample_db)
    assert lines[0]["input"] == f"run {run_id}" and lines[0]["as_of"] is None
    as_csv = _cli("--database-url", sample_db, "search", "--run", run_id, "-k", "3", "--format", "csv")
    rows = as_csv.stdout.strip().splitlines()
    assert rows[0].startswith("input,rank,run_id") and len(rows) == 4


def test_cli_search_answers_each_line_as_of_its_own_date_capped_by_as_of(sample_db: str, sample_history,
                                                                          tmp_path: Path) -> None:
    lines = [{"as_of_date": "2001-06-30", "env": sample_history[0]["env"]},
             {"as_of_date": "2012-12-31", "env": sample_history[1]["env"]},
             sample_history[2]["env"]]
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = _cli("--database-url", sample_db, "search", "--env", str(path), "-k", "25", "--as-of", "2005-01-01",
                  "--format", "json")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(answers) == 3
    for answer, limit in zip(answers, ("2001-06-30", "2005-01-01", "2005-01-01")):
        # --as-of is a cap: a line may ask for an earlier date, never a later one
        assert answer["as_of"] == limit
        assert len(answer["rows"]) == 25 and all(row["as_of_date"] <= limit for row in answer["rows"])


def test_cli_search_partial_record_says_what_was_imputed(sample_db: str, sample_history, tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"run_id": "new", "as_of_date": "2010-01-01", "config": sample_history[0]["config"]},
                               indent=2))
    result = _cli("--database-url", sample_db, "search", "--record", str(path), "-k", "3")
    assert result.exit_code == 0, result.output
    assert "no 'env' given; imputed with the mean env vector of the runs encoder version 1 was fitted on" \
        in result.stderr
    assert "no 'outcome' given" in result.stderr


def test_cli_suggest_json_and_optuna(sample_db: str, sample_history, tmp_path: Path) -> None:
    path = tmp_path / "envs.jsonl"
    path.write_text(json.dumps(sample_history[0]["env"]) + "\n" + json.dumps(sample_history[1]["env"]) + "\n")
    result = _cli("--database-url", sample_db, "suggest", "--env", str(path), "-k", "2", "--format", "json")
    answers = [json.loads(line)["rows"] for line in result.stdout.strip().splitlines()]
    assert len(answers) == 2 and all(1 <= len(a) <= 2 and "config_id" in a[0] for a in answers)
    optuna = _cli("--database-url", sample_db, "suggest", "--env", str(path), "-k", "2", "--format", "optuna")
    params = [json.loads(line) for line in optuna.stdout.strip().splitlines()]
    assert params[0][0] == metaspace.optuna_params(answers[0][0])
    lower = _cli("--database-url", sample_db, "suggest", "--env", str(path), "--objective", "outcome.max_drawdown",
                 "--lower-is-better", "--format", "json")
    ranked = [json.loads(line)["rows"] for line in lower.stdout.strip().splitlines()]
    expected = metaspace.suggest([sample_history[0]["env"], sample_history[1]["env"]], objective="max_drawdown",
                                 higher_is_better=False, database_url=sample_db)
    assert [[r["config_id"] for r in rows] for rows in ranked] == [[r["config_id"] for r in rows] for rows in expected]
    assert all([r["score"] for r in rows] == sorted(r["score"] for r in rows) for rows in ranked)
    table = _cli("--database-url", sample_db, "suggest", "--env", str(path), "--objective", "outcome.max_drawdown",
                 "--lower-is-better")
    assert table.exit_code == 0, table.output  # the readable table still prints


def test_cli_search_bad_inputs_name_the_line_and_field(sample_db: str, sample_history, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(sample_history[0]["env"]) + "\n" + json.dumps({"realized_vol": "high"}) + "\n")
    result = _cli("--database-url", sample_db, "search", "--env", str(path))
    assert result.exit_code == 1
    assert f"{path}:2" in result.output and "realized_vol" in result.output
    both = _cli("--database-url", sample_db, "search", "--run", "a", "--env", str(path))
    assert both.exit_code == 1 and "exactly one of" in both.output
    missing = _cli("--database-url", sample_db, "search", "--run", "NO_SUCH_RUN")
    assert missing.exit_code == 1 and "has no joint vector" in missing.output
