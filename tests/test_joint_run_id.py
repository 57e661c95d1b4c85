"""joint_embeddings.run_id (revision 0016): a real column holding each row's run, the distribution column a
Citus cluster needs (docs/scaling.md). Every writer fills it with the scope's run_id, a row cannot disagree
with its scope, one vector per (joint type, model, run, encoder version) still holds, and the migration
keeps every row both ways."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb

from metaspace import pipeline
from metaspace.sample import sample_runs, write_runs
from metaspace.store import migrate
from metaspace.store.connection import connect

BEFORE = "0015_suggest_calibration"
DISAGREEING = ("SELECT count(*) FROM historical_db.joint_embeddings "
               "WHERE run_id IS DISTINCT FROM coalesce(entity_scope ->> 'run_id', run_id)")


@pytest.fixture
def embedded_db(db_url: str, tmp_path: Path) -> str:
    """60 runs written by the bulk path (embed-runs), then one by the online path (embed_run) and five by
    the SQL-only path (embed_pending_v1)."""
    runs = sample_runs(66, seed=5)
    pipeline.import_runs([str(write_runs(runs[:60], tmp_path / "bulk.jsonl"))], database_url=db_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.embed_runs(database_url=db_url)
    pipeline.embed_run(runs[60], database_url=db_url)
    pipeline.import_runs([str(write_runs(runs[61:], tmp_path / "pending.jsonl"))], database_url=db_url)
    with connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT embedded FROM historical_db.embed_pending_v1(100)").fetchone()[0] == 5
    return db_url


def test_every_write_path_writes_the_scope_run_id_into_the_column(embedded_db: str) -> None:
    with connect(embedded_db) as conn:
        rows = conn.execute("SELECT run_id, entity_scope ->> 'run_id' FROM historical_db.joint_embeddings").fetchall()
        stored = {run_id for (run_id,) in conn.execute("SELECT run_id FROM historical_db.runs")}
    assert len(rows) == 66
    assert all(column == scope for column, scope in rows)
    assert {column for column, _ in rows} == stored


def test_a_row_whose_run_id_disagrees_with_its_scope_is_refused(conn: psycopg.Connection) -> None:
    insert = ("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, run_id) "
              "VALUES ('OTHER_V1', '2024-01-02', %s, 'm', %s)")
    with pytest.raises(psycopg.errors.CheckViolation, match="joint_embeddings_run_id_matches"):
        conn.execute(insert, (Jsonb({"run_id": "R1"}), "R2"))
    conn.execute(insert, (Jsonb({"run_id": "R1"}), "R1"))
    with pytest.raises(psycopg.errors.CheckViolation, match="joint_embeddings_run_id_matches"):
        conn.execute("UPDATE historical_db.joint_embeddings SET entity_scope = '{\"run_id\": \"R3\"}'")
    # A row of another joint type whose scope names no run may be placed with any run it chooses.
    conn.execute(insert, (Jsonb({"source": "macro"}), "R1"))


def test_a_writer_that_does_not_know_the_column_gets_the_scope_run_id(conn: psycopg.Connection) -> None:
    """Old clients and other teams' programs insert the source document's columns only."""
    conn.execute("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id) "
                 "VALUES ('OTHER_V1', '2024-01-02', '{\"run_id\": \"R1\"}', 'm'), "
                 "('MACRO_V2', '2024-01-02', '{\"source\": \"macro\"}', 'm')")
    rows = conn.execute("SELECT joint_type, run_id, 'legacy:' || embedding_id FROM historical_db.joint_embeddings "
                        "ORDER BY joint_type").fetchall()
    assert rows[0][1] == rows[0][2]  # MACRO_V2: no run in its scope
    assert rows[1][1] == "R1"


def test_one_vector_per_joint_type_model_run_and_version_holds_on_the_column(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, fitted_on_runs) "
                 "VALUES (1, 'joint-meta-config-env-v1', '{}', %s, 0)", ("c" * 64,))
    insert = ("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, "
              "encoder_version, run_id) VALUES ('META_CONFIG_ENV_V0', '2024-01-01', '{\"run_id\": \"R1\"}', "
              "'joint-meta-config-env-v1', 1, 'R1')")
    conn.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation, match="joint_embeddings_one_per_run"):
        conn.execute(insert)
    index = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'joint_embeddings_one_per_run'").fetchone()
    assert "(joint_type, model_id, run_id, encoder_version)" in index[0], index


def test_both_write_paths_write_a_run_once_per_version(embedded_db: str) -> None:
    with connect(embedded_db) as conn:
        done = [dict(zip(("run_id", "as_of_date", "config_id", "strategy_id", "config", "env", "outcome"), row))
                for row in conn.execute("SELECT run_id, as_of_date::text, config_id, strategy_id, config, env, "
                                        "outcome FROM historical_db.runs ORDER BY run_id LIMIT 3").fetchall()]
    for record in done:  # the online path, again, on runs already written
        pipeline.embed_run(record, database_url=embedded_db)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.embed_runs(database_url=embedded_db)  # the bulk path finds nothing left
    with connect(embedded_db, autocommit=True) as conn:
        assert conn.execute("SELECT embedded FROM historical_db.embed_pending_v1(100)").fetchone()[0] == 0
        counts = conn.execute("SELECT count(*), count(DISTINCT (joint_type, model_id, run_id, encoder_version)) "
                              "FROM historical_db.joint_embeddings").fetchone()
    assert counts == (66, 66)


def test_old_clients_store_run_v1_and_v2_still_write(embedded_db: str) -> None:
    """store_run_v1 and _v2 take the same arguments and keep working (they now hand over to store_run_v3)."""
    from metaspace.fitted import load_space

    record = sample_runs(70, seed=5)[69]
    with connect(embedded_db, autocommit=True) as conn:
        version, fingerprint = conn.execute(
            "SELECT version, fingerprint FROM historical_db.encoder_versions WHERE is_active").fetchone()
        vectors = load_space(conn, version).encode([record]).vectors()  # one run, four spaces
        for name, run_id in (("store_run_v1", "OLD_V1"), ("store_run_v2", "OLD_V2")):
            conn.execute(f"SELECT historical_db.{name}(%s, %s, %s, %s, %s, %s, %s, %s)",
                         (Jsonb(dict(record, run_id=run_id)), "d" * 64, version, fingerprint,
                          *(vectors[space][0] for space in ("joint", "config", "env", "outcome"))))
        rows = conn.execute("SELECT run_id, entity_scope ->> 'run_id' FROM historical_db.joint_embeddings "
                            "WHERE run_id LIKE 'OLD_%' ORDER BY 1").fetchall()
    assert rows == [("OLD_V1", "OLD_V1"), ("OLD_V2", "OLD_V2")]


def _digest(url: str) -> tuple[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT embedding_id, joint_type, as_of_date, entity_scope, model_id, vector::text, "
                            "encoder_version FROM historical_db.joint_embeddings ORDER BY embedding_id").fetchall()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.mark.parametrize("concurrently", [False, True])
def test_upgrade_fills_the_column_and_downgrade_loses_no_row(empty_db: str, concurrently: bool) -> None:
    migrate.upgrade(empty_db, BEFORE)
    rng = np.random.default_rng(4)
    with psycopg.connect(empty_db) as conn:
        with conn.cursor().copy("COPY historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, "
                                "vector) FROM STDIN") as copy:
            for i in range(2_500):
                scope = {"run_id": f"R{i:05d}", "source": "meta-config-env"} if i % 5 else {"source": "macro"}
                vector = "[" + ",".join(f"{x:.6f}" for x in rng.standard_normal(384)) + "]"
                copy.write_row(("META_CONFIG_ENV_V0" if i % 2 else "MACRO_V2", "2024-01-02", Jsonb(scope),
                                "joint-meta-config-env-v1", vector))
    before = _digest(empty_db)

    migrate.upgrade(empty_db, concurrently=concurrently)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.joint_embeddings WHERE run_id IS NULL").fetchone()[0] == 0
        assert conn.execute(DISAGREEING).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM historical_db.joint_embeddings WHERE NOT entity_scope ? 'run_id' "
                            "AND run_id = 'legacy:' || embedding_id").fetchone()[0] == 500
        nullable = conn.execute("SELECT is_nullable FROM information_schema.columns WHERE table_schema = "
                                "'historical_db' AND table_name = 'joint_embeddings' AND column_name = 'run_id'"
                                ).fetchone()
    assert nullable == ("NO",)
    assert _digest(empty_db) == before

    migrate.downgrade(empty_db, BEFORE)
    assert _digest(empty_db) == before
    with psycopg.connect(empty_db) as conn:
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'joint_embeddings_one_per_run'"
                             ).fetchone()[0]
    assert "entity_scope ->> 'run_id'" in index
    migrate.upgrade(empty_db)
    assert _digest(empty_db) == before


@pytest.mark.parametrize("concurrently", [False, True])
def test_an_interrupted_concurrent_upgrade_completes_on_rerun(empty_db: str, concurrently: bool) -> None:
    """--concurrently commits as it goes: a run stopped midway leaves the column, the trigger, some filled
    rows and perhaps the new index; the next migrate, either way, finishes the job."""
    migrate.upgrade(empty_db, BEFORE)
    with psycopg.connect(empty_db) as conn:
        conn.execute("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id) "
                     "SELECT 'OTHER_V1', '2024-01-02', jsonb_build_object('run_id', 'R' || i), 'm' "
                     "FROM generate_series(1, 30) i")
        conn.execute("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id) "
                     "VALUES ('MACRO_V2', '2024-01-02', '{}', 'm')")
    before = _digest(empty_db)
    with psycopg.connect(empty_db) as conn:  # what the first committed steps leave behind
        conn.execute("ALTER TABLE historical_db.joint_embeddings ADD COLUMN run_id text")
        conn.execute("UPDATE historical_db.joint_embeddings SET run_id = entity_scope ->> 'run_id' "
                     "WHERE embedding_id <= 10")
        conn.execute("CREATE UNIQUE INDEX joint_embeddings_one_per_run_0016 ON historical_db.joint_embeddings "
                     "(joint_type, model_id, run_id, encoder_version) WHERE encoder_version IS NOT NULL")
    migrate.upgrade(empty_db, concurrently=concurrently)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.joint_embeddings WHERE run_id IS NULL").fetchone()[0] == 0
        assert conn.execute(DISAGREEING).fetchone()[0] == 0
    assert _digest(empty_db) == before
    assert migrate.status(empty_db).up_to_date


def test_downgrade_refuses_to_forget_a_run_id_a_writer_chose(db_url: str) -> None:
    from metaspace.errors import MetaspaceError

    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, "
                     "run_id) VALUES ('MACRO_V2', '2024-01-02', '{}', 'm', 'R1')")
    with pytest.raises(MetaspaceError, match="1 row.* given a run_id by their writer"):
        migrate.downgrade(db_url, BEFORE)
    assert migrate.status(db_url).up_to_date
    migrate.downgrade(db_url, BEFORE, allow_data_loss=True)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.joint_embeddings").fetchone()[0] == 1


def _index_scans(conn: psycopg.Connection, index: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = 'historical_db' "
                        "AND indexrelname = %s", (index,)).fetchone()[0]


def test_the_released_lookups_by_the_scope_run_id_still_use_an_index(embedded_db: str) -> None:
    """0016 first replaced the unique index on (entity_scope ->> 'run_id') by one on the column, and the
    released neighbours functions, which find a run's vector by the expression, read every row instead."""
    with connect(embedded_db, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # 66 rows: make the planner show which index it can use
        run_id = conn.execute("SELECT min(run_id) FROM historical_db.runs").fetchone()[0]
        before = _index_scans(conn, "joint_embeddings_scope_run_id")
        for function in ("neighbours_v1", "neighbours_v2", "neighbours_v3"):
            assert conn.execute(f"SELECT count(*) FROM historical_db.{function}(%s, 5)", (run_id,)).fetchone()[0] == 5
        assert _index_scans(conn, "joint_embeddings_scope_run_id") >= before + 3


def test_downgrade_keeps_execute_granted_on_the_released_writers(db_url: str) -> None:
    role = "metaspace_test_granted_writer"
    signature = "historical_db.store_run_v2(jsonb, text, integer, text, vector, vector, vector, vector, bytea)"
    with connect(db_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")
    try:
        migrate.downgrade(db_url, BEFORE)
        with connect(db_url, autocommit=True) as conn:
            assert conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, signature)).fetchone()[0]
        migrate.upgrade(db_url)
        with connect(db_url, autocommit=True) as conn:
            assert conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, signature)).fetchone()[0]
    finally:
        with connect(db_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
