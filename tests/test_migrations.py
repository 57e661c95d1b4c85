"""The migration chain, against real PostgreSQL with pgvector."""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg
import pytest

from metaspace.errors import MetaspaceError, SchemaBehindError
from metaspace.store import migrate
from metaspace.store.connection import connect

DIM = 384


def _table_digest(url: str, columns: str) -> tuple[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT {columns} FROM historical_db.joint_embeddings ORDER BY entity_scope->>'run_id'"  # noqa: S608
        ).fetchall()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def _column_types(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_schema = 'historical_db' AND table_name = 'joint_embeddings' ORDER BY ordinal_position"
        ).fetchall()


def _make_legacy_table(url: str, n: int, bad: dict[int, bytes | None]) -> dict[str, bytes | None]:
    """The source document's form: vector as little-endian float32 bytes, mixed joint types."""
    rng = np.random.default_rng(7)
    blobs: dict[str, bytes | None] = {}
    with psycopg.connect(url) as conn:
        conn.execute("CREATE SCHEMA historical_db")
        conn.execute(
            "CREATE TABLE historical_db.joint_embeddings (joint_type text, as_of_date date, entity_scope jsonb, "
            "model_id text, vector bytea)"
        )
        conn.execute("COMMENT ON TABLE historical_db.joint_embeddings IS 'written by the research pipeline'")
        with conn.cursor().copy(
            "COPY historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, vector) FROM STDIN"
        ) as copy:
            for i in range(n):
                run_id = f"RUN_{i:06d}"
                blob = bad[i] if i in bad else rng.standard_normal(DIM).astype("<f4").tobytes()
                blobs[run_id] = blob
                joint_type = ("META_CONFIG_ENV_V0", "PRICE_NEWS_V1", "MACRO_V2")[i % 3]
                scope = psycopg.types.json.Jsonb({"run_id": run_id, "source": "legacy"})
                copy.write_row((joint_type, f"2020-01-{1 + i % 28:02d}", scope, "legacy-model", blob))
    return blobs


def test_upgrade_from_empty_reaches_head_and_reports_pgvector(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    state = migrate.status(empty_db)
    assert state.up_to_date and state.pending == []
    assert tuple(int(p) for p in state.pgvector.split(".")[:2]) >= (0, 8)
    assert ("vector", "vector") in _column_types(empty_db)


def test_legacy_float32_table_converts_bit_exact_and_downgrades_to_original(empty_db: str) -> None:
    nan = np.zeros(DIM, dtype="<f4")
    nan[5] = np.nan
    inf = np.ones(DIM, dtype="<f4")
    inf[0] = np.inf
    bad = {17: b"\x00" * 100, 4242: nan.tobytes(), 9000: inf.tobytes(), 9999: None}
    blobs = _make_legacy_table(empty_db, 10_000, bad)
    before = _table_digest(empty_db, "joint_type, as_of_date, entity_scope, model_id, vector")
    original_columns = _column_types(empty_db)

    messages = migrate.upgrade(empty_db)
    assert any("4 legacy row(s) kept with a NULL vector" in m for m in messages), messages

    with connect(empty_db) as conn:
        rows = conn.execute(
            "SELECT entity_scope->>'run_id', vector, vector_f32 FROM historical_db.joint_embeddings"
        ).fetchall()
        report = conn.execute(
            "SELECT bad_row_count, cardinality(bad_row_ids) FROM historical_db.metaspace_legacy_conversion"
        ).fetchone()
    assert len(rows) == 10_000
    assert report == (4, 4)
    for run_id, vector, raw in rows:
        original = blobs[run_id]
        assert (bytes(raw) if raw is not None else None) == original, run_id
        index = int(run_id.split("_")[1])
        if index in bad:
            assert vector is None, run_id
        else:
            assert vector.to_numpy().astype("<f4").tobytes() == original, run_id

    migrate.downgrade(empty_db, "base")
    assert _column_types(empty_db) == original_columns
    assert _table_digest(empty_db, "joint_type, as_of_date, entity_scope, model_id, vector") == before
    with psycopg.connect(empty_db) as conn:
        comment = conn.execute("SELECT obj_description('historical_db.joint_embeddings'::regclass)").fetchone()[0]
    assert comment == "written by the research pipeline"


def test_upgrade_downgrade_upgrade_keeps_stored_vectors(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    vec = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    with connect(empty_db) as conn:
        conn.execute(
            "INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, vector) "
            "VALUES ('OTHER_V1', '2024-01-02', '{\"run_id\": \"R1\"}', 'm', %s)",
            (vec,),
        )
        conn.commit()
    migrate.downgrade(empty_db, "base")
    with psycopg.connect(empty_db) as conn:
        (blob,) = conn.execute("SELECT vector FROM historical_db.joint_embeddings").fetchone()
    assert bytes(blob) == vec.astype("<f4").tobytes()
    migrate.upgrade(empty_db)
    with connect(empty_db) as conn:
        (back,) = conn.execute("SELECT vector FROM historical_db.joint_embeddings").fetchone()
    assert np.array_equal(back.to_numpy(), vec)


def test_downgrade_refuses_to_drop_stored_runs(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO historical_db.runs (run_id, as_of_date, record_sha256) VALUES ('R1', '2024-01-01', %s)",
            ("0" * 64,),
        )
    with pytest.raises(MetaspaceError, match="historical_db.runs holds 1 rows"):
        migrate.downgrade(db_url, "base")
    assert migrate.status(db_url).up_to_date
    migrate.downgrade(db_url, "base", allow_data_loss=True)
    assert migrate.status(db_url).current is None


def test_commands_refuse_a_database_that_is_behind(empty_db: str) -> None:
    from metaspace.store.connection import connection

    migrate.upgrade(empty_db, "0003_runs_and_encoder_registry")
    with pytest.raises(SchemaBehindError, match="run `metaspace migrate`"):
        with connection(empty_db):
            pass


def test_migrate_sql_applies_cleanly_on_an_empty_database(empty_db: str) -> None:
    script = migrate.sql()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(script)
    assert migrate.status(empty_db).up_to_date


def test_concurrent_index_build_reaches_the_same_indexes(empty_db: str, db_url: str) -> None:
    migrate.upgrade(empty_db, concurrently=True)
    query = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'historical_db' ORDER BY 1"
    with psycopg.connect(empty_db) as a, psycopg.connect(db_url) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()


def test_plain_sql_knn_uses_the_hnsw_index(conn: psycopg.Connection) -> None:
    rng = np.random.default_rng(3)
    with conn.cursor().copy(
        "COPY historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, vector) "
        "FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["text", "date", "jsonb", "text", "vector"])
        import datetime

        for i in range(3000):
            copy.write_row(
                (
                    "META_CONFIG_ENV_V0" if i % 2 else "OTHER_V1",
                    datetime.date(2024, 1, 1),
                    psycopg.types.json.Jsonb({"run_id": f"R{i}"}),
                    "joint-meta-config-env-v1",
                    rng.standard_normal(DIM).astype(np.float32),
                )
            )
    conn.execute("ANALYZE historical_db.joint_embeddings")
    q = rng.standard_normal(DIM).astype(np.float32)
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            "EXPLAIN SELECT entity_scope->>'run_id' AS run_id, vector <-> %s AS distance "
            "FROM historical_db.joint_embeddings WHERE joint_type = 'META_CONFIG_ENV_V0' "
            "ORDER BY vector <-> %s LIMIT 10",
            (q, q),
        ).fetchall()
    )
    assert "joint_embeddings_vector_hnsw" in plan, plan


def test_registered_encoder_version_cannot_change(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, fitted_on_runs) "
        "VALUES (1, 'joint-meta-config-env-v1', '{}', %s, 0)",
        ("a" * 64,),
    )
    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("UPDATE historical_db.encoder_versions SET state = '{\"x\": 1}' WHERE version = 1")
    conn.execute("UPDATE historical_db.encoder_versions SET is_active = true WHERE version = 1")


def test_the_same_run_cannot_be_written_twice_for_one_version(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, fitted_on_runs) "
        "VALUES (1, 'joint-meta-config-env-v1', '{}', %s, 0)",
        ("b" * 64,),
    )
    insert = (
        "INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, "
        "encoder_version) VALUES ('META_CONFIG_ENV_V0', '2024-01-01', '{\"run_id\": \"R1\"}', "
        "'joint-meta-config-env-v1', 1)"
    )
    conn.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert)


POSTGRES_15 = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="module")
def postgres_15():
    """A PostgreSQL 15 server (Debian's package, without pgvector), as its own system user."""
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    if not os.path.exists(f"{POSTGRES_15}/postgres"):
        pytest.skip(f"no PostgreSQL 15 at {POSTGRES_15} (Debian's postgresql-15 package)")
    user = "postgres" if os.geteuid() == 0 else None
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root and no 'postgres' system user to run PostgreSQL 15 as")
    home = Path(tempfile.mkdtemp(prefix="metaspace-pg15-"))  # not under pytest's root-only basetemp
    data = home / "data"
    data.mkdir()
    if user is not None:
        shutil.chown(data.parent, user)
        shutil.chown(data, user)
    run = ["runuser", "-u", user, "--"] if user else []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*run, f"{POSTGRES_15}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*run, f"{POSTGRES_15}/pg_ctl", "start", "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=''"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@/postgres?host={data}&port={port}"
    finally:
        subprocess.run([*run, f"{POSTGRES_15}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_migrate_refuses_a_server_older_than_16_naming_both_versions(postgres_15: str) -> None:
    """Before, migrate succeeded on 15 and every suggest and evaluate then failed (pg_input_is_valid is 16's)."""
    with pytest.raises(MetaspaceError, match=r"this server is PostgreSQL 15\.[0-9]+; metaspace needs PostgreSQL 16"):
        migrate.upgrade(postgres_15)
    with psycopg.connect(postgres_15) as conn:
        assert conn.execute("SELECT to_regclass('public.metaspace_schema_version')").fetchone()[0] is None
