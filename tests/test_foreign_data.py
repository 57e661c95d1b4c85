"""Foreign data: histories nobody here wrote. Every record is judged on its own, and one bad record never
stops the others (issue 11)."""

from __future__ import annotations

import json
import random
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.store.connection import connect


def _wide_config(rng: random.Random, groups: int) -> dict:
    """Nested, conditional hyperparameters like a real meta-learning history: ~15 keys per group."""
    config = {}
    for g in range(groups):
        kind = rng.choice(["adam", "sgd", "lamb", "rf", "gbm"])
        config[f"stage_{g}"] = {
            "kind": kind,
            **{f"{kind}_param_{k}": rng.random() * 10 ** rng.randint(-6, 3) for k in range(10)},
            **{f"choice_{k}": f"{rng.choice(['relu', 'gelu', 'tanh'])}_{rng.getrandbits(32):08x}" for k in range(4)},
        }
    return config


def _wide_records(n: int, seed: int = 42) -> list[dict]:
    rng = random.Random(seed)
    return [{"run_id": f"wide-{i:06d}", "as_of_date": f"20{10 + i % 10}-0{1 + i % 9}-1{i % 10}",
             "config_id": f"cfg-{i % 97}",
             "config": _wide_config(rng, 14 if i % 10 == 0 else 7),
             "env": {"vol": rng.random(), "regime": rng.choice(["a", "b"])},
             "outcome": {"perf": {"sharpe": rng.gauss(0.5, 1)}, "dd": -rng.random()}}
            for i in range(n)]


def test_wide_nested_records_import_at_the_default_batch_size(db_url: str, tmp_path: Path) -> None:
    """~3 KB records with 100-200 nested keys, some stored out of line (TOAST): PostgreSQL 18.0-18.4 failed
    this upsert from a temporary staging table with 'no empty local buffer available'."""
    records = _wide_records(5_000)
    assert 3_000 < sum(len(json.dumps(r)) for r in records) / len(records) < 6_000
    path = tmp_path / "wide.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = pipeline.import_runs([str(path)], database_url=db_url)
    assert (summary.inserted, summary.rejected) == (5_000, 0)
    changed = [dict(r, outcome={"perf": {"sharpe": 1.0}}) for r in records]
    path.write_text("".join(json.dumps(r) + "\n" for r in changed))
    assert pipeline.import_runs([str(path)], database_url=db_url).updated == 5_000


def _good(n: int, start: int = 0) -> list[dict]:
    return [{"run_id": f"good-{i:05d}", "as_of_date": "2020-01-02", "config_id": f"c{i % 7}",
             "config": {"lookback": 20 + i % 50, "mode": "a" if i % 2 else "b"},
             "env": {"vol": 0.1 + (i % 13) / 100}, "outcome": {"sharpe": (i % 17) / 10}}
            for i in range(start, start + n)]


def _write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


BAD_LINES = {
    "nul in a string": ('{"run_id": "bad-nul", "as_of_date": "2020-01-02", "env": {"note": "a\\u0000b"}}',
                        "env.note", "NUL"),
    "lone surrogate": ('{"run_id": "bad-sur", "as_of_date": "2020-01-02", "config": {"name": "\\ud800"}}',
                       "config.name", "surrogate"),
    "integer beyond float64": ('{"run_id": "bad-big", "as_of_date": "2020-01-02", "outcome": {"pnl": 1' + "0" * 400
                               + "}}", "outcome.pnl", "float64"),
    "nul in a key": ('{"run_id": "bad-key", "as_of_date": "2020-01-02", "env": {"a\\u0000": 1}}', "env", "NUL"),
    "key too long": ('{"run_id": "bad-long", "as_of_date": "2020-01-02", "env": {"' + "k" * 300 + '": 1}}', "env.",
                     "longer than 256"),
    "nesting too deep": ('{"run_id": "bad-deep", "as_of_date": "2020-01-02", "config": ' + '{"a": ' * 20 + "1"
                         + "}" * 21, "config.a.a", "deeper"),
    "float run_id": ('{"run_id": 1.5, "as_of_date": "2020-01-02"}', "run_id", "string"),
    "object run_id": ('{"run_id": {"x": 1}, "as_of_date": "2020-01-02"}', "run_id", "string"),
    "nul in run_id": ('{"run_id": "r\\u0000", "as_of_date": "2020-01-02"}', "run_id", "NUL"),
    "surrogate in an extra field": ('{"run_id": "bad-extra", "as_of_date": "2020-01-02", "note": "\\udfff"}',
                                    "note", "surrogate"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_record_postgresql_or_float64_cannot_hold_is_rejected_alone(case: str, db_url: str,
                                                                      tmp_path: Path) -> None:
    line, field, reason = BAD_LINES[case]
    good = [json.dumps(r) for r in _good(2_000)]
    path = _write_jsonl(tmp_path / "runs.jsonl", good[:1_000] + [line] + good[1_000:])
    summary = pipeline.import_runs([path], database_url=db_url).as_dict()
    assert (summary["inserted"], summary["rejected"]) == (2_000, 1)
    [reject] = summary["rejects"]
    assert reject["line"] == 1_001 and reject["field"].startswith(field) and reason in reject["reason"]


def test_a_record_the_server_refuses_is_rejected_and_the_rest_of_its_batch_lands(db_url: str,
                                                                                  tmp_path: Path) -> None:
    with connect(db_url, autocommit=True) as conn:  # a rule of the user's own DBA that metaspace cannot know
        conn.execute("ALTER TABLE historical_db.runs ADD CONSTRAINT no_test_runs CHECK (run_id NOT LIKE 'good-0004%')")
    path = _write_jsonl(tmp_path / "runs.jsonl", [json.dumps(r) for r in _good(100)])
    summary = pipeline.import_runs([path], database_url=db_url)
    assert (summary.inserted, summary.rejected) == (90, 10)
    assert {r["run_id"] for r in summary.rejects} == {f"good-{i:05d}" for i in range(40, 50)}
    assert all("SQLSTATE 23514" in r["reason"] and r["line"] == int(r["run_id"][-3:]) + 1 for r in summary.rejects)


def test_strict_lands_nothing_when_a_later_batch_has_a_bad_record(db_url: str, tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in _good(300)] + [BAD_LINES["nul in a string"][0]]
    path = _write_jsonl(tmp_path / "runs.jsonl", lines)
    result = CliRunner().invoke(cli, ["--database-url", db_url, "import-runs", path, "--strict", "--batch-size", "50"])
    assert result.exit_code == 1 and "nothing imported" in result.output and "line 301" not in result.output
    assert f"{path}:301" in result.output
    with connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0] == 0


def test_csv_keeps_identifiers_and_nan_like_text_as_written(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("run_id,as_of_date,config.universe,config.lookback,env.vol,outcome.sharpe,outcome.note\n"
                    "007,2020-01-02,007,20,0.15,1.5,nan\n"
                    "008,2020-01-02,0042,30,1e-3,inf,ok\n")
    assert pipeline.import_runs([str(path)], database_url=db_url).inserted == 2
    with connect(db_url) as conn:
        rows = dict(conn.execute("SELECT run_id, jsonb_build_array(config, env, outcome) FROM historical_db.runs"))
    assert rows["007"] == [{"universe": "007", "lookback": 20}, {"vol": 0.15}, {"sharpe": 1.5, "note": "nan"}]
    assert rows["008"] == [{"universe": "0042", "lookback": 30}, {"vol": 0.001}, {"sharpe": "inf", "note": "ok"}]


def _nested_sharpe_history(db_url: str, tmp_path: Path) -> None:
    records = [{"run_id": f"r{i:04d}", "as_of_date": f"2019-{1 + i % 12:02d}-15", "config_id": f"cfg{i % 6}",
                "config": {"lookback": 10 * (1 + i % 6)}, "env": {"vol": 0.1 + (i % 9) / 50, "trend": (i % 5) - 2},
                "outcome": {"perf": {"sharpe": (i % 6) / 3 + (i % 9) / 20}, "risk": {"max_dd": -(i % 7) / 20}}}
               for i in range(240)]
    pipeline.import_runs([_write_jsonl(tmp_path / "h.jsonl", [json.dumps(r) for r in records])], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)


def test_suggest_on_other_key_names_finds_the_one_sharpe_and_says_so(db_url: str, tmp_path: Path) -> None:
    _nested_sharpe_history(db_url, tmp_path)
    env = tmp_path / "env.json"
    env.write_text(json.dumps({"vol": 0.15, "trend": 1}))
    result = CliRunner().invoke(cli, ["--database-url", db_url, "suggest", "--env", str(env),
                                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "ranking by outcome.perf.sharpe" in result.stderr
    assert json.loads(result.stdout)


@pytest.mark.parametrize("argv, listed", [
    (["suggest", "--objective", "outcome.sharpe"], "outcome.perf.sharpe"),
    (["suggest", "--objective", "max_dd"], "outcome.risk.max_dd"),
    (["cluster", "--k", "2", "--objective", "outcome.sortino"], "outcome.perf.sharpe"),
    (["map", "--color", "env.volatility", "--out", "x.png"], "env.vol"),
])
def test_a_key_that_does_not_exist_fails_listing_the_keys_that_do(argv: list[str], listed: str, db_url: str,
                                                                   tmp_path: Path) -> None:
    _nested_sharpe_history(db_url, tmp_path)
    if argv[0] == "suggest":
        env = tmp_path / "env.json"
        env.write_text(json.dumps({"vol": 0.15}))
        argv = [*argv, "--env", str(env)]
    if argv[0] == "map":
        argv = [a if a != "x.png" else str(tmp_path / "x.png") for a in argv]
    result = CliRunner().invoke(cli, ["--database-url", db_url, *argv])
    assert result.exit_code == 1, result.output
    assert "closest first" in result.output and listed in result.output and "Traceback" not in result.output
    first_listed = result.output.split("closest first: ")[1]
    if argv[0] == "suggest" and "max_dd" in argv:
        assert first_listed.startswith("outcome.risk.max_dd")


def test_python_suggest_with_a_missing_objective_raises_listing_keys(db_url: str, tmp_path: Path) -> None:
    _nested_sharpe_history(db_url, tmp_path)
    with pytest.raises(metaspace.errors.MetaspaceError, match="outcome.perf.sharpe"):
        metaspace.suggest({"vol": 0.2}, objective="sharpe", database_url=db_url)
    assert metaspace.suggest({"vol": 0.2}, objective="perf.sharpe", database_url=db_url)


def test_embed_reports_keys_the_encoder_was_not_fitted_on(db_url: str, tmp_path: Path) -> None:
    pipeline.import_runs([_write_jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in _good(200)])],
                         database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    tonight = [dict(r, env=dict(r["env"], vix=20.5)) for r in _good(30, start=500)]
    pipeline.import_runs([_write_jsonl(tmp_path / "b.jsonl", [json.dumps(r) for r in tonight])], database_url=db_url)
    summary = pipeline.embed_runs(database_url=db_url)
    assert summary.embedded == 30 and summary.unseen_keys == {"env.vix": 30}
    assert any("env.vix (30)" in note and "--rebuild" in note for note in summary.notes)


def test_a_password_in_the_query_string_is_never_printed() -> None:
    from metaspace.store.connection import redact

    url = "postgresql://alice:pw1@127.0.0.1:1/db?sslmode=disable&password=pw2"
    assert redact(url) == "postgresql://alice:***@127.0.0.1:1/db?sslmode=disable&password=***"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    result = CliRunner().invoke(cli, ["migrate", "--database-url", "postgresql://127.0.0.1:1/db?password=s3cret",
                                      "--status"])
    assert result.exit_code == 1 and "s3cret" not in result.output


def test_database_errors_say_what_happened_with_the_sqlstate(db_url: str, tmp_path: Path) -> None:
    unreachable = CliRunner().invoke(cli, ["--database-url", "postgresql://nobody@127.0.0.1:1/x", "search",
                                           "--run", "r1"])
    assert unreachable.exit_code == 1 and "could not connect to the database" in unreachable.output
    with connect(db_url, autocommit=True) as conn:  # a replica, or a database a DBA made read-only
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET default_transaction_read_only = on")
    path = _write_jsonl(tmp_path / "runs.jsonl", [json.dumps(r) for r in _good(3)])
    refused = CliRunner().invoke(cli, ["--database-url", db_url, "import-runs", path])
    assert refused.exit_code == 1
    assert "the database refused: cannot execute " in refused.output and "(SQLSTATE 25006)" in refused.output
    for result in (unreachable, refused):
        assert "Traceback" not in result.output


def test_embed_run_follows_a_version_switch_inside_the_callers_transaction(db_url: str) -> None:
    records = _good(60)
    pipeline.import_records((("mem", i, r) for i, r in enumerate(records)), database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    with connect(db_url) as conn:  # not autocommit: embed_run's statements run inside the caller's transaction
        pipeline.embed_run(_good(1, start=900)[0], conn=conn)
        conn.commit()
        pipeline.embed_runs(database_url=db_url, rebuild=True)
        pipeline.embed_run(_good(1, start=901)[0], conn=conn)
        conn.commit()
        versions = dict(conn.execute(
            "SELECT entity_scope->>'run_id', encoder_version FROM historical_db.joint_embeddings "
            "WHERE entity_scope->>'run_id' IN ('good-00900', 'good-00901')").fetchall())
    assert versions == {"good-00901": 2} or versions == {"good-00900": 2, "good-00901": 2}


def _fuzz():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fuzz

    return fuzz


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_garbage=st.integers(1, 150), n_good=st.integers(3, 60))
def test_garbage_mixed_with_good_records_every_good_one_lands_and_every_bad_one_says_why(
        server_url: str, template_url: str, tmp_path_factory, seed: int, n_garbage: int, n_good: int) -> None:
    from conftest import TEMPLATE, _create_database, _drop_database

    lines, _, good = _fuzz().mixed_lines(n_garbage, n_good, seed)
    path = _write_jsonl(tmp_path_factory.mktemp("fuzz") / "runs.jsonl", lines)
    name = f"fz_{uuid.uuid4().hex[:10]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    try:
        imported = CliRunner().invoke(cli, ["--database-url", url, "import-runs", path, "--format", "json"])
        embedded = CliRunner().invoke(cli, ["--database-url", url, "embed-runs", "--format", "json"])
        for result in (imported, embedded):
            assert result.exit_code == 0, result.output
            assert "Traceback" not in result.output
        summary = json.loads(imported.stdout)
        assert summary["read"] == len(lines)
        with connect(url) as conn:
            stored = {row[0] for row in conn.execute("SELECT run_id FROM historical_db.runs")}
            vectors = {row[0] for row in conn.execute(
                "SELECT entity_scope->>'run_id' FROM historical_db.joint_embeddings")}
            quarantined = dict(conn.execute("SELECT run_id, reason FROM historical_db.embedding_quarantine"))
    finally:
        _drop_database(server_url, name)
    assert set(good) <= stored and set(good) <= vectors  # every good record lands and is embedded
    assert summary["inserted"] + summary["rejected"] == len(lines)  # every line is accounted for ...
    assert stored == vectors | set(quarantined)  # ... and every stored one is embedded or quarantined
    assert all(reason for reason in quarantined.values())


def test_an_encoder_fitted_on_huge_numbers_loads_back_from_the_registry(db_url: str) -> None:
    """jsonb gives a float such as 1.152921504606847e+18 back as an integer: the fingerprint must not care."""
    records = [dict(r, config={**r["config"], "capacity": float(2**60 + i * 2**50), "tiny": 1e-300 * (i + 1)})
               for i, r in enumerate(_good(40))]
    pipeline.import_records((("h", i, r) for i, r in enumerate(records)), database_url=db_url)
    assert pipeline.embed_runs(database_url=db_url).embedded == 40
    from metaspace.fitted import forget_space

    with connect(db_url) as conn:
        forget_space(conn, 1)
    assert metaspace.search(run="good-00003", k=3, database_url=db_url)[0]["run_id"] != "good-00003"
    pipeline.embed_run(dict(records[0], run_id="online"), database_url=db_url)


def test_embed_run_leaves_committing_to_a_callers_transaction(db_url: str) -> None:
    pipeline.import_records((("mem", i, r) for i, r in enumerate(_good(40))), database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    with connect(db_url) as conn:
        pipeline.embed_run(_good(1, start=800)[0], conn=conn)  # warm: the version is looked up here
        conn.commit()
        pipeline.embed_run(_good(1, start=801)[0], conn=conn)  # warm: no lookup before the write
        conn.rollback()  # the caller changes its mind: nothing of that run may stay
        stored = {row[0] for row in conn.execute(
            "SELECT run_id FROM historical_db.runs WHERE run_id IN ('good-00800', 'good-00801')")}
    assert stored == {"good-00800"}


def test_malformed_files_are_rejected_line_by_line_without_a_traceback(db_url: str, tmp_path: Path) -> None:
    csv_path = tmp_path / "runs.csv"
    csv_path.write_text("run_id,as_of_date,config.a,config.a.b,env.vol\n"
                        "r1,2020-01-02,1,2,0.1\n"
                        "r2,2020-01-03\n"  # a short row
                        "r3,2020-01-04,3,4,0.3\n")
    deep = "[" * 200_000 + "]" * 200_000
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_bytes(("\n".join([deep, json.dumps(_good(1)[0])]) + "\n").encode()
                      + b'{"run_id": "latin1", "as_of_date": "2020-01-02", "env": {"city": "M\xfcnchen"}}\n')
    for path, inserted, rejected in ((csv_path, 3, 0), (jsonl, 1, 2)):
        result = CliRunner().invoke(cli, ["--database-url", db_url, "import-runs", str(path), "--format", "json"])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        summary = json.loads(result.stdout)
        assert (summary["inserted"], summary["rejected"]) == (inserted, rejected)
    with connect(db_url) as conn:
        config = conn.execute("SELECT config FROM historical_db.runs WHERE run_id = 'r1'").fetchone()[0]
    assert config == {"a": 1, "a.b": 2}  # a column that is both a value and a parent keeps its dotted name


@pytest.mark.parametrize("argv, said", [
    (["embed-runs", "--schema", "{bad}"], "--schema"),
    (["import-runs", "RUNS", "--rejects", "/no/such/folder/rejects.jsonl"], "--rejects"),
    (["evaluate", "--objective", "sharpe", "--horizon", "30", "--plot", "/no/such/folder/r.png"], "--plot"),
])
def test_a_bad_option_value_is_an_error_naming_the_option(argv: list[str], said: str, db_url: str,
                                                          tmp_path: Path) -> None:
    runs = _write_jsonl(tmp_path / "runs.jsonl", [json.dumps(r) for r in _good(5)])
    schema = tmp_path / "bad.json"
    schema.write_text("{not json")
    argv = [runs if a == "RUNS" else str(schema) if a == "{bad}" else a for a in argv]
    result = CliRunner().invoke(cli, ["--database-url", db_url, *argv])
    assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output, result.output


def test_an_embedded_server_that_cannot_start_is_an_error_not_a_traceback(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")  # a data directory of another major version
    monkeypatch.setenv("METASPACE_HOME", str(tmp_path))
    monkeypatch.delenv("METASPACE_DATABASE_URL", raising=False)
    for argv in (["search", "--run", "x"], ["db", "start"]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
        assert "Traceback" not in result.output
