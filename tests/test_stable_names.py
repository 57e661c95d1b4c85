"""The stable SQL names (sql/stable_v1.sql): they exist as docs/sql.md names them, a reader login calls them,
they answer as the command line does, and nothing metaspace ships calls a superseded version."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb
from test_roles import _login

import metaspace
from metaspace.cli import cli

DOCS = Path(__file__).parents[1] / "docs" / "sql.md"
PACKAGE = Path(metaspace.__file__).parent
STABLE = ("encode", "search_runs", "neighbours", "search_record", "suggest_configs", "suggest_for_env", "store_run",
          "embed_pending")


@pytest.fixture(scope="module")
def reader(server_url: str, sample_db: str) -> Iterator[str]:
    yield from _login(server_url, sample_db, "metaspace_reader")


def _functions(conn: psycopg.Connection) -> set[str]:
    return {name for (name,) in conn.execute(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'historical_db'").fetchall()}


def test_every_stable_name_is_installed_and_names_no_version(conn: psycopg.Connection) -> None:
    assert set(STABLE) <= _functions(conn)


def test_every_function_the_sql_reference_names_is_installed(conn: psycopg.Connection) -> None:
    named = set(re.findall(r"historical_db\.([a-z_0-9]+)\(", DOCS.read_text(encoding="utf-8")))
    assert set(STABLE) <= named, "docs/sql.md must show every stable name"
    assert named - _functions(conn) == set()


def _superseded(conn: psycopg.Connection) -> set[str]:
    """Functions with a later version installed beside them (suggest_configs_v5 while v6 is there)."""
    names = _functions(conn)
    latest: dict[str, int] = {}
    for name in names:
        match = re.fullmatch(r"(.+)_v([0-9]+)", name)
        if match:
            latest[match.group(1)] = max(latest.get(match.group(1), 0), int(match.group(2)))
    return {name for name in names if (m := re.fullmatch(r"(.+)_v([0-9]+)", name))
            and int(m.group(2)) < latest[m.group(1)]}


def test_nothing_metaspace_ships_calls_a_superseded_version(conn: psycopg.Connection) -> None:
    superseded = _superseded(conn)
    assert {"suggest_configs_v5", "search_runs_v2", "store_run_v2", "nearest_runs_v1"} <= superseded
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text(encoding="utf-8")
        if path.relative_to(PACKAGE).as_posix() == "store/evaluation.py":
            # evaluate's ranking= replays a released ranking by name, for the benchmarks that compare them
            text = re.sub(r"RANKINGS = \{.*?\}\n", "", text, flags=re.DOTALL)
        if path.name == "models.py":
            # the SQLAlchemy mappings of every released version, for an application that pins one
            text = re.sub(r"\ndef [a-z_]+_v[0-9]+\(.*?(?=\n\n\n)", "", text, flags=re.DOTALL)
            text = re.sub(r"__all__ = \[.*?\]", "", text, flags=re.DOTALL)
        calls += [(path.name, name) for name in re.findall(r"historical_db\.([a-z_0-9]+)", text) if name in superseded]
        calls += [(path.name, name) for name in re.findall(r'"([a-z_0-9]+_v[0-9]+)"', text) if name in superseded]
    assert calls == []


def _cli_json(*args: str) -> list[dict]:
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _same_rows(sql_rows: list[tuple], cli_rows: list[dict], columns: tuple[str, ...], distance: str) -> None:
    assert [tuple(r[c] for c in columns) for r in cli_rows] == [row[:len(columns)] for row in sql_rows]
    assert [r[distance] for r in cli_rows] == pytest.approx([row[-1] for row in sql_rows], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("space", ["joint", "env", "outcome", "config"])
def test_search_record_answers_as_the_cli_from_a_reader_login(reader: str, sample_history: list[dict], space: str,
                                                             tmp_path: Path) -> None:
    for run in sample_history[200:203]:
        record = {"run_id": run["run_id"], "config": run["config"], "env": run["env"]}  # outcome imputed in joint
        if space != "joint":
            record = {space: run[space] if space != "outcome" else run["outcome"]}
        path = tmp_path / "q.json"
        path.write_text(json.dumps(record))
        [answer] = _cli_json("--database-url", reader, "search", "--record", str(path), "--space", space, "-k", "8",
                             "--as-of", "2012-06-30", "--exact")
        with psycopg.connect(reader) as conn:
            rows = conn.execute("SELECT run_id, as_of_date::text, distance FROM historical_db.search_record("
                                "%s, k => 8, space => %s, as_of => '2012-06-30', exact => true)",
                                (Jsonb(record), space)).fetchall()
        assert rows
        _same_rows(rows, answer["rows"], ("run_id", "as_of_date"), "distance")


@pytest.mark.parametrize("objective, higher", [("sharpe", True), ("outcome.max_drawdown", False)])
def test_suggest_for_env_answers_as_the_cli_from_a_reader_login(reader: str, sample_history: list[dict],
                                                                objective: str, higher: bool, tmp_path: Path) -> None:
    for run in sample_history[400:403]:
        path = tmp_path / "env.json"
        path.write_text(json.dumps(run["env"]))
        flags = [] if higher else ["--lower-is-better"]
        [answer] = _cli_json("--database-url", reader, "suggest", "--env", str(path), "--objective", objective,
                             "-k", "6", "--as-of", "2014-01-31", *flags)
        with psycopg.connect(reader) as conn:
            rows = conn.execute("SELECT config_id, runs, score FROM historical_db.suggest_for_env(%s, k => 6, "
                                "as_of => '2014-01-31', objective => %s, higher_is_better => %s)",
                                (Jsonb(run["env"]), objective, higher)).fetchall()
        assert rows
        _same_rows(rows, answer["rows"], ("config_id", "runs"), "score")


def test_neighbours_and_search_runs_answer_as_the_cli(reader: str, sample_history: list[dict]) -> None:
    run_id = sample_history[17]["run_id"]
    [answer] = _cli_json("--database-url", reader, "search", "--run", run_id, "--space", "env", "-k", "7")
    with psycopg.connect(reader) as conn:
        near = conn.execute("SELECT run_id, as_of_date::text, distance FROM historical_db.neighbours(%s, 7, 'env')",
                            (run_id,)).fetchall()
        vector = conn.execute("SELECT vector::text FROM historical_db.run_vectors_v1 WHERE run_id = %s AND "
                              "space = 'env'", (run_id,)).fetchone()[0]
        found = conn.execute("SELECT run_id, as_of_date::text, distance FROM historical_db.search_runs("
                             "%s::vector, 8, 'env')", (vector,)).fetchall()
    _same_rows(near, answer["rows"], ("run_id", "as_of_date"), "distance")
    assert [r[0] for r in found if r[0] != run_id][:7] == [r[0] for r in near]


def test_a_reader_cannot_call_the_stable_writers(reader: str) -> None:
    with psycopg.connect(reader) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM historical_db.embed_pending(10)")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT historical_db.store_run('{\"run_id\": \"x\", \"as_of_date\": \"2020-01-01\"}', "
                         "'0', 1, 'f', NULL, NULL, NULL, NULL)")


def test_an_empty_suggestion_says_why_in_sql_and_on_the_command_line(reader: str, sample_history: list[dict],
                                                                     tmp_path: Path) -> None:
    env = sample_history[0]["env"]
    said: list[str] = []
    with psycopg.connect(reader) as conn:
        conn.add_notice_handler(lambda d: said.append(d.message_primary))
        rows = conn.execute("SELECT * FROM historical_db.suggest_for_env(%s, min_runs => 10000, neighbours => 50)",
                            (Jsonb(env),)).fetchall()
        assert rows == [] and said and "none ran in 10000 or more environments" in said[0]
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no run reports it"):
            conn.execute("SELECT * FROM historical_db.suggest_for_env(%s, objective => 'sharp')", (Jsonb(env),))
    path = tmp_path / "env.json"
    path.write_text(json.dumps(env))
    result = CliRunner().invoke(cli, ["--database-url", reader, "suggest", "--env", str(path), "--min-runs", "10000",
                                      "--neighbours", "50", "--objective", "sharpe"])
    assert result.exit_code == 0, result.output
    assert "none ran in 10000 or more environments" in result.output
