"""import-optuna and the Optuna warm start, against real Optuna studies in SQLite."""

from __future__ import annotations

import datetime as dt
import itertools
import json
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
from metaspace.sources.optuna import storage_location

optuna = pytest.importorskip("optuna")
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

STUDY = "momentum-tuning"
DISTRIBUTIONS = {"lookback_days": IntDistribution(10, 200), "risk.target_vol": FloatDistribution(0.05, 0.3),
                 "rebalance": CategoricalDistribution(["daily", "weekly"])}
GRID = list(itertools.product((20, 60, 120), (0.1, 0.15, 0.2), ("daily", "weekly")))
DAY0 = dt.datetime(2023, 1, 2, 12)
ENV = {"realized_vol": 0.32, "regime_mix": {"bull": 0.2, "bear": 0.8}, "universe_size": 480}


def _trial(i: int, state: TrialState = TrialState.COMPLETE, **user_attrs) -> FrozenTrial:
    lookback, target_vol, rebalance = GRID[i % len(GRID)]
    vol = 0.1 + 0.3 * ((i * 37) % 100) / 100
    sharpe = 1.2 - abs(vol - 2 * target_vol) * 3 + (0.3 if rebalance == "weekly" else 0.0) - lookback / 400
    complete = state == TrialState.COMPLETE
    return FrozenTrial(
        number=i, trial_id=i, state=state, value=None, values=[round(sharpe, 4), -round(vol / 2, 4)] if complete else None,
        datetime_start=DAY0 + dt.timedelta(days=i), datetime_complete=DAY0 + dt.timedelta(days=i, hours=1),
        params={"lookback_days": lookback, "risk.target_vol": target_vol, "rebalance": rebalance},
        distributions=DISTRIBUTIONS,
        user_attrs={"env.realized_vol": round(vol, 4), "env.regime_mix.bull": round(1 - vol, 3),
                    "env.regime_mix.bear": round(vol, 3), "outcome.turnover": 2.0 + i % 5, "note": "grid",
                    **user_attrs},
        system_attrs={}, intermediate_values={0: 0.1, 3: 0.05} if state == TrialState.PRUNED else {},
    )


def _fast_dir() -> Path:
    """A RAM disk where there is one (SQLite commits each trial; see test_mlflow)."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="metaspace-optuna-", dir=shm if shm.is_dir() else None))


@pytest.fixture(scope="module")
def storage() -> Iterator[str]:
    """A study of 200 completed trials (one with an outcome that is no run record), 8 pruned, 4 failed."""
    root = _fast_dir()
    url = f"sqlite:///{root}/optuna.db"
    study = optuna.create_study(study_name=STUDY, storage=url, directions=["maximize", "maximize"])
    study.set_metric_names(["sharpe", "max_drawdown"])
    study.set_user_attr("universe_size", 480)
    trials = [_trial(i) for i in range(200)]
    trials[7] = _trial(7, **{"outcome.notes": ["lagged", "ok"]})
    trials += [_trial(200 + i, TrialState.PRUNED) for i in range(8)]
    trials += [_trial(208 + i, TrialState.FAIL) for i in range(4)]
    study.add_trials(trials)
    yield url
    shutil.rmtree(root, ignore_errors=True)


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def _stored(url: str, run_id: str) -> dict:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT config_id, strategy_id, as_of_date, config, env, outcome, extra "
                           "FROM historical_db.runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None, run_id
    return dict(zip(("config_id", "strategy_id", "as_of_date", "config", "env", "outcome", "extra"), row))


def _imported(db_url: str, storage: str) -> None:
    summary = metaspace.import_optuna(storage, study=STUDY, database_url=db_url)
    assert summary.inserted == 199
    assert metaspace.embed_runs(database_url=db_url).embedded == 199


def test_import_optuna_imports_completed_trials_which_then_embed_and_are_searchable(db_url: str, storage: str,
                                                                                     tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    result = run_cli("--database-url", db_url, "import-optuna", "--storage", storage, "--study", STUDY,
                     "--rejects", str(rejects), "--format", "json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert {k: counts[k] for k in ("read", "inserted", "updated", "unchanged", "rejected", "skipped")} == {
        "read": 200, "inserted": 199, "updated": 0, "unchanged": 0, "rejected": 1, "skipped": 12}
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert (reject["run_id"], reject["field"]) == (f"optuna:{STUDY}:7", "outcome.notes[0]")
    assert f"skipped run 'optuna:{STUDY}:200' (PRUNED): pruned at step 3" in result.stderr
    assert f"skipped run 'optuna:{STUDY}:208' (FAIL): failed" in result.stderr

    assert metaspace.embed_runs(database_url=db_url).embedded == 199
    hits = metaspace.search(run=f"optuna:{STUDY}:0", k=5, database_url=db_url)
    assert len(hits) == 5 and all(hit["run_id"].startswith(f"optuna:{STUDY}:") for hit in hits)

    again = run_cli("--database-url", db_url, "import-optuna", "--storage", storage, "--study", STUDY)
    assert again.exit_code == 0, again.output
    assert "read 200, inserted 0, updated 0, unchanged 199, rejected 1, skipped 12" in again.stdout


def test_trials_map_to_config_env_and_outcome_by_default(db_url: str, storage: str) -> None:
    metaspace.import_optuna(storage, study=STUDY, database_url=db_url)
    run = _stored(db_url, f"optuna:{STUDY}:1")
    assert run["config"] == {"lookback_days": 20, "risk": {"target_vol": 0.1}, "rebalance": "weekly"}
    assert set(run["outcome"]) == {"sharpe", "max_drawdown", "turnover"}
    assert run["env"] == {"realized_vol": 0.211, "regime_mix": {"bull": 0.789, "bear": 0.211}, "universe_size": 480}
    assert run["as_of_date"] == dt.date(2023, 1, 3) and run["strategy_id"] == STUDY
    assert run["extra"]["optuna"] == {"study": STUDY, "trial": 1, "datetime_complete": "2023-01-03T13:00:00",
                                      "source": storage_location(storage)}
    assert run["extra"]["optuna"]["source"].startswith("sqlite:////")  # the file's absolute path
    assert run["config_id"] == _stored(db_url, f"optuna:{STUDY}:{1 + len(GRID)}")["config_id"]
    assert run["config_id"] != _stored(db_url, f"optuna:{STUDY}:2")["config_id"]


def test_values_are_named_value_or_values_i_without_metric_names_and_a_map_applies(db_url: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/small.db"
    single = optuna.create_study(study_name="single", storage=url)
    single.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    multi = optuna.create_study(study_name="multi", storage=url, directions=["maximize", "minimize"])
    multi.set_user_attr("valid_from", "2024-02-01")
    multi.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=3)
    metaspace.import_optuna(url, study="single", database_url=db_url)
    assert set(_stored(db_url, "optuna:single:0")["outcome"]) == {"value"}
    mapped = tmp_path / "map.yaml"
    mapped.write_text("as_of_date: valid_from\noutcome: [values_1]\nenv: [values_0]\n")
    summary = metaspace.import_optuna(url, study="multi", map=str(mapped), database_url=db_url)
    assert summary.inserted == 3
    run = _stored(db_url, "optuna:multi:2")
    assert set(run["outcome"]) == {"values_1"} and set(run["env"]) == {"values_0"}
    assert run["as_of_date"] == dt.date(2024, 2, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("url, study, message", [
    ("sqlite:///{tmp}/missing.db", STUDY, "no Optuna storage at sqlite:///"),
    ("postgresql+psycopg://nobody:secret@127.0.0.1:{port}/optuna", STUDY, "cannot open the Optuna storage at "
     "postgresql+psycopg://nobody:***@127.0.0.1"),
    ("{storage}", "nope", "no Optuna study named 'nope' in sqlite:///"),
])
def test_an_unreachable_storage_or_unknown_study_is_a_clear_error(db_url: str, storage: str, tmp_path: Path,
                                                                  url: str, study: str, message: str) -> None:
    url = url.format(tmp=tmp_path, port=_free_port(), storage=storage)
    result = run_cli("--database-url", db_url, "import-optuna", "--storage", url, "--study", study)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("Error: ") and message in result.output and "secret" not in result.output
    assert not (tmp_path / "missing.db").exists(), "the importer never creates a storage"


def _objective(trial) -> float:
    lookback = trial.suggest_int("lookback_days", 10, 200)
    target_vol = trial.suggest_float("risk.target_vol", 0.05, 0.3)
    rebalance = trial.suggest_categorical("rebalance", ["daily", "weekly"])
    return target_vol * lookback / 100 + (rebalance == "weekly")


def test_suggest_format_optuna_enqueued_runs_as_the_first_trials(db_url: str, storage: str, tmp_path: Path) -> None:
    _imported(db_url, storage)
    env = tmp_path / "env.json"
    env.write_text(json.dumps(ENV))
    result = run_cli("--database-url", db_url, "suggest", "--env", str(env), "-k", "3", "--format", "optuna")
    assert result.exit_code == 0, result.output
    suggested = json.loads(result.stdout.strip())
    assert len(suggested) == 3 and all(set(p) == set(DISTRIBUTIONS) for p in suggested)
    study = optuna.create_study(study_name="warm", storage=f"sqlite:///{tmp_path}/warm.db", direction="maximize")
    for params in suggested:
        study.enqueue_trial(params)
    study.optimize(_objective, n_trials=5)
    assert [t.params for t in study.trials[:3]] == suggested


def test_optuna_warm_start_enqueues_fitting_params_and_reports_the_rest(db_url: str, storage: str,
                                                                        tmp_path: Path) -> None:
    _imported(db_url, storage)
    study = optuna.create_study(study_name="narrow", storage=f"sqlite:///{tmp_path}/narrow.db", direction="maximize")
    narrow = {"lookback_days": IntDistribution(10, 40), "risk.target_vol": FloatDistribution(0.05, 0.3)}
    expected = metaspace.suggest(ENV, k=4, objective="sharpe", database_url=db_url)
    done = metaspace.optuna_warm_start(study, ENV, k=4, objective="sharpe", distributions=narrow, database_url=db_url)

    reported = {(r["config_id"], r["param"]): r["reason"] for r in done.reported}
    enqueued = [e["config_id"] for e in done.enqueued]
    assert enqueued and enqueued == [s["config_id"] for s in expected if (s["config_id"], None) not in reported]
    for s in expected:
        assert reported[(s["config_id"], "rebalance")] == "not a parameter of the study"
        if s["config"]["lookback_days"] > 40:
            assert reported[(s["config_id"], "lookback_days")].startswith("outside IntDistribution(")
        else:
            assert (s["config_id"], "lookback_days") not in reported
    assert any(param == "lookback_days" for _, param in reported), "a suggested value lies outside the study"
    twice = metaspace.optuna_warm_start(study, ENV, k=4, objective="sharpe", distributions=narrow, database_url=db_url)
    assert twice.enqueued == [] and len(study.trials) == len(enqueued), "waiting trials are not enqueued again"
    study.optimize(lambda t: t.suggest_int("lookback_days", 10, 40) * t.suggest_float("risk.target_vol", 0.05, 0.3),
                   n_trials=len(enqueued))
    for trial, entry in zip(study.trials, done.enqueued):
        assert {k: trial.params[k] for k in entry["params"]} == entry["params"]
        assert trial.user_attrs["metaspace.config_id"] == entry["config_id"]

    again = metaspace.optuna_warm_start(study, ENV, k=4, objective="sharpe", distributions=narrow, database_url=db_url)
    assert again.enqueued == [], again
    assert all(r["reason"].startswith("already in the study as trial") for r in again.reported if r["param"] is None)

    back = metaspace.import_optuna(f"sqlite:///{tmp_path}/narrow.db", study="narrow", database_url=db_url)
    assert back.inserted == len(enqueued)
    assert _stored(db_url, "optuna:narrow:0")["config_id"] == expected[0]["config_id"]


def test_importing_metaspace_imports_neither_mlflow_nor_optuna() -> None:
    import subprocess
    import sys

    code = "import sys, metaspace; print(sorted({'mlflow', 'optuna'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _studies(root: Path, names: list[str]) -> str:
    url = f"sqlite:///{root}/many.db"
    for n, name in enumerate(names):
        study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "maximize"])
        study.set_user_attr("n_samples", 1000 * (n + 1))
        study.add_trials([_trial(i) for i in range(5)])
    return url


def _strategies(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT strategy_id, count(*) FROM historical_db.runs GROUP BY 1").fetchall())


def test_import_optuna_takes_every_study_named_and_every_study_with_all_studies(db_url: str,
                                                                                tmp_path: Path) -> None:
    """--study A --study B imported only B (click kept the last value)."""
    url = _studies(tmp_path, ["tune_a", "tune_b", "tune_c"])
    result = run_cli("--database-url", db_url, "import-optuna", "--storage", url, "--study", "tune_a", "--study",
                     "tune_b", "--format", "json")
    assert result.exit_code == 0, result.output
    assert _strategies(db_url) == {"tune_a": 5, "tune_b": 5}
    summary = metaspace.import_optuna(url, all_studies=True, database_url=db_url)
    assert (summary.inserted, summary.unchanged) == (5, 10) and _strategies(db_url)["tune_c"] == 5
    both = run_cli("--database-url", db_url, "import-optuna", "--storage", url, "--study", "tune_a", "--all-studies")
    assert both.exit_code == 1 and "not both" in both.output
    neither = run_cli("--database-url", db_url, "import-optuna", "--storage", url)
    assert neither.exit_code == 1 and "--all-studies" in neither.output
