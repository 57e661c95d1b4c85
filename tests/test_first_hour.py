"""A newcomer's first hour (issue 27): no dead end on the first step, every empty answer says why, typos are
caught, dates are read strictly, nothing logged is lost, and warm starts are checked."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna
import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

import metaspace
from metaspace.cli import cli
from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.records import parse_date, validate
from metaspace.sample import sample_runs, write_runs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _notes(call, *args, **kwargs):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = call(*args, **kwargs)
    return result, [str(w.message) for w in said]


# -- dates -------------------------------------------------------------------------------------------------------

DATES = [("2024-03-29", "2024-03-29"), ("2024-03-29T17:30:00", "2024-03-29"), ("2024-03-29 17:30:00+02:00",
         "2024-03-29"), ("2024-03-29garbage", None), ("2024-3-29", None), ("29/03/2024", None),
         ("2024-02-30", None), ("2024-03-29T25:00", None)]


@pytest.mark.parametrize("text, day", DATES)
def test_dates_are_read_strictly_and_alike_on_import_and_in_sql(sample_db: str, text: str, day: str | None) -> None:
    """'2024-03-29garbage' was read as the 29th (records.py cut the text to ten characters; so did SQL)."""
    if day is None:
        with pytest.raises(MetaspaceError, match="is not an ISO date"):
            parse_date(text, "as_of")
        with pytest.raises(InvalidRecordError, match="as_of_date"):
            validate({"run_id": "R", "as_of_date": text})
    else:
        assert parse_date(text, "as_of") == dt.date.fromisoformat(day)
    with psycopg.connect(sample_db) as conn:
        if day is None:
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not an ISO date"):
                conn.execute("SELECT historical_db.record_as_of_v1(%s, NULL)", (Jsonb({"as_of_date": text}),))
        else:
            got = conn.execute("SELECT historical_db.record_as_of_v1(%s, NULL)",
                               (Jsonb({"as_of_date": text}),)).fetchone()[0]
            assert got == dt.date.fromisoformat(day)


# -- the first step ----------------------------------------------------------------------------------------------


def test_a_first_command_on_the_embedded_default_creates_the_schema_and_says_so(monkeypatch, tmp_path) -> None:
    """The tour's first step, import-runs, stopped with 'run metaspace migrate first', which it never mentions."""
    from metaspace.store import embedded

    home = Path(tempfile.mkdtemp(prefix="metaspace-test-first-"))
    monkeypatch.setenv("METASPACE_HOME", str(home))
    monkeypatch.delenv("METASPACE_DATABASE_URL", raising=False)
    try:
        runs = write_runs(sample_runs(50, seed=3), tmp_path / "runs.jsonl")
        result = CliRunner().invoke(cli, ["import-runs", str(runs)])
        assert result.exit_code == 0, result.output
        assert "created metaspace's schema in the embedded database" in result.output
        assert "inserted 50" in result.output
        again = CliRunner().invoke(cli, ["import-runs", str(runs)])
        assert again.exit_code == 0 and "created" not in again.output
    finally:
        metaspace.close()
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_on_a_users_own_server_a_missing_schema_still_names_the_command(empty_db: str, tmp_path: Path) -> None:
    runs = write_runs(sample_runs(5, seed=3), tmp_path / "runs.jsonl")
    result = CliRunner().invoke(cli, ["--database-url", empty_db, "import-runs", str(runs)])
    assert result.exit_code == 1 and "run `metaspace migrate` first" in result.output


# -- empty answers and typos -------------------------------------------------------------------------------------


def test_an_empty_search_says_why(sample_db: str, sample_history: list[dict]) -> None:
    rows, notes = _notes(metaspace.search, env=sample_history[0]["env"], as_of="1980-01-01", database_url=sample_db)
    assert rows == [] and any("no run is dated on or before 1980-01-01" in n for n in notes), notes
    rows, notes = _notes(metaspace.search, run=sample_history[0]["run_id"], strategy="NO_SUCH_DESK",
                         database_url=sample_db)
    assert rows == [] and any("matches strategy NO_SUCH_DESK" in n for n in notes), notes


def test_a_mistyped_key_or_category_in_a_query_gets_a_note_naming_the_nearest(sample_db: str,
                                                                              sample_history: list[dict]) -> None:
    """An env with n_asset (for n_assets) and market 'US_EQQ' got only 'not given, encoded as missing'."""
    env = json.loads(json.dumps(sample_history[0]["env"]))
    env["universe"]["n_asset"] = env["universe"].pop("n_assets")
    env["universe"]["market"] = env["universe"]["market"] + "Q"
    _, notes = _notes(metaspace.search, env=env, k=3, database_url=sample_db)
    assert any("env.universe.n_asset is not a key the encoder was fitted on" in n
               and "did you mean env.universe.n_assets?" in n for n in notes), notes
    assert any("was never seen when the encoder was fitted" in n and "did you mean" in n for n in notes), notes


# -- histories without outcome windows ---------------------------------------------------------------------------


def _studies(path: Path, count: int, day: dt.date) -> str:
    storage = f"sqlite:///{path}"
    for s in range(count):
        study = optuna.create_study(study_name=f"tune-{s}", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=s))
        study.set_user_attr("n_samples", 1000 * (s + 1))
        trials = []
        for i in range(12):
            x, kind = (i % 6) / 5, ("a", "b")[i % 2]
            trials.append(optuna.trial.create_trial(
                params={"x": x, "kind": kind}, value=-(x - 0.2 * (s % 4)) ** 2 + (0.1 if kind == "a" else 0.0),
                distributions={"x": optuna.distributions.FloatDistribution(0, 1),
                               "kind": optuna.distributions.CategoricalDistribution(("a", "b"))}))
        for t in trials:
            t.datetime_complete = dt.datetime.combine(day + dt.timedelta(days=s), dt.time(12))
        study.add_trials(trials)
    return storage


def test_evaluate_on_a_search_history_needs_no_horizon_and_says_how_it_decided(db_url: str, tmp_path: Path) -> None:
    """evaluate asked for --horizon 'from a decision to its outcome' and test_start, which an ML user has not."""
    storage = _studies(tmp_path / "studies.db", 8, dt.date(2024, 1, 1))
    metaspace.import_optuna(storage, all_studies=True, database_url=db_url)
    metaspace.embed_runs(database_url=db_url)
    result = metaspace.evaluate(objective="value", min_runs=1, database_url=db_url)
    assert any("no outcome window" in n and "ranked from the runs dated before its day" in n for n in result.notes)
    assert result.decision_points == 8 and result.picked >= 5


# -- importers ---------------------------------------------------------------------------------------------------


def test_a_study_name_from_a_second_storage_is_refused_then_imported_beside_with_a_source_name(
        db_url: str, tmp_path: Path) -> None:
    """Run ids were optuna:<study>:<n>: two storages that both hold a study 'tune-0' overwrote each other."""
    first = _studies(tmp_path / "one.db", 1, dt.date(2024, 1, 1))
    second = _studies(tmp_path / "two.db", 1, dt.date(2024, 2, 1))
    assert metaspace.import_optuna(first, study="tune-0", database_url=db_url).inserted == 12
    with pytest.raises(MetaspaceError, match="already imported from sqlite:///.*one.db.*--source-name"):
        metaspace.import_optuna(second, study="tune-0", database_url=db_url)
    assert metaspace.import_optuna(second, study="tune-0", source_name="lab2", database_url=db_url).inserted == 12
    assert metaspace.import_optuna(first, study="tune-0", database_url=db_url).unchanged == 12
    with psycopg.connect(db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT run_id FROM historical_db.runs ORDER BY run_id").fetchall()]
    assert len(ids) == 24 and "optuna:tune-0:0" in ids and "optuna:lab2:tune-0:0" in ids


def test_optuna_warm_start_on_a_fresh_study_without_distributions_is_refused(sample_db: str,
                                                                            sample_history: list[dict]) -> None:
    study = optuna.create_study(direction="maximize")
    with pytest.raises(MetaspaceError, match="pass distributions="):
        metaspace.optuna_warm_start(study, sample_history[0]["env"], objective="sharpe", database_url=sample_db)
    assert study.trials == []


def test_mlflow_tags_no_branch_takes_are_kept_with_the_run(db_url: str, tmp_path: Path) -> None:
    """Tags other than env.* were dropped entirely."""
    mlflow = pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("desk", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, tags={"env.realized_vol": "0.2", "desk": "systematic", "owner": "ana"})
    client.log_param(run.info.run_id, "lookback", "20")
    client.log_metric(run.info.run_id, "sharpe", 1.1)
    client.set_terminated(run.info.run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert metaspace.import_mlflow(tracking_uri=uri, database_url=db_url).inserted == 1
    with psycopg.connect(db_url) as conn:
        env, extra = conn.execute("SELECT env, extra FROM historical_db.runs").fetchone()
    assert env == {"realized_vol": 0.2} and extra["mlflow"]["tags"] == {"desk": "systematic", "owner": "ana"}
    del mlflow
