"""Search and suggest by JSON in SQL (search_record_v1, suggest_for_env_v1/_v3) answer what the command line
answers for the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from metaspace.cli import cli
from metaspace.store.connection import connect


def _cli_rows(*args: str) -> list[list[dict]]:
    result = CliRunner().invoke(cli, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line)["rows"] for line in result.stdout.splitlines() if line.strip()]


def _same_matches(sql_rows: list[tuple], cli_rows: list[dict]) -> None:
    assert [row[0] for row in sql_rows] == [row["run_id"] for row in cli_rows]
    for row, expected in zip(sql_rows, cli_rows):
        assert row[3].isoformat() == expected["as_of_date"] and row[5] == expected["entity_scope"]
        assert row[4] == pytest.approx(expected["distance"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("kind", "space", "exact"), [
    ("record", "joint", True), ("record", "joint", False), ("env", "env", True), ("config", "config", True),
    ("outcome", "outcome", False), ("record", "env", True),
])
def test_search_record_gives_the_rows_of_metaspace_search(sample_db, sample_history, tmp_path: Path, kind, space,
                                                          exact, version) -> None:
    runs = sample_history[100:103]
    inputs = [run if kind == "record" else run[kind] for run in runs]
    inputs[1] = {key: value for key, value in inputs[1].items() if key != "outcome"}  # imputed in joint
    path = tmp_path / "inputs.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in inputs))
    flags = ["--exact"] if exact else []
    answers = _cli_rows("search", f"--{kind}", str(path), "--space", space, "-k", "7", "--as-of", "2016-06-30",
                        "--database-url", sample_db, *flags)
    with connect(sample_db, autocommit=True) as conn:
        for item, expected in zip(inputs, answers, strict=True):
            rows = conn.execute(f"SELECT * FROM historical_db.search_record_{version}(%s, 7, %s, '2016-06-30', "
                                "exact => %s)", (Jsonb(item), space, exact)).fetchall()
            _same_matches(rows, expected)


def test_search_record_takes_the_filters(sample_db, sample_history, tmp_path: Path) -> None:
    run = sample_history[7]
    path = tmp_path / "record.json"
    path.write_text(json.dumps(run))
    strategy = run["strategy_id"]
    [expected] = _cli_rows("search", "--record", str(path), "--strategy", strategy, "--exact", "--database-url",
                           sample_db)
    with connect(sample_db, autocommit=True) as conn:
        rows = conn.execute("SELECT * FROM historical_db.search_record_v1(%s, strategy_ids => %s, exact => true)",
                            (Jsonb(run), [strategy])).fetchall()
    assert rows and {row[2] for row in rows} == {strategy}
    _same_matches(rows, expected)


@pytest.mark.parametrize("exact", [True, False])
def test_suggest_for_env_gives_the_rows_of_metaspace_suggest(sample_db, sample_history, tmp_path: Path,
                                                             exact) -> None:
    envs = [sample_history[i]["env"] for i in (3, 40)]
    path = tmp_path / "envs.jsonl"
    path.write_text("".join(json.dumps(env) + "\n" for env in envs))
    flags = ["--exact"] if exact else []
    answers = _cli_rows("suggest", "--env", str(path), "-k", "4", "--as-of", "2017-03-31", "--objective", "sharpe",
                        "--database-url", sample_db, *flags)
    with connect(sample_db, autocommit=True) as conn:
        for env, expected in zip(envs, answers, strict=True):
            cursor = conn.execute("SELECT * FROM historical_db.suggest_for_env_v4(%s, 4, '2017-03-31', 'sharpe', "
                                  "exact => %s)", (Jsonb(env), exact))
            names = [column.name for column in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
            assert [row["config_id"] for row in rows] == [row["config_id"] for row in expected]
            for row, want in zip(rows, expected):
                assert row["config"] == want["config"] and row["runs"] == want["runs"]
                assert row["score"] == pytest.approx(want["score"], rel=1e-5, abs=1e-9)


def test_suggest_for_env_v1_and_v2_rank_alike_over_their_two_paths(sample_db, sample_history) -> None:
    """v2 is v1 (suggest_configs_v2's ranking) over whichever graph the env space has: exact, the same rows."""
    env = sample_history[3]["env"]
    with connect(sample_db, autocommit=True) as conn:
        v1, v2 = (conn.execute(f"SELECT config_id, score FROM historical_db.suggest_for_env_{version}(%s, 4, "
                               "'2017-03-31', 'sharpe', exact => true)", (Jsonb(env),)).fetchall()
                  for version in ("v1", "v2"))
    assert v1 and [c for c, _ in v1] == [c for c, _ in v2]
    assert [s for _, s in v1] == pytest.approx([s for _, s in v2], rel=1e-9)


def test_a_record_dated_earlier_than_as_of_is_asked_as_of_its_own_date(sample_db, sample_history) -> None:
    run = sample_history[50]
    with connect(sample_db, autocommit=True) as conn:
        rows = conn.execute("SELECT as_of_date FROM historical_db.search_record_v1(%s, 50, as_of => '2030-01-01')",
                            (Jsonb(run),)).fetchall()
    assert rows and max(row[0] for row in rows).isoformat() <= run["as_of_date"]


@pytest.mark.parametrize(("call", "message"), [
    ("historical_db.search_record_v1('{\"env\": {\"realized_vol\": \"high\"}}', 5, 'env')",
     "field 'env.realized_vol'"),
    ("historical_db.search_record_v1('{\"env\": {}}', 5, 'moon')", "unknown space 'moon'"),
    ("historical_db.search_record_v1('[1]', 5)", "must be a JSON object"),
    ("historical_db.search_record_v1('{\"as_of_date\": \"soon\", \"env\": {\"a\": 1}}', 5, 'env')",
     "is not an ISO date"),
    ("historical_db.suggest_for_env_v1('{\"realized_vol\": [1]}')", "field 'env.realized_vol'"),
    ("historical_db.suggest_for_env_v3('{\"realized_vol\": [1]}')", "field 'env.realized_vol'"),
])
def test_bad_inputs_are_refused_with_the_field(sample_db, call: str, message: str) -> None:
    with connect(sample_db, autocommit=True) as conn, pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(f"SELECT * FROM {call}")
    assert message in caught.value.diag.message_primary


def test_a_reader_login_encodes_searches_and_suggests_but_does_not_embed(server_url, sample_db, sample_history) -> None:
    from test_roles import _login

    logins = _login(server_url, sample_db, "metaspace_reader")
    reader_url = next(logins)
    try:
        with psycopg.connect(reader_url, autocommit=True) as conn:
            run = sample_history[11]
            assert conn.execute("SELECT vector_dims(historical_db.encode_v1('joint', %s))", (Jsonb(run),)
                                ).fetchone()[0] == 384
            assert conn.execute("SELECT count(*) FROM historical_db.search_record_v1(%s, 3)", (Jsonb(run),)
                                ).fetchone()[0] == 3
            assert conn.execute("SELECT count(*) FROM historical_db.suggest_for_env_v1(%s, 2)", (Jsonb(run["env"]),)
                                ).fetchone()[0] >= 1
            assert conn.execute("SELECT count(*) FROM historical_db.suggest_for_env_v3(%s, 2)", (Jsonb(run["env"]),)
                                ).fetchone()[0] >= 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM historical_db.embed_pending_v1(10)")
    finally:
        next(logins, None)
