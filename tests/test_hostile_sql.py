"""Hostile input through the functions that ship (the stable names and what they call): every text argument,
every JSON key and value. Each is refused with a named error (SQLSTATE class 22, or P0002 for a run that does
not exist) or treated as data; nothing is ever executed, and nothing stored changes."""

from __future__ import annotations

import json
import os

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from metaspace.store.connection import connect

PAYLOADS = ["x'; DROP TABLE historical_db.runs; --", "joint' OR '1'='1", "'); DELETE FROM historical_db.runs; --",
            "$q$; DROP TABLE historical_db.runs; $q$", "sharpe}'; DROP TABLE historical_db.runs; --",
            "$fn$ || pg_sleep(5) || $fn$", "%s %(x)s {} \\x00", "outcome.sharpe'::text); SELECT 1; --",
            "a" * 5000, "ü\u202e\u2066", "{\"a\": 1}", "../../etc/passwd", "historical_db.runs", "NULL"]
hostile_text = st.one_of(st.sampled_from(PAYLOADS),
                         st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                 max_size=60))
REFUSED = (psycopg.DataError, psycopg.errors.NoDataFound)  # class 22 (22023 among them), and P0002
# Examples per generated test: 40 in the suite; METASPACE_HOSTILE_EXAMPLES raises it (docs/benchmarks.md, Faults).
EXAMPLES = int(os.environ.get("METASPACE_HOSTILE_EXAMPLES", "40"))
HOSTILE = settings(max_examples=EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def hconn(sample_db: str):
    with connect(sample_db, autocommit=True) as conn:
        yield conn


def _state(conn: psycopg.Connection) -> tuple:
    """What must not move: the runs, the vectors, and the schema's objects."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM historical_db.runs), (SELECT count(*) FROM historical_db.joint_embeddings), "
        "(SELECT md5(string_agg(run_id || outcome::text, ',' ORDER BY run_id)) FROM historical_db.runs), "
        "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        " WHERE n.nspname IN ('historical_db', 'public'))").fetchone()


def _ask(conn: psycopg.Connection, statement: str, params: tuple) -> None:
    try:
        with conn.transaction():
            conn.execute(statement, params).fetchall()
    except REFUSED as exc:
        assert exc.diag.message_primary, statement  # a named error, never a bare failure


@pytest.fixture(scope="module")
def vectors(hconn) -> dict[str, str]:
    """A stored joint and env vector, as pgvector's text (cast to vector in the calls)."""
    return {space: hconn.execute("SELECT vector::text FROM historical_db.run_vectors_v1 WHERE space = %s LIMIT 1",
                                 (space,)).fetchone()[0] for space in ("joint", "env")}


@HOSTILE
@given(text=hostile_text)
def test_every_text_argument_of_the_stable_functions_is_data(hconn, vectors, sample_history, text) -> None:
    before = _state(hconn)
    run_id = sample_history[0]["run_id"]
    calls = [
        ("SELECT * FROM historical_db.search_runs(%s::vector, 5, %s)", (vectors["joint"], text)),
        ("SELECT * FROM historical_db.search_runs(%s::vector, 5, strategy_ids => %s, config_ids => %s)",
         (vectors["joint"], [text], [text])),
        ("SELECT * FROM historical_db.search_runs(%s::vector, 5, scope => %s)", (vectors["joint"], Jsonb({text: text}))),
        ("SELECT * FROM historical_db.neighbours(%s)", (text,)),
        ("SELECT * FROM historical_db.neighbours(%s, 5, %s)", (run_id, text)),
        ("SELECT * FROM historical_db.search_record(%s, 5, %s)", (Jsonb({"env": {"realized_vol": 0.2}}), text)),
        ("SELECT * FROM historical_db.suggest_configs(%s::vector, objective => %s)", (vectors["env"], text)),
        ("SELECT * FROM historical_db.suggest_configs(%s::vector, strategy_ids => %s, eligible_configs => %s)",
         (vectors["env"], [text], [text])),
        ("SELECT * FROM historical_db.suggest_for_env(%s, objective => %s)", (Jsonb({"realized_vol": 0.2}), text)),
        ("SELECT historical_db.encode(%s, %s)", (text, Jsonb({"realized_vol": 0.2}))),
    ]
    for statement, params in calls:
        _ask(hconn, statement, params)
    assert _state(hconn) == before


def _nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = {"k": leaf}
    return leaf


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False),
                      hostile_text, st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4))


@HOSTILE
@given(key=hostile_text, value=json_leaf, depth=st.integers(0, 40), space=st.sampled_from(["joint", "env", "config"]))
def test_every_json_key_and_value_of_a_record_is_data(hconn, key, value, depth, space) -> None:
    before = _state(hconn)
    record = {"run_id": key, "as_of_date": key if depth % 3 == 0 else "2015-06-30",
              "config": {key: _nested(depth, value)}, "env": {"realized_vol": value, key: key},
              "outcome": {key: value}}
    branch = record if space == "joint" else {space: record[space]}
    _ask(hconn, "SELECT * FROM historical_db.search_record(%s, 3, %s)", (Jsonb(branch), space))
    _ask(hconn, "SELECT * FROM historical_db.suggest_for_env(%s, 3)", (Jsonb(record["env"]),))
    _ask(hconn, "SELECT historical_db.encode(%s, %s)", (space, Jsonb(branch)))
    assert _state(hconn) == before


def test_a_json_document_that_is_not_an_object_is_refused_by_name(hconn) -> None:
    for document in (json.dumps([1, 2]), json.dumps("env"), "42", "null"):
        with pytest.raises(psycopg.errors.InvalidParameterValue), hconn.transaction():
            hconn.execute("SELECT * FROM historical_db.search_record(%s::jsonb, 3, 'env')", (document,)).fetchall()


# Every option of the reading commands that takes text, each with the hostile value in its place ({} below; the
# env, config and record options read it as a file's JSON, from stdin).
CLI_OPTIONS = [
    ["search", "--run", "{}"], ["search", "--run", "R1", "--strategy", "{}"], ["search", "--run", "R1", "--config-id", "{}"],
    ["search", "--run", "R1", "--scope", "{}"], ["search", "--run", "R1", "--as-of", "{}"],
    ["search", "--record", "-", "--space", "env"], ["search", "--env", "-", "--distinct"], ["search", "--config", "-"],
    ["suggest", "--env", "-"], ["suggest", "--env", "-", "--objective", "{}"],
    ["suggest", "--env", "-", "--strategy", "{}"], ["suggest", "--env", "-", "--as-of", "{}"],
    ["suggest", "--env", "-", "--history", "{}"], ["evaluate", "--objective", "{}", "--sample", "3"],
    ["evaluate", "--since", "{}", "--sample", "3"], ["evaluate", "--until", "{}", "--sample", "3"],
    ["map", "--color", "{}", "--out", "{out}"], ["map", "--as-of", "{}", "--out", "{out}"],
    ["propose", "--env", "-", "--space", "{space}", "--objective", "{}"],
    ["propose", "--env", "-", "--space", "{space}", "--exclude", "{}"],
]


@HOSTILE
@given(text=hostile_text, option=st.sampled_from(CLI_OPTIONS), as_json=st.booleans())
def test_every_text_option_of_the_commands_is_data(hconn, sample_db, tmp_path_factory, text, option, as_json) -> None:
    """Exit status 0 (treated as data), 1 (refused: ``Error: ...``) or 2 (click's usage error), never a traceback,
    and nothing stored changes."""
    from click.testing import CliRunner

    from metaspace.cli import cli

    folder = tmp_path_factory.mktemp("cli")
    space = folder / "space.json"
    space.write_text(json.dumps({"lookback": {"type": "int", "low": 5, "high": 300}}))
    args = [part.replace("{}", text).replace("{out}", str(folder / "map.png")).replace("{space}", str(space))
            for part in option]
    document = json.dumps({text: text, "realized_vol": 0.2}) if as_json else text
    before = _state(hconn)
    result = CliRunner().invoke(cli, ["--database-url", sample_db, *args], input=document)
    assert result.exit_code in (0, 1, 2), (args, result.output[-2000:], result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output
    assert _state(hconn) == before
