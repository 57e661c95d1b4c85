"""import-mlflow against a real MLflow tracking store (SQLite backend, local artifacts, no server)."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import metaspace
from metaspace.cli import cli

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")  # MLflow's own SQLAlchemy use

RUNS = {"momentum": 350, "carry": 150}
DAY0 = dt.date(2023, 1, 2)


def _ms(day: dt.date, offset: int = 0) -> int:
    return int(dt.datetime.combine(day, dt.time(18), dt.timezone.utc).timestamp() * 1000) + offset


def _log_run(client: MlflowClient, experiment_id: str, i: int, *, status: str | None = "FINISHED",
             bad_artifact: bool = False, day: dt.date | None = None) -> str:
    """One backtest as a quant team logs it: params as text, metrics, env tags, now and then env.json."""
    day = day or DAY0 + dt.timedelta(days=i % 400)
    lookback = (20, 60, 120)[i % 3]
    vol = 0.1 + 0.4 * ((i * 37) % 100) / 100
    tags = {"env.realized_vol": str(round(vol, 4)), "env.regime_mix.bull": str(round(1 - vol, 3)),
            "env.regime_mix.bear": str(round(vol, 3)), "desk": "systematic"}
    if i % 50 == 0:
        tags["metaspace.config_id"] = f"CFG_LB{lookback}"
    run = client.create_run(experiment_id, start_time=_ms(day, -3_600_000), tags=tags)
    run_id = run.info.run_id
    params = [Param("lookback_days", str(lookback)), Param("risk.target_vol", str((0.1, 0.15)[i % 2])),
              Param("risk.use_stops", str(i % 4 == 0)), Param("rebalance", ("weekly", "daily")[i % 2]),
              Param("universe", "v2-beta")]
    metrics = [Metric("sharpe", round(1.5 - vol * 2 + lookback / 200, 4), _ms(day), 0),
               Metric("cagr", round(0.1 - vol / 5, 4), _ms(day), 0)]
    if i % 7:
        metrics.append(Metric("max_drawdown", -round(vol / 2, 4), _ms(day), 0))
    if i % 97 == 5:
        metrics.append(Metric("turnover", float("nan"), _ms(day), 0))
    client.log_batch(run_id, metrics=metrics, params=params)
    if i % 25 == 1:
        client.log_dict(run_id, {"universe": {"n_assets": 400 + i % 100}}, "env.json")
    if bad_artifact:
        client.log_dict(run_id, {"sectors": ["tech", "energy"]}, "env.json")
    if status:
        client.set_terminated(run_id, status=status, end_time=_ms(day, i))
    return run_id


def _fast_dir() -> Path:
    """A RAM disk where there is one: SQLite commits each MLflow call, and on a busy shared disk the
    fsyncs, not MLflow, would set the pace of these tests."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="metaspace-mlflow-", dir=shm if shm.is_dir() else None))


@pytest.fixture(scope="module")
def mlflow_store() -> Iterator[dict]:
    """A tracking store with 500 finished runs in two experiments, one run whose env.json is bad, one still
    running and one failed."""
    root = _fast_dir()
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    ids, special = {}, {}
    for name, count in RUNS.items():
        ids[name] = client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
        special[name] = [_log_run(client, ids[name], i) for i in range(count)]
    special["bad"] = _log_run(client, ids["carry"], 3, bad_artifact=True)
    special["running"] = _log_run(client, ids["carry"], 4, status=None)
    special["failed"] = _log_run(client, ids["carry"], 5, status="FAILED")
    yield {"root": root, "uri": uri, "runs": special, "experiment_ids": ids}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tracking_uri(mlflow_store: dict, tmp_path: Path) -> str:
    """This test's own copy of the store (the artifacts stay where they were logged), free to change."""
    copy = mlflow_store["root"] / f"copy-{tmp_path.name}.db"
    shutil.copy(mlflow_store["root"] / "mlflow.db", copy)
    return f"sqlite:///{copy}"


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def _stored(url: str, run_id: str) -> dict:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT config_id, strategy_id, as_of_date, config, env, outcome, extra "
                           "FROM historical_db.runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None, run_id
    return dict(zip(("config_id", "strategy_id", "as_of_date", "config", "env", "outcome", "extra"), row))


def test_import_mlflow_imports_the_finished_runs_which_then_embed_and_are_searchable(
        db_url: str, mlflow_store: dict, tracking_uri: str, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    result = run_cli("--database-url", db_url, "import-mlflow", "--tracking-uri", tracking_uri,
                     "--rejects", str(rejects), "--format", "json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert {k: counts[k] for k in ("read", "inserted", "updated", "unchanged", "rejected", "skipped")} == {
        "read": 501, "inserted": 500, "updated": 0, "unchanged": 0, "rejected": 1, "skipped": 2}
    runs = mlflow_store["runs"]
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["run_id"] == runs["bad"] and reject["field"] == "env.sectors[0]"
    assert f"run {runs['bad']!r} field 'env.sectors[0]'" in result.stderr
    assert f"skipped run {runs['running']!r} (RUNNING): still running" in result.stderr
    assert f"skipped run {runs['failed']!r} (FAILED)" in result.stderr

    summary = metaspace.embed_runs(database_url=db_url)
    assert summary.embedded == 500 and not summary.quarantined
    first = runs["momentum"][0]
    hits = metaspace.search(run=first, k=5, database_url=db_url)
    assert len(hits) == 5 and all(hit["run_id"] in runs["momentum"] + runs["carry"] for hit in hits)
    alike = metaspace.search(run=first, k=5, space="config", database_url=db_url)
    assert all(hit["distance"] < 1e-6 for hit in alike), "runs of the same config are nearest in config space"


def test_runs_map_to_config_env_and_outcome_by_default(db_url: str, mlflow_store: dict, tracking_uri: str) -> None:
    summary = metaspace.import_mlflow(tracking_uri, experiment=["momentum"], database_url=db_url)
    assert (summary.read, summary.inserted, summary.rejected, summary.skipped) == (350, 350, 0, 0)
    momentum = mlflow_store["runs"]["momentum"]
    zero, one, five = (_stored(db_url, momentum[i]) for i in (0, 1, 5))
    assert zero["config"] == {"lookback_days": 20, "rebalance": "weekly", "universe": "v2-beta",
                              "risk": {"target_vol": 0.1, "use_stops": True}}
    assert zero["env"] == {"realized_vol": 0.1, "regime_mix": {"bull": 0.9, "bear": 0.1}}
    assert set(zero["outcome"]) == {"sharpe", "cagr"}, "a metric the run did not log stays missing"
    assert one["env"]["universe"] == {"n_assets": 401}, "the env.json artifact joins env"
    assert five["outcome"]["turnover"] is None and math.isfinite(five["outcome"]["sharpe"])
    assert zero["config_id"] == "CFG_LB20" and one["config_id"].startswith("cfg-")
    assert zero["strategy_id"] == "momentum" and zero["as_of_date"] == DAY0
    assert one["extra"]["mlflow"]["end_time"] == _ms(DAY0 + dt.timedelta(days=1), 1)
    same_config = _stored(db_url, momentum[12])
    assert same_config["config"] == _stored(db_url, momentum[24])["config"]
    assert same_config["config_id"] == _stored(db_url, momentum[24])["config_id"], "the config hash is stable"


def test_a_rerun_reads_only_runs_that_ended_since_the_last_import(db_url: str, mlflow_store: dict,
                                                                  tracking_uri: str) -> None:
    first = metaspace.import_mlflow(tracking_uri, database_url=db_url)
    assert first.inserted == 500
    again = metaspace.import_mlflow(tracking_uri, database_url=db_url)
    assert (again.read, again.inserted, again.updated, again.skipped) == (0, 0, 0, 0)
    assert any("only runs that ended after" in note for note in again.notes)

    client = MlflowClient(tracking_uri=tracking_uri)
    new = [_log_run(client, mlflow_store["experiment_ids"]["momentum"], 900 + i, day=dt.date(2024, 6, 3))
           for i in range(3)]
    later = metaspace.import_mlflow(tracking_uri, database_url=db_url)
    assert (later.read, later.inserted, later.updated) == (3, 3, 0)
    assert _stored(db_url, new[0])["strategy_id"] == "momentum"

    every = metaspace.import_mlflow(tracking_uri, experiment=["carry"], since="2000-01-01", database_url=db_url)
    assert (every.read, every.inserted, every.unchanged, every.rejected) == (151, 0, 150, 1)


def test_a_map_file_routes_names_and_names_the_as_of_date(db_url: str, mlflow_store: dict, tracking_uri: str,
                                                          tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = _log_run(client, mlflow_store["experiment_ids"]["carry"], 1000)
    client.set_tag(run_id, "valid_until", "2024-06-28")
    client.set_tag(run_id, "desk", "macro")
    dated = tmp_path / "map.yaml"
    dated.write_text("outcome: [sharpe, calmar]\nenv: [metrics.cagr]\nignore: [universe, 'risk.*']\n"
                     "as_of_date: valid_until\nstrategy_id: tags.desk\n")
    result = run_cli("--database-url", db_url, "import-mlflow", "--tracking-uri", tracking_uri,
                     "--experiment", "carry", "--map", str(dated))
    assert result.exit_code == 0, result.output
    assert "read 152, inserted 1, updated 0, unchanged 0, rejected 151, skipped 2" in result.stdout
    assert "field 'as_of_date': the run has no 'valid_until'" in result.stderr
    stored = _stored(db_url, run_id)
    assert stored["as_of_date"] == dt.date(2024, 6, 28) and stored["strategy_id"] == "macro"
    assert stored["config"] == {"lookback_days": 60, "rebalance": "weekly"}
    assert stored["outcome"]["calmar"] is None and "max_drawdown" in stored["outcome"]
    assert "cagr" not in stored["outcome"] and isinstance(stored["env"]["cagr"], float)
    assert "desk" not in stored["env"] and "valid_until" not in stored["config"]

    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"config": ["universe"], "ignore": ["params.*"]}))
    other = metaspace.import_mlflow(tracking_uri, experiment=["momentum"], map=str(as_json), database_url=db_url)
    assert other.inserted == 350
    assert _stored(db_url, mlflow_store["runs"]["momentum"][0])["config"] == {"universe": "v2-beta"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("uri, message", [
    ("sqlite:///{tmp}/missing.db", "no MLflow tracking store at sqlite:///"),
    ("{tmp}/no-such-folder", "is not a directory"),
    ("http://127.0.0.1:{port}", "cannot reach the MLflow tracking server at http://127.0.0.1"),
])
def test_an_unreachable_tracking_store_is_a_clear_error(db_url: str, tmp_path: Path, uri: str, message: str) -> None:
    uri = uri.format(tmp=tmp_path, port=_free_port())
    result = run_cli("--database-url", db_url, "import-mlflow", "--tracking-uri", uri)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert not (tmp_path / "missing.db").exists(), "the importer never creates a tracking store"


def test_an_unknown_experiment_or_map_key_is_a_clear_error(db_url: str, tracking_uri: str, tmp_path: Path) -> None:
    result = run_cli("--database-url", db_url, "import-mlflow", "--tracking-uri", tracking_uri,
                     "--experiment", "nope")
    assert result.exit_code == 1 and "no MLflow experiment named 'nope' (experiments: " in result.output
    bad = tmp_path / "map.json"
    bad.write_text('{"configs": ["x"]}')
    result = run_cli("--database-url", db_url, "import-mlflow", "--tracking-uri", tracking_uri, "--map", str(bad))
    assert result.exit_code == 1 and "unknown key(s) configs" in result.output
