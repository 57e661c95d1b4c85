"""The reader and writer roles, used the way the README says: granted to real login roles that then run
metaspace's commands end to end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.sample import write_runs
from metaspace.store import migrate


def _login(server_url: str, db_url: str, granted: str) -> Iterator[str]:
    name = f"login_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name)))
    yield make_conninfo(db_url, user=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def writer_url(server_url: str, db_url: str) -> Iterator[str]:
    yield from _login(server_url, db_url, "metaspace_writer")


@pytest.fixture
def reader_url(server_url: str, sample_db: str) -> Iterator[str]:
    yield from _login(server_url, sample_db, "metaspace_reader")


def test_a_writer_login_imports_and_embeds_end_to_end(writer_url: str, sample_history: list[dict],
                                                      tmp_path: Path) -> None:
    path = write_runs(sample_history[:600], tmp_path / "runs.jsonl")
    result = CliRunner().invoke(cli, ["--database-url", writer_url, "import-runs", str(path)])
    assert result.exit_code == 0, result.output
    summary = pipeline.embed_runs(database_url=writer_url)
    assert summary.embedded == 600 and summary.quarantined == []
    changed = dict(sample_history[0], outcome={"sharpe": 9.0})
    metaspace.embed_run(changed, database_url=writer_url)
    assert metaspace.search(run=changed["run_id"], k=3, database_url=writer_url)
    assert pipeline.embed_runs(database_url=writer_url, rebuild=True).switched_from == 1
    clustered = CliRunner().invoke(cli, ["--database-url", writer_url, "cluster", "--k", "3"])
    assert clustered.exit_code == 0, clustered.output


def test_a_writer_login_loads_a_large_backfill_with_the_indexes_in_place(
        writer_url: str, sample_history: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.import_records((("runs", i, r) for i, r in enumerate(sample_history[:300])), database_url=writer_url)
    monkeypatch.setattr(pipeline, "BULK_MIN", 100)
    graphs = ("SELECT indexname FROM pg_indexes WHERE schemaname = 'historical_db' AND indexdef LIKE '%USING hnsw%' "
              "ORDER BY 1")
    with psycopg.connect(writer_url) as conn:
        before = conn.execute(graphs).fetchall()
    summary = pipeline.embed_runs(database_url=writer_url)
    assert summary.embedded == 300 and not summary.index_rebuilt
    assert any("needs the tables' owner" in note for note in summary.notes)
    with psycopg.connect(writer_url) as conn:
        assert conn.execute(graphs).fetchall() == before == [("joint_embeddings_vector_hnsw",)]


def test_a_reader_login_searches_suggests_maps_and_reads_clusters(reader_url: str, sample_db: str,
                                                                   sample_history: list[dict],
                                                                   tmp_path: Path) -> None:
    metaspace.cluster(k=3, database_url=sample_db)
    run_id = sample_history[5]["run_id"]
    assert len(metaspace.search(run=run_id, k=5, database_url=reader_url)) == 5
    assert metaspace.suggest(sample_history[5]["env"], k=3, database_url=reader_url)
    out = tmp_path / "map.png"
    result = CliRunner().invoke(cli, ["--database-url", reader_url, "map", "--color", "cluster", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_a_reader_login_cannot_write_and_is_told_what_to_grant(reader_url: str, sample_history: list[dict],
                                                               tmp_path: Path) -> None:
    path = write_runs(sample_history[:5], tmp_path / "runs.jsonl")
    result = CliRunner().invoke(cli, ["--database-url", reader_url, "import-runs", str(path)])
    assert result.exit_code == 1
    assert "SQLSTATE 42501" in result.output and "GRANT metaspace_writer TO login_" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        metaspace.embed_run(dict(sample_history[0], run_id="new-run"), database_url=reader_url)


def test_rerunning_the_roles_file_gives_back_lost_grants_and_keeps_the_write_functions_the_writers_alone(
        db_url: str) -> None:
    """The README tells an administrator to rerun sql/roles_v3.sql (e.g. after creating the roles by hand, or
    after grants were lost): it gives back every grant a command needs, the calibrations table's included."""
    from metaspace.store.sqlfiles import read_sql

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("REVOKE ALL ON historical_db.suggest_calibrations FROM metaspace_reader, metaspace_writer")
        conn.execute(read_sql("roles_v3.sql"))
        granted = dict(conn.execute(
            "SELECT p.proname, has_function_privilege('metaspace_reader', p.oid, 'EXECUTE') FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'historical_db' "
            "AND p.proname IN ('store_run_v2', 'embed_pending_v1', 'search_runs_v2', 'encode_v1')").fetchall())
        writer_fits = conn.execute("SELECT has_table_privilege('metaspace_writer', 'historical_db.encoder_features', "
                                   "'INSERT')").fetchone()[0]
        calibrations = dict(conn.execute(
            "SELECT role || ' ' || privilege, "
            "has_table_privilege(role, 'historical_db.suggest_calibrations', privilege) "
            "FROM unnest(ARRAY['metaspace_reader', 'metaspace_writer']) role, "
            "unnest(ARRAY['SELECT', 'INSERT', 'DELETE', 'UPDATE']) privilege").fetchall())
    assert granted == {"store_run_v2": False, "embed_pending_v1": False, "search_runs_v2": True, "encode_v1": True}
    assert writer_fits
    # evaluate --save-calibration replaces a calibration by DELETE and INSERT; suggest_configs_v5 reads them
    assert calibrations == {"metaspace_reader SELECT": True, "metaspace_reader INSERT": False,
                            "metaspace_reader DELETE": False, "metaspace_reader UPDATE": False,
                            "metaspace_writer SELECT": True, "metaspace_writer INSERT": True,
                            "metaspace_writer DELETE": True, "metaspace_writer UPDATE": False}


@pytest.fixture
def other_admin(server_url: str, empty_db: str) -> Iterator[str]:
    """A URL on ``empty_db`` as a second superuser: an administrator other than the one who ran the first
    migrations, whose default privileges (revision 0008's) do not apply to the tables it creates."""
    name = f"admin_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(name)))
    yield make_conninfo(empty_db, user=name)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def empty_db_reader_url(server_url: str, template_url: str, empty_db: str) -> Iterator[str]:
    yield from _login(server_url, empty_db, "metaspace_reader")


def test_a_reader_login_suggests_when_another_administrator_created_the_calibrations_table(
        empty_db: str, other_admin: str, empty_db_reader_url: str, sample_history: list[dict]) -> None:
    migrate.upgrade(empty_db, "0014_asof_tail")  # 0008's default privileges are this administrator's
    migrate.upgrade(other_admin)
    with psycopg.connect(empty_db) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'historical_db' "
                             "AND tablename = 'suggest_calibrations'").fetchone()[0]
    assert owner == conninfo_to_dict(other_admin)["user"]
    pipeline.import_records((("runs", i, r) for i, r in enumerate(sample_history[:300])), database_url=empty_db)
    pipeline.embed_runs(database_url=empty_db)
    assert metaspace.suggest(sample_history[5]["env"], k=3, database_url=empty_db_reader_url)


@pytest.fixture
def reader_writer(server_url: str, sample_db: str) -> Iterator[tuple[str, str]]:
    readers, writers = _login(server_url, sample_db, "metaspace_reader"), _login(server_url, sample_db,
                                                                                 "metaspace_writer")
    yield next(readers), next(writers)
    for login in (readers, writers):
        next(login, None)


DDL = ["CREATE TABLE historical_db.planted (x int)", "DROP TABLE historical_db.runs",
       "ALTER TABLE historical_db.runs ADD COLUMN planted int", "TRUNCATE historical_db.joint_embeddings",
       "CREATE FUNCTION historical_db.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
       "CREATE OR REPLACE FUNCTION historical_db.encode(text, jsonb) RETURNS vector LANGUAGE sql AS 'SELECT NULL'",
       "CREATE INDEX planted ON historical_db.runs (strategy_id)", "GRANT metaspace_writer TO CURRENT_USER"]


def test_a_reader_cannot_write_or_run_ddl_and_a_writer_cannot_run_ddl(reader_writer: tuple[str, str]) -> None:
    reader, writer = reader_writer
    writes = ["INSERT INTO historical_db.runs (run_id) VALUES ('planted')", "DELETE FROM historical_db.runs",
              "UPDATE historical_db.settings SET value = value", "DELETE FROM historical_db.suggest_calibrations"]
    for url, refused in ((reader, writes + DDL), (writer, DDL)):
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in refused:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)


def test_search_path_tricks_from_a_reader_login_change_no_answer(reader_url: str, sample_history: list[dict]
                                                                   ) -> None:
    """A reader shadows what the functions use (a temporary table named like theirs, temporary and public
    functions named like built-ins, its own search_path first): each stable function pins its search_path
    (pg_catalog first, pg_temp last) and names its own objects with their schema, so every answer is the same."""
    env = sample_history[3]["env"]
    asks = [("SELECT run_id, distance FROM historical_db.search_record(%s, 5)", (Jsonb(sample_history[3]),)),
            ("SELECT config_id FROM historical_db.suggest_for_env(%s, 3)", (Jsonb(env),)),
            ("SELECT run_id FROM historical_db.neighbours(%s, 5)", (sample_history[3]["run_id"],)),
            ("SELECT historical_db.encode('env', %s)::text", (Jsonb(env),))]
    with psycopg.connect(reader_url, autocommit=True) as conn:
        clean = [conn.execute(q, p).fetchall() for q, p in asks]
        conn.execute("CREATE TEMP TABLE runs AS SELECT * FROM historical_db.runs LIMIT 0")
        conn.execute("CREATE TEMP TABLE joint_embeddings AS SELECT * FROM historical_db.joint_embeddings LIMIT 0")
        conn.execute("CREATE TEMP TABLE settings (name text, value jsonb)")
        conn.execute("CREATE FUNCTION pg_temp.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $$SELECT 'null'$$")
        conn.execute("CREATE FUNCTION pg_temp.coalesce_planted(int) RETURNS int LANGUAGE sql AS $$SELECT 1$$")
        conn.execute("SET search_path = pg_temp, public, historical_db")
        assert [conn.execute(q, p).fetchall() for q, p in asks] == clean


def test_a_password_is_never_printed(server_url: str, sample_db: str, tmp_path: Path) -> None:
    """A login with a password, in the URL: not in any command's output or error, --format json, db check, nor
    in the server's log."""
    secret = f"Pw{uuid.uuid4().hex}"
    name = f"login_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE metaspace_reader").format(
            sql.Identifier(name), sql.Literal(secret)))
    params = conninfo_to_dict(sample_db)
    url = make_conninfo(sample_db, user=name, password=secret)  # host, port and database as the suite's
    try:
        said = []
        for args in (["search", "--run", "nope", "--format", "json"], ["suggest", "--env", "-", "--format", "json"],
                     ["db", "check", "--format", "json"], ["import-runs", str(tmp_path / "missing.jsonl")],
                     ["migrate", "--status"], ["evaluate", "--objective", "planted", "--format", "json"]):
            result = CliRunner().invoke(cli, ["--database-url", url, *args], input='{"realized_vol": 0.2}')
            said.append(result.output + repr(result.exception))
        wrong = CliRunner().invoke(cli, ["--database-url", make_conninfo(url, dbname="no_such_db"), "db", "check"])
        said.append(wrong.output + repr(wrong.exception))
        assert all(secret not in text for text in said), [text for text in said if secret in text]
        assert any("no_such_db" in text for text in said)  # the error was there to read
        log = Path(params.get("host") or ".") / "log"  # the embedded server's, beside its socket
        assert not log.exists() or secret not in log.read_text(errors="replace")
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
