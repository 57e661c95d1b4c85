"""import-runs and embed-runs against real PostgreSQL: idempotence, crashes, concurrency, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from metaspace import pipeline
from metaspace.cli import cli
from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.store import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from synthetic import synthetic_runs  # noqa: E402


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            "runs": conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0],
            "joint": conn.execute("SELECT count(*) FROM historical_db.joint_embeddings").fetchone()[0],
            "distinct_joint": conn.execute(
                "SELECT count(DISTINCT (entity_scope->>'run_id', encoder_version)) FROM historical_db.joint_embeddings"
            ).fetchone()[0],
            "branch": conn.execute("SELECT count(*) FROM historical_db.branch_embeddings").fetchone()[0],
            "quarantine": conn.execute("SELECT count(*) FROM historical_db.embedding_quarantine").fetchone()[0],
        }


@pytest.fixture
def runs_file(tmp_path: Path) -> str:
    return _write(tmp_path / "runs.jsonl", synthetic_runs(400, seed=1))


def test_import_is_idempotent_and_counts_changes(db_url: str, runs_file: str, tmp_path: Path) -> None:
    first = pipeline.import_runs([runs_file], database_url=db_url)
    assert (first.read, first.inserted, first.updated, first.unchanged) == (400, 400, 0, 0)
    again = pipeline.import_runs([runs_file], database_url=db_url)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 400)
    changed = synthetic_runs(400, seed=1)[:3]
    changed[0]["outcome"]["family"] = "changed"
    result = pipeline.import_runs([_write(tmp_path / "c.jsonl", changed)], database_url=db_url)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)


def test_invalid_records_are_rejected_with_line_and_field_and_nothing_good_is_lost(db_url: str, tmp_path: Path) -> None:
    good = synthetic_runs(5, seed=2)
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(good[0]), "{not json", json.dumps({"run_id": "X1", "as_of_date": "29/03/2024"}),
             json.dumps(good[1]), json.dumps({"as_of_date": "2024-01-01"}),
             json.dumps(good[2] | {"env": {"vols": [1, "a"]}})]
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = pipeline.import_runs([str(path)], database_url=db_url, rejects=str(rejects))
    assert (summary.read, summary.inserted, summary.rejected) == (6, 2, 4)
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rows] == [
        (2, "(line)"), (3, "as_of_date"), (5, "run_id"), (6, "env.vols[1]")]
    assert rows[1]["run_id"] == "X1"
    with pytest.raises(MetaspaceError, match="nothing imported"):
        pipeline.import_runs([str(path)], database_url=db_url, strict=True)
    assert _counts(db_url)["runs"] == 2


def test_embed_runs_fits_registers_and_is_idempotent(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    first = pipeline.embed_runs(database_url=db_url)
    assert first.fitted and first.version == 1 and first.embedded == 400
    counts = _counts(db_url)
    assert counts["joint"] == counts["distinct_joint"] == 400 and counts["branch"] == 1200
    second = pipeline.embed_runs(database_url=db_url)
    assert not second.fitted and second.embedded == 0
    assert _counts(db_url) == counts
    with psycopg.connect(db_url) as conn:
        scope, model, joint_type = conn.execute(
            "SELECT entity_scope, model_id, joint_type FROM historical_db.joint_embeddings LIMIT 1").fetchone()
    assert model == "joint-meta-config-env-v1" and joint_type == "META_CONFIG_ENV_V0"
    assert set(scope) == {"run_id", "config_id", "strategy_id", "source"} and scope["source"] == "meta-config-env"


def test_embedding_is_incremental_after_new_imports(db_url: str, tmp_path: Path) -> None:
    runs = synthetic_runs(300, seed=3)
    pipeline.import_runs([_write(tmp_path / "a.jsonl", runs[:200])], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    pipeline.import_runs([_write(tmp_path / "b.jsonl", runs[200:])], database_url=db_url)
    assert pipeline.embed_runs(database_url=db_url, dry_run=True).pending == 100
    later = pipeline.embed_runs(database_url=db_url)
    assert later.embedded == 100 and not later.fitted
    assert _counts(db_url)["joint"] == 300


def test_narrowing_by_since_strategy_and_limit(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    assert pipeline.embed_runs(database_url=db_url, limit=7).embedded == 7
    narrowed = pipeline.embed_runs(database_url=db_url, strategy=["STRAT_trend"], since="2020-01-01")
    with psycopg.connect(db_url) as conn:
        expected = conn.execute(
            "SELECT count(*) FROM historical_db.runs r WHERE strategy_id = 'STRAT_trend' AND as_of_date >= '2020-01-01' "
            "AND NOT EXISTS (SELECT 1 FROM historical_db.joint_embeddings j WHERE j.run_id = r.run_id)"
        ).fetchone()[0]
    assert narrowed.pending > 0 and pipeline.embed_runs(database_url=db_url, dry_run=True).pending == 400 - 7 - narrowed.embedded
    assert expected == 0


def test_runs_that_fail_encoding_are_quarantined_and_the_rest_embedded(db_url: str, tmp_path: Path) -> None:
    runs = synthetic_runs(200, seed=4)
    pipeline.import_runs([_write(tmp_path / "a.jsonl", runs)], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    bad = synthetic_runs(2, seed=99)
    key = next(k for k, v in bad[0]["env"]["group0"].items())
    bad[0]["env"]["group0"][key] = "not a number"
    pipeline.import_runs([_write(tmp_path / "b.jsonl", bad)], database_url=db_url)
    summary = pipeline.embed_runs(database_url=db_url)
    assert summary.embedded == 1
    assert summary.quarantined == [{"run_id": bad[0]["run_id"], "field": f"env.group0.{key}",
                                    "reason": "expected a number, got the string 'not a number'"}]
    assert _counts(db_url)["quarantine"] == 1
    assert pipeline.embed_runs(database_url=db_url).embedded == 0


def test_rebuild_writes_a_new_version_then_switches(db_url: str, tmp_path: Path) -> None:
    runs = synthetic_runs(300, seed=5)
    pipeline.import_runs([_write(tmp_path / "a.jsonl", runs[:150])], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    pipeline.import_runs([_write(tmp_path / "b.jsonl", runs[150:])], database_url=db_url)
    rebuilt = pipeline.embed_runs(database_url=db_url, rebuild=True)
    assert rebuilt.fitted and rebuilt.version == 2 and rebuilt.switched_from == 1
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT version FROM historical_db.encoder_versions WHERE is_active").fetchone() == (2,)
        versions = conn.execute("SELECT DISTINCT encoder_version FROM historical_db.joint_embeddings").fetchall()
    assert versions == [(2,)] and _counts(db_url)["joint"] == 300


def test_an_interrupted_rebuild_keeps_old_vectors_queryable_and_resumes(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    partial = pipeline.embed_runs(database_url=db_url, rebuild=True, limit=100, schema={"env": {"mix.a": {"ignore": True}}})
    assert partial.version == 2 and partial.switched_from is None
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT version FROM historical_db.encoder_versions WHERE is_active").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM historical_db.joint_embeddings WHERE encoder_version = 1").fetchone()[0] == 400
    resumed = pipeline.embed_runs(database_url=db_url, rebuild=True)
    assert resumed.version == 2 and resumed.embedded == 300 and resumed.switched_from == 1


def test_legacy_float32_column_is_filled_for_new_vectors(empty_db: str, runs_file: str) -> None:
    with psycopg.connect(empty_db) as conn:
        conn.execute("CREATE SCHEMA historical_db")
        conn.execute("CREATE TABLE historical_db.joint_embeddings (joint_type text, as_of_date date, "
                     "entity_scope jsonb, model_id text, vector bytea)")
    migrate.upgrade(empty_db)
    pipeline.import_runs([runs_file], database_url=empty_db)
    pipeline.embed_runs(database_url=empty_db)
    from metaspace.store.connection import connect

    with connect(empty_db) as conn:
        rows = conn.execute("SELECT vector, vector_f32 FROM historical_db.joint_embeddings").fetchall()
    assert len(rows) == 400
    for vector, raw in rows:
        assert bytes(raw) == vector.to_numpy().astype("<f4").tobytes()


def test_embed_run_writes_one_new_run_online(db_url: str, runs_file: str) -> None:
    pipeline.import_runs([runs_file], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    record = synthetic_runs(1, seed=77)[0]
    vector = pipeline.embed_run(record, database_url=db_url)
    assert vector.shape == (384,) and vector.dtype == np.float32
    from metaspace.store.connection import connect

    with connect(db_url) as conn:
        (stored,) = conn.execute(
            "SELECT vector FROM historical_db.joint_embeddings WHERE entity_scope->>'run_id' = %s",
            (record["run_id"],)).fetchone()
    assert np.array_equal(stored.to_numpy(), vector)
    with pytest.raises(InvalidRecordError, match="as_of_date"):
        pipeline.embed_run({"run_id": "bad"}, database_url=db_url)


def test_embed_run_is_one_round_trip_and_follows_a_version_switch(db_url: str, runs_file: str) -> None:
    from metaspace.store.connection import connect

    pipeline.import_runs([runs_file], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    first, second, third = synthetic_runs(3, seed=78)
    with connect(db_url, autocommit=True) as conn:
        pipeline.embed_run(first, conn=conn)  # warm: the active version is looked up once per database
        statements = []
        real_execute = conn.execute

        def counting_execute(query, *args, **kwargs):
            statements.append(query)
            return real_execute(query, *args, **kwargs)

        conn.execute = counting_execute
        pipeline.embed_run(second, conn=conn)
        assert len(statements) == 1 and "historical_db.store_run(" in statements[0]
        conn.execute = real_execute
        pipeline.embed_runs(database_url=db_url, rebuild=True)  # a new version becomes active meanwhile
        vector = pipeline.embed_run(third, conn=conn)
        version, stored = conn.execute(
            "SELECT encoder_version, vector FROM historical_db.joint_embeddings WHERE entity_scope->>'run_id' = %s",
            (third["run_id"],)).fetchone()
        active = conn.execute("SELECT version FROM historical_db.encoder_versions WHERE is_active").fetchone()[0]
    assert version == active == 2 and np.array_equal(stored.to_numpy(), vector)
    assert _counts(db_url)["joint"] == _counts(db_url)["distinct_joint"] == 403


@pytest.mark.one_node(reason="a downgrade of a distributed schema is not supported")
def test_embed_run_notices_a_database_rebuilt_under_a_running_process(db_url: str, tmp_path: Path) -> None:
    from metaspace.encoders import MetaSpace
    from metaspace.store.connection import connect

    pipeline.import_runs([_write(tmp_path / "a.jsonl", synthetic_runs(300, seed=5))], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    first, second = synthetic_runs(2, seed=79)
    with connect(db_url, autocommit=True) as conn:
        pipeline.embed_run(first, conn=conn)  # this process now remembers version 1's fitted state
        migrate.downgrade(db_url, "base", allow_data_loss=True)
        migrate.upgrade(db_url)
        pipeline.import_runs([_write(tmp_path / "b.jsonl", synthetic_runs(300, seed=6))], database_url=db_url)
        pipeline.embed_runs(database_url=db_url)  # a different version 1
        vector = pipeline.embed_run(second, conn=conn)
        state = conn.execute("SELECT state FROM historical_db.encoder_versions WHERE is_active").fetchone()[0]
    expected = MetaSpace.from_dict(state).transform([second])[0]  # read afresh, not from the process cache
    assert np.array_equal(vector, expected)


def embed_runs_at_once(db_url: str, **options) -> list[pipeline.EmbedSummary]:
    """Two embed-runs started together on the database, each in its own thread; both must finish cleanly."""
    results, errors = [], []

    def work() -> None:
        try:
            results.append(pipeline.embed_runs(database_url=db_url, **options))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 2, errors
    return results


def test_two_embed_runs_at_once_neither_double_write_nor_deadlock(db_url: str, tmp_path: Path) -> None:
    pipeline.import_runs([_write(tmp_path / "a.jsonl", synthetic_runs(600, seed=6))], database_url=db_url)
    results = embed_runs_at_once(db_url, batch_size=100)
    assert sorted(r.embedded for r in results) == [0, 600]
    counts = _counts(db_url)
    assert counts["joint"] == counts["distinct_joint"] == 600 and counts["branch"] == 1800


def test_a_backfill_killed_midway_completes_on_rerun(db_url: str, tmp_path: Path) -> None:
    pipeline.import_runs([_write(tmp_path / "a.jsonl", synthetic_runs(1500, seed=8))], database_url=db_url)
    pipeline.embed_runs(database_url=db_url, limit=2)
    env = os.environ | {"METASPACE_DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "metaspace", "embed-runs", "--batch-size", "50"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _counts(db_url)["joint"] < 200 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    middle = _counts(db_url)
    assert middle["joint"] == middle["distinct_joint"] and middle["joint"] < 1500
    assert middle["branch"] == 3 * middle["joint"]
    pipeline.embed_runs(database_url=db_url)
    counts = _counts(db_url)
    assert counts["joint"] == counts["distinct_joint"] == 1500 and counts["branch"] == 4500


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_import_and_embed_paths(db_url: str, runs_file: str, tmp_path: Path) -> None:
    result = run_cli("import-runs", "--database-url", db_url, runs_file, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["inserted"] == 400
    dry = run_cli("embed-runs", "--database-url", db_url, "--dry-run")
    assert dry.exit_code == 0, dry.output
    with psycopg.connect(db_url) as conn:  # a dry run fits nothing and writes nothing
        assert conn.execute("SELECT count(*) FROM historical_db.encoder_versions").fetchone()[0] == 0
    assert _counts(db_url)["joint"] == 0
    done = run_cli("embed-runs", "--database-url", db_url, "--format", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output.splitlines()[-1])["embedded"] == 400
    counts = _counts(db_url)
    table = run_cli("embed-runs", "--database-url", db_url)
    assert table.exit_code == 0, table.output  # the readable summary still prints
    assert _counts(db_url) == counts and counts["joint"] == 400
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run_id": "Z"}\n')
    strict = run_cli("import-runs", "--database-url", db_url, str(bad), "--strict")
    assert strict.exit_code == 1 and "as_of_date" in strict.output
    missing = run_cli("import-runs", "--database-url", db_url, str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_cli_import_reads_csv_with_dotted_columns(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("run_id,as_of_date,strategy_id,config.risk.target_vol,env.regime_mix.bull,outcome.sharpe\n"
                    "R1,2024-03-29,S1,0.12,0.55,1.1\nR2,2024-03-30,S1,0.10,,0.4\n")
    assert run_cli("import-runs", "--database-url", db_url, str(path)).exit_code == 0
    with psycopg.connect(db_url) as conn:
        config, env = conn.execute("SELECT config, env FROM historical_db.runs WHERE run_id = 'R1'").fetchone()
        env2 = conn.execute("SELECT env FROM historical_db.runs WHERE run_id = 'R2'").fetchone()[0]
    assert config == {"risk": {"target_vol": 0.12}} and env == {"regime_mix": {"bull": 0.55}} and env2 == {}


def test_a_large_backfill_keeps_the_graphs_while_another_session_is_connected(db_url: str, sample_history: list[dict],
                                                                               monkeypatch) -> None:
    """A backfill larger than the table dropped every HNSW graph for the load: a reader connected meanwhile
    searched by scanning the table (measured by benchmarks/bench_load.py: search p95 from 9 ms to 17 s while
    100,000 runs were embedded into 100,000). With another session connected, the graphs stay and take the rows
    one at a time, and embed-runs says so; with none, the faster drop and rebuild is kept."""
    monkeypatch.setattr(pipeline, "BULK_MIN", 100)
    graphs = ("SELECT c.oid FROM pg_class c JOIN pg_am am ON am.oid = c.relam JOIN pg_namespace n "
              "ON n.oid = c.relnamespace WHERE n.nspname = 'historical_db' AND am.amname = 'hnsw' ORDER BY 1")
    pipeline.import_records((("runs", i, r) for i, r in enumerate(sample_history[:100])), database_url=db_url)
    pipeline.embed_runs(database_url=db_url, index_min_vectors=0)
    pipeline.import_records((("runs", i, r) for i, r in enumerate(sample_history[100:400])), database_url=db_url)
    with psycopg.connect(db_url) as reader:
        before = reader.execute(graphs).fetchall()
        reader.commit()  # connected, idle between its searches
        kept = pipeline.embed_runs(database_url=db_url, index_min_vectors=0)
        assert kept.embedded == 300 and not kept.index_rebuilt
        assert any("1 other session(s) are connected" in note for note in kept.notes), kept.notes
        assert reader.execute(graphs).fetchall() == before  # the same graphs, never dropped
    pipeline.import_records((("runs", i, r) for i, r in enumerate(sample_history[400:1400])), database_url=db_url)
    alone = pipeline.embed_runs(database_url=db_url, index_min_vectors=0)
    assert alone.embedded == 1000 and alone.index_rebuilt
