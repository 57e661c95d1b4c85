"""Point in time, end to end (issue 12): an answer as of D depends on nothing dated after D: not the runs
returned, not their ranking, not an imputed branch, not the fitted encoder (fit with --fit-until)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from conftest import TEMPLATE, _create_database, _drop_database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.encoders import MetaSpace
from metaspace.fitted import load_space
from metaspace.records import validate
from metaspace.sample import sample_runs
from metaspace.store import registry
from metaspace.store import runs as run_store
from metaspace.store import vectors as vector_store
from metaspace.store.connection import connect

HISTORY = sample_runs(700, seed=5)
DATES = sorted({r["as_of_date"] for r in HISTORY})
FIT_UNTIL = DATES[len(DATES) // 3]


@pytest.fixture(scope="module")
def pit_db(server_url: str, template_url: str) -> Iterator[str]:
    """The history embedded with an encoder version fitted only on runs known by FIT_UNTIL."""
    name = f"pit_{uuid.uuid4().hex[:10]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    pipeline.import_records((("history", i, r) for i, r in enumerate(HISTORY)), database_url=url)
    pipeline.embed_runs(database_url=url, fit_until=FIT_UNTIL)
    yield url
    _drop_database(server_url, name)


def _future_runs(after: str, n: int, seed: int) -> list[dict]:
    """Runs dated after ``after``, some with extreme outcomes and values never seen before."""
    rng = np.random.default_rng(seed)
    start = dt.date.fromisoformat(after)
    runs = []
    for i, base in enumerate(sample_runs(n, seed=seed + 100)):
        run = json.loads(json.dumps(base))
        run["run_id"] = f"FUTURE_{seed}_{i}"
        run["as_of_date"] = (start + dt.timedelta(days=1 + int(rng.integers(0, 2000)))).isoformat()
        run["outcome"]["sharpe"] = float(rng.choice([-50.0, 50.0, 1e6]))
        run["env"]["realized_vol"] = float(rng.choice([0.0, 9.0]))
        run["config"]["brand_new_knob"] = "never seen"
        runs.append(run)
    return runs


def _answers(url: str, as_of: str) -> dict:
    probe = HISTORY[7]
    env = {"realized_vol": 0.22, **{k: v for k, v in probe["env"].items() if k != "realized_vol"}}
    return {
        "search_env": metaspace.search(env=env, k=15, as_of=as_of, database_url=url),
        "search_joint_imputed": metaspace.search(record={"config": probe["config"]}, k=15, as_of=as_of,
                                                 database_url=url),
        "neighbours": metaspace.search(run=probe["run_id"], k=15, as_of=as_of, space="config", database_url=url),
        "suggest": metaspace.suggest(env, k=5, as_of=as_of, objective="sharpe", database_url=url),
        # each config's record from only the latest 50 runs known at the date: never the latest 50 overall
        "suggest_recent_record": metaspace.suggest(env, k=5, as_of=as_of, objective="sharpe", history=50,
                                                   database_url=url),
    }


def _delete(url: str, run_ids: list[str]) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM historical_db.joint_embeddings WHERE entity_scope->>'run_id' = ANY(%s)", (run_ids,))
        conn.execute("DELETE FROM historical_db.runs WHERE run_id = ANY(%s)", (run_ids,))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day=st.sampled_from([d for d in DATES if d >= FIT_UNTIL][::7]), n=st.integers(1, 40), seed=st.integers(0, 99))
def test_answers_as_of_d_ignore_runs_added_after_d(pit_db: str, day: str, n: int, seed: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = _answers(pit_db, day)
        future = _future_runs(day, n, seed)
        pipeline.import_records((("future", i, r) for i, r in enumerate(future)), database_url=pit_db)
        assert pipeline.embed_runs(database_url=pit_db).embedded == n
        try:
            after = _answers(pit_db, day)
        finally:
            _delete(pit_db, [r["run_id"] for r in future])
    assert after == before


def test_the_cli_answer_as_of_d_ignores_runs_added_after_d(pit_db: str, tmp_path: Path) -> None:
    day = DATES[len(DATES) // 2]
    env = tmp_path / "env.json"
    env.write_text(json.dumps(HISTORY[3]["env"]))
    argv = ["--database-url", pit_db, "suggest", "--env", str(env), "--as-of", day, "--format", "json"]
    before = CliRunner().invoke(cli, argv)
    future = _future_runs(day, 30, 1)
    pipeline.import_records((("future", i, r) for i, r in enumerate(future)), database_url=pit_db)
    pipeline.embed_runs(database_url=pit_db)
    try:
        after = CliRunner().invoke(cli, argv)
    finally:
        _delete(pit_db, [r["run_id"] for r in future])
    assert before.exit_code == 0, before.output
    assert after.stdout == before.stdout


def test_fit_until_is_recorded_and_earlier_answers_say_the_encoder_saw_later_runs(pit_db: str,
                                                                                  tmp_path: Path) -> None:
    with connect(pit_db) as conn:
        [version] = registry.versions(conn)
    assert version.fit_until.isoformat() == FIT_UNTIL and version.fitted_through.isoformat() <= FIT_UNTIL
    assert version.fitted_on_runs == sum(r["as_of_date"] <= FIT_UNTIL for r in HISTORY)
    env = tmp_path / "env.json"
    env.write_text(json.dumps(HISTORY[3]["env"]))
    early, late = DATES[2], DATES[-1]
    for day, noted in ((early, True), (late, False)):
        result = CliRunner().invoke(cli, ["--database-url", pit_db, "search", "--env", str(env), "--as-of", day,
                                          "--format", "json"])
        [answer] = [json.loads(line) for line in result.stdout.splitlines()]
        said = any("was fitted on runs up to" in note for note in answer["notes"])
        assert said == noted and (said == ("was fitted on runs up to" in result.stderr))


def test_imputation_comes_from_the_fitted_version_not_the_stored_runs(pit_db: str) -> None:
    with connect(pit_db) as conn:
        version = registry.active_version(conn)
        space = load_space(conn, version)
    fit_sample = [r for r in HISTORY if r["as_of_date"] <= FIT_UNTIL]
    expected = MetaSpace().fit(fit_sample).encode(fit_sample).branches["outcome"].mean(axis=0)
    assert np.allclose(space.impute("outcome"), expected, atol=1e-5)


def test_an_import_that_changes_a_record_while_embed_encodes_it_is_embedded_again(db_url: str) -> None:
    records = sample_runs(60, seed=8)
    pipeline.import_records((("h", i, r) for i, r in enumerate(records)), database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    changed = dict(records[0], run_id="late-run")
    pipeline.import_records([("h", 1, changed)], database_url=db_url)
    with connect(db_url, autocommit=True) as conn:
        version = registry.active_version(conn)
        [stale] = run_store.pending_runs(conn, version, run_store.Selection(), "", 10)  # embed reads it ...
        encoded = load_space(conn, version).encode([stale])
        corrected = dict(changed, outcome={"sharpe": -3.0})  # ... an import changes it meanwhile ...
        pipeline.import_records([("h", 2, corrected)], database_url=db_url)
        with conn.transaction():  # ... and embed writes what it encoded from the old record
            vector_store.write_vectors(conn, version, [stale], encoded.ok, encoded.vectors(), False)
        assert run_store.count_pending(conn, version, run_store.Selection()) == 1
    assert pipeline.embed_runs(database_url=db_url).embedded == 1
    with connect(db_url) as conn:
        sha = conn.execute("SELECT record_sha256 FROM historical_db.runs WHERE run_id = 'late-run'").fetchone()[0]
    assert sha == validate(corrected).sha256


def test_an_online_write_racing_an_activation_leaves_no_old_version_rows(db_url: str) -> None:
    records = sample_runs(80, seed=9)
    pipeline.import_records((("h", i, r) for i, r in enumerate(records)), database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    with connect(db_url, autocommit=True) as conn:
        old = registry.active_version(conn)
        refit = MetaSpace(seed=3).fit(records)
        new = registry.register(conn, refit.to_dict(), refit.fingerprint_, refit.n_fit_runs_, activate=False)
        space = load_space(conn, old)
    run = validate(dict(records[0], run_id="online-run"))
    encoded = space.encode([run.as_record()])
    writer = connect(db_url)  # the online write's transaction stays open ...
    writer.execute("SELECT 1")
    vector_store.store_run(writer, run.as_record(), run.sha256, old, space.fingerprint_,
                           {name: v[0] for name, v in encoded.vectors().items()}, False)
    activator = connect(db_url)
    switched = threading.Thread(target=lambda: (registry.activate(activator, new), activator.commit()))
    switched.start()  # ... while another session activates the new version
    with connect(db_url, autocommit=True) as watcher:
        for _ in range(200):
            waiting = watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                      (activator.info.backend_pid,)).fetchone()[0]
            if waiting == "Lock":
                break
            threading.Event().wait(0.05)
    assert waiting == "Lock", "the activation should wait for the online write"
    writer.commit()
    switched.join()
    writer.close()
    activator.close()
    with psycopg.connect(db_url) as conn:
        left = conn.execute("SELECT count(*) FROM historical_db.joint_embeddings WHERE encoder_version = %s",
                            (old,)).fetchone()[0]
        left += conn.execute("SELECT count(*) FROM historical_db.branch_embeddings WHERE encoder_version = %s",
                             (old,)).fetchone()[0]
    assert left == 0


def test_an_import_still_uncommitted_while_embed_writes_leaves_no_stale_vector(db_url: str) -> None:
    """The import's change is not visible to embed until it commits: embed must wait for it, not write the
    old record's vectors beside it."""
    records = sample_runs(40, seed=12)
    pipeline.import_records((("h", i, r) for i, r in enumerate(records)), database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    late = dict(records[0], run_id="late-run-2")
    pipeline.import_records([("h", 1, late)], database_url=db_url)
    importer = connect(db_url)
    importer.execute("SELECT 1")  # the import's transaction is open: its batch is a savepoint inside it
    run_store.upsert_runs(importer, [validate(dict(late, env={**late["env"], "realized_vol": 9.99}))])
    embedded = threading.Thread(target=lambda: pipeline.embed_runs(database_url=db_url))
    embedded.start()  # it read the old record; the import has not committed yet
    with connect(db_url, autocommit=True) as watcher:
        for _ in range(200):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = "
                "'Lock' AND pid <> %s", (importer.info.backend_pid,)).fetchone()[0]
            if waiting:
                break
            threading.Event().wait(0.05)
    importer.commit()
    importer.close()
    embedded.join()
    assert waiting, "embed should wait for the import holding the run"
    with connect(db_url, autocommit=True) as conn:
        version = registry.active_version(conn)
        assert run_store.count_pending(conn, version, run_store.Selection()) == 1  # re-embedded next time
    assert pipeline.embed_runs(database_url=db_url).embedded == 1


def test_the_default_objective_is_chosen_among_runs_known_by_the_as_of_date(pit_db: str) -> None:
    """A later run with a second key named sharpe (not even embedded) must not change an earlier answer."""
    day = DATES[len(DATES) // 2]
    env = HISTORY[3]["env"]
    before = metaspace.suggest(env, k=3, as_of=day, database_url=pit_db)
    later = dict(HISTORY[4], run_id="LATER_SHARPE", as_of_date="2099-01-01",
                 outcome={**HISTORY[4]["outcome"], "perf": {"sharpe": 3.0}})
    pipeline.import_records([("later", 1, later)], database_url=pit_db)
    try:
        after = metaspace.suggest(env, k=3, as_of=day, database_url=pit_db)
    finally:
        _delete(pit_db, ["LATER_SHARPE"])
    _same_answer(after, before)


def _same_answer(after: object, before: object) -> None:
    """Equal, floats up to a sum's rounding (1e-12 relative): a table with one more row may be aggregated in
    another order (PostgreSQL 16 does here), which moves a mean by one ulp; configs, counts and ids exactly."""
    if isinstance(before, float):
        assert after == pytest.approx(before, rel=1e-12, abs=1e-300)
    elif isinstance(before, dict):
        assert isinstance(after, dict) and after.keys() == before.keys()
        for key in before:
            _same_answer(after[key], before[key])
    elif isinstance(before, (list, tuple)):
        assert isinstance(after, (list, tuple)) and len(after) == len(before)
        for a, b in zip(after, before):
            _same_answer(a, b)
    else:
        assert after == before
