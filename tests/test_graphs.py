"""Which spaces get an HNSW graph (issue 14): none below the threshold, the team's choice of indexed spaces
stored in the database and honoured by every later embed-runs, and exact answers, said so, where there is
no graph. Real PostgreSQL with pgvector."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from metaspace import pipeline
from metaspace.cli import cli
from metaspace.errors import MetaspaceError
from metaspace.sample import sample_runs, write_runs
from metaspace.store import graphs, migrate

N = 600


@pytest.fixture(scope="module")
def runs_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_runs(sample_runs(N, seed=3), tmp_path_factory.mktemp("graphs") / "runs.jsonl.gz"))


def _graphs(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return set(graphs.spaces_of(graphs.present(conn)))


def _plan(url: str, sql: str, params: tuple) -> str:
    with psycopg.connect(url) as conn:
        return "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params).fetchall())


def _joint_query(url: str) -> tuple[str, str]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT entity_scope->>'run_id', vector::text FROM historical_db.joint_embeddings "
                            "ORDER BY entity_scope->>'run_id' LIMIT 1").fetchone()


PLAIN = ("SELECT entity_scope->>'run_id' AS run_id, vector <-> %s::vector AS distance "
         "FROM historical_db.joint_embeddings WHERE joint_type = 'META_CONFIG_ENV_V0' "
         "ORDER BY vector <-> %s::vector LIMIT 10")


def test_below_the_threshold_no_graph_is_built_and_searches_answer_exactly(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    summary = pipeline.embed_runs(database_url=db_url)
    assert N < graphs.DEFAULT_MIN_VECTORS
    assert _graphs(db_url) == set() and summary.graphs == []
    run_id, q = _joint_query(db_url)
    plan = _plan(db_url, PLAIN, (q, q))
    assert "hnsw" not in plan and "Seq Scan" in plan, plan
    with psycopg.connect(db_url) as conn:
        for space in ("joint", "env"):
            args = (run_id, space)
            walked = conn.execute("SELECT run_id, distance FROM historical_db.neighbours_v2(%s, 10, %s, "
                                  "as_of => '2030-01-01')", args).fetchall()
            exact = conn.execute("SELECT run_id, distance FROM historical_db.neighbours_v2(%s, 10, %s, "
                                 "as_of => '2030-01-01', exact => true)", args).fetchall()
            assert walked == exact and len(exact) == 10, space


def test_embed_runs_builds_a_graph_once_a_space_crosses_the_threshold(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    first = pipeline.embed_runs(database_url=db_url, limit=200, index_min_vectors=400)
    assert first.embedded == 200 and _graphs(db_url) == set()
    # the stored threshold holds: 600 runs >= 400 (a branch space counts the runs its distinct vectors serve)
    second = pipeline.embed_runs(database_url=db_url)
    assert _graphs(db_url) == {"joint", "config", "env", "outcome"} == set(second.graphs)
    assert any("HNSW graph(s) built for joint (vector), config (halfvec), env (halfvec), outcome (halfvec)" in note
               for note in second.notes), second.notes
    run_id, q = _joint_query(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute("ANALYZE historical_db.joint_embeddings")
    assert "Index Scan using joint_embeddings_vector_hnsw" in _plan(db_url, PLAIN, (q, q))


def test_the_indexed_spaces_are_stored_and_honoured_by_every_later_embed(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    summary = pipeline.embed_runs(database_url=db_url, indexed_spaces="joint,env", index_min_vectors=0)
    assert _graphs(db_url) == {"joint", "env"} and summary.graphs == ["joint", "env"]
    with psycopg.connect(db_url) as conn:
        assert graphs.read_settings(conn) == graphs.IndexSettings(("joint", "env"), 0)
        assert graphs.present(conn) == {("joint", "vector"), ("env", "halfvec")}
    pipeline.embed_runs(database_url=db_url)
    assert _graphs(db_url) == {"joint", "env"}
    widened = pipeline.embed_runs(database_url=db_url, indexed_spaces=["config", "joint", "env"])
    assert _graphs(db_url) == {"joint", "config", "env"} and widened.embedded == 0
    narrowed = pipeline.embed_runs(database_url=db_url, indexed_spaces="env")
    assert _graphs(db_url) == {"env"}
    assert any("HNSW graph(s) of joint (vector), config (halfvec) dropped" in note for note in narrowed.notes), \
        narrowed.notes
    pipeline.embed_runs(database_url=db_url, indexed_spaces="default")
    assert _graphs(db_url) == {"joint", "config", "env", "outcome"}


def test_the_config_space_has_its_graph_by_default_and_it_finds_every_config(db_url: str, runs_file: str) -> None:
    """Every run of a config shares its config vector. Over one copy per run, an HNSW graph could cut a whole
    config off from the walk (on 3,000 sample runs, one build in four left 20 of 200 queries unable to find
    their own config), so config had no graph. Since revision 0019 the graph is over the distinct configs."""
    pipeline.import_runs([runs_file], database_url=db_url)
    summary = pipeline.embed_runs(database_url=db_url, index_min_vectors=0)
    assert _graphs(db_url) == {"joint", "config", "env", "outcome"} and "config" in summary.graphs
    with psycopg.connect(db_url) as conn:
        runs = conn.execute("SELECT DISTINCT ON (config_id) run_id, config_id FROM historical_db.runs "
                            "ORDER BY config_id, run_id").fetchall()
    for run_id, config_id in runs:
        answer = CliRunner().invoke(cli, ["--database-url", db_url, "search", "--run", run_id, "--space", "config",
                                          "--format", "json"])
        assert answer.exit_code == 0, answer.output
        rows, notes = json.loads(answer.stdout)["rows"], json.loads(answer.stdout)["notes"]
        assert len(rows) == 10 and all(r["config_id"] == config_id and r["distance"] < 1e-5 for r in rows), rows
        assert not [note for note in notes if "no HNSW graph" in note], notes


def test_a_search_in_a_space_that_is_not_indexed_says_it_answered_exactly(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    result = CliRunner().invoke(cli, ["--database-url", db_url, "embed-runs", "--indexed-spaces", "joint,env",
                                      "--index-min-vectors", "0", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["graphs"] == ["joint", "env"]
    run_id, _ = _joint_query(db_url)
    for space, expected in (("config", True), ("outcome", True), ("env", False), ("joint", False)):
        answer = CliRunner().invoke(cli, ["--database-url", db_url, "search", "--run", run_id, "--space", space,
                                          "--format", "json"])
        assert answer.exit_code == 0, answer.output
        notes = json.loads(answer.stdout)["notes"]
        said = [note for note in notes if "no HNSW graph" in note]
        assert bool(said) == expected, (space, notes)
        if expected:
            assert "answered by exact search" in said[0] and f"note: {said[0]}" in answer.stderr
            assert len(json.loads(answer.stdout)["rows"]) == 10


def test_an_unknown_indexed_space_is_refused_naming_the_option(db_url: str) -> None:
    with pytest.raises(MetaspaceError, match="--indexed-spaces.*unknown space.*enviro"):
        pipeline.embed_runs(database_url=db_url, indexed_spaces="joint,enviro")
    with pytest.raises(MetaspaceError, match="--index-min-vectors"):
        pipeline.embed_runs(database_url=db_url, index_min_vectors=-1)


def test_downgrading_0012_refuses_to_forget_a_choice_unless_told(db_url: str, runs_file: str, tmp_path: Path) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    pipeline.embed_runs(database_url=db_url, indexed_spaces="env", index_min_vectors=0)
    with psycopg.connect(db_url) as conn:
        runs_before = conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
    with pytest.raises(MetaspaceError, match="historical_db.settings holds 2 choice"):
        migrate.downgrade(db_url, "0011_sql_encoders")
    assert migrate.status(db_url).up_to_date
    migrate.downgrade(db_url, "0011_sql_encoders", allow_data_loss=True)
    migrate.upgrade(db_url)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0] == runs_before == N
        assert graphs.read_settings(conn) == graphs.IndexSettings()
    # 0019's downgrade gives branch_embeddings back as a table (its graphs went with the entities), and its
    # upgrade copies it into entities: the branch graphs are embed-runs' to build again
    assert _graphs(db_url) == set()


def _index_scans(conn: psycopg.Connection, index: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (index,)).fetchone()
    return row[0] if row else 0


def test_by_default_branch_graphs_are_halfvec_and_the_searches_walk_them(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    summary = pipeline.embed_runs(database_url=db_url, index_min_vectors=0)
    assert summary.graph_types == {"joint": "vector", "config": "halfvec", "env": "halfvec", "outcome": "halfvec"}
    run_id, _ = _joint_query(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ANALYZE historical_db.branch_entities")
        before = _index_scans(conn, "branch_entities_env_halfvec_hnsw")
        walked = conn.execute("SELECT run_id, distance FROM historical_db.neighbours_v3(%s, 10, 'env')",
                              (run_id,)).fetchall()
        assert _index_scans(conn, "branch_entities_env_halfvec_hnsw") > before
        before = _index_scans(conn, "branch_entities_env_halfvec_hnsw")
        exact = conn.execute("SELECT run_id, distance FROM historical_db.neighbours_v3(%s, 10, 'env', "
                             "exact => true)", (run_id,)).fetchall()
        assert _index_scans(conn, "branch_entities_env_halfvec_hnsw") == before
        # the distances are the float32 distances of the stored vectors, nearest first
        float32 = dict(conn.execute(
            "SELECT b.run_id, b.vector <-> q.vector FROM historical_db.branch_embeddings b, "
            "(SELECT vector FROM historical_db.branch_embeddings WHERE run_id = %s AND branch = 'env') q "
            "WHERE b.branch = 'env' AND b.run_id = ANY(%s)", (run_id, [r for r, _ in walked])).fetchall())
    assert [d for _, d in walked] == sorted(d for _, d in walked)
    assert all(abs(distance - float32[run]) < 1e-9 for run, distance in walked)
    kth = exact[-1][1] + 1e-6
    assert sum(1 for _, distance in walked if distance <= kth) >= 9


def test_graph_type_decides_which_sql_form_uses_a_graph(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    pipeline.embed_runs(database_url=db_url, index_min_vectors=0, graph_type="vector")
    with psycopg.connect(db_url) as conn:
        assert graphs.present(conn) == {(space, "vector") for space in graphs.DEFAULT_SPACES}
    pipeline.embed_runs(database_url=db_url, graph_type="halfvec")
    with psycopg.connect(db_url) as conn:
        assert graphs.present(conn) == {(space, "halfvec") for space in graphs.DEFAULT_SPACES}
        conn.execute("ANALYZE historical_db.joint_embeddings")
    _, q = _joint_query(db_url)
    plain = _plan(db_url, PLAIN, (q, q))
    assert "hnsw" not in plain, plain  # the plain form has no float32 graph to use: an exact scan
    cast = _plan(db_url, "SELECT entity_scope->>'run_id' FROM historical_db.joint_embeddings "
                         "ORDER BY vector::halfvec(384) <-> %s::vector::halfvec(384) LIMIT 10", (q,))
    assert "Index Scan using joint_embeddings_halfvec_hnsw" in cast, cast
    with pytest.raises(MetaspaceError, match="--graph-type"):
        pipeline.embed_runs(database_url=db_url, graph_type="float16")
