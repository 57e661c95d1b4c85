"""``metaspace migrate`` and ``metaspace db`` through click's CliRunner; effects checked through the API."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from metaspace.cli import cli
from metaspace.store import migrate

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


def test_migrate_upgrades_an_empty_database(empty_db: str) -> None:
    result = run("--database-url", empty_db, "migrate")
    assert result.exit_code == 0, result.output
    assert migrate.status(empty_db).up_to_date


def test_migrate_status_reports_pending_revisions_as_json(empty_db: str) -> None:
    result = run("migrate", "--database-url", empty_db, "--status", "--format", "json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["current"] is None and info["pending"] == list(migrate.revisions())


def test_migrate_to_and_downgrade(empty_db: str) -> None:
    assert run("migrate", "--to", "0002_joint_embeddings", env={"METASPACE_DATABASE_URL": empty_db}).exit_code == 0
    assert migrate.status(empty_db).current == "0002_joint_embeddings"
    result = run("migrate", "--database-url", empty_db, "--downgrade", "base")
    assert result.exit_code == 0, result.output
    assert migrate.status(empty_db).current is None


def test_migrate_sql_prints_ddl_without_touching_the_database(empty_db: str) -> None:
    result = run("migrate", "--database-url", empty_db, "--sql")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE historical_db.joint_embeddings" in result.output
    assert migrate.status(empty_db).current is None


def test_migrate_never_prints_a_password(empty_db: str) -> None:
    url = "postgresql://alice:s3cret-pw@127.0.0.1:1/nowhere"
    result = run("migrate", "--database-url", url, "--status")
    assert result.exit_code != 0
    assert "s3cret-pw" not in result.output


def test_a_failed_migration_is_a_clear_error_not_a_traceback(empty_db: str) -> None:
    result = run("migrate", "--database-url", empty_db, "--to", "0009_no_such_revision")
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output


def test_db_commands_manage_an_embedded_server(tmp_path: Path) -> None:
    env = {"METASPACE_HOME": str(tmp_path), "METASPACE_DATABASE_URL": ""}
    assert json.loads(run("db", "status", "--format", "json", env=env).output)["initialised"] is False
    started = run("db", "start", env=env)
    assert started.exit_code == 0, started.output
    url = run("db", "url", env=env).output.strip()
    assert url == started.stdout.strip()
    status = json.loads(run("db", "status", "--format", "json", env=env).output)
    assert status["running"] and status["pid"]
    assert status["pg_stat_statements"] is True and status["pg_prewarm"] is True
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        assert conn.execute("SHOW shared_buffers").fetchone()[0] != "128MB"
    assert run("db", "stop", env=env).output.strip() == "stopped"
    stopped = json.loads(run("db", "status", "--format", "json", env=env).output)
    assert stopped["running"] is False and stopped["pg_stat_statements"] is None
    assert run("db", "stop", env=env).output.strip() == "not running"


def test_wheel_ships_migrations_and_sql_and_migrates_from_another_folder(
    tmp_path: Path, empty_db: str
) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
    )
    (wheel,) = wheel_dir.glob("metaspace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "metaspace/migrations/env.py" in names
    assert any(n.startswith("metaspace/migrations/versions/0001_") for n in names)
    assert "metaspace/sql/vector_indexes_v1.sql" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "METASPACE_DATABASE_URL": empty_db, "PATH": "/usr/bin:/bin"}
    probe = subprocess.run(
        [sys.executable, "-c", "import metaspace; print(metaspace.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.startswith(str(target)), probe.stdout
    done = subprocess.run(
        [sys.executable, "-m", "metaspace", "migrate"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert migrate.status(empty_db).up_to_date


@pytest.mark.parametrize("command", ["migrate", "db"])
def test_help_has_an_example(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output
