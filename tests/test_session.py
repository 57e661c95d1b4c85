"""The Python API keeps one connection per database per process (store/session.py): a warm question costs two
round trips, a fork gets its own connection, a lost connection or a stopped embedded server is taken up again
with a note, and a database rebuilt under a live process is answered with its new state."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import metaspace
from metaspace import pipeline
from metaspace.sample import sample_runs
from metaspace.store import session as session_store


@pytest.fixture(scope="module")
def small(server_url: str, template_url: str) -> Iterator[tuple[str, list[dict]]]:
    from conftest import TEMPLATE, _create_database, _drop_database

    name = f"k_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    runs = sample_runs(500, seed=31)
    pipeline.import_records((("mem", i, r) for i, r in enumerate(runs)), database_url=url)
    pipeline.embed_runs(database_url=url)
    yield url, runs
    metaspace.close()
    _drop_database(server_url, name)


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        return call(*args, **kwargs), [str(w.message) for w in said]


def _backend(url: str) -> int:
    with session_store.session(url) as asked:
        return asked.conn.info.backend_pid


def _round_trips(conn: psycopg.Connection, ask) -> int:
    """How many times the client waited for the server while ``ask`` ran: the server's ReadyForQuery
    messages, one per statement answered (libpq's protocol trace of the kept connection)."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        try:
            ask()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        return sum(1 for line in trace if "\tB\t" in line and "\tReadyForQuery" in line)


def test_a_warm_question_costs_two_round_trips_on_one_kept_connection(small) -> None:
    url, runs = small
    for _ in range(6):  # warm: the connection, the state, and psycopg's prepared statements (from the 5th run)
        _quiet(metaspace.search, record=runs[3], k=5, database_url=url)
        _quiet(metaspace.search, run=runs[3]["run_id"], k=5, database_url=url)
        _quiet(metaspace.suggest, runs[4]["env"], k=3, objective="sharpe", database_url=url)
    pid = _backend(url)
    with session_store.session(url) as asked:
        conn = asked.conn
    assert _round_trips(conn, lambda: _quiet(metaspace.search, record=runs[5], k=5, database_url=url)) == 2
    assert _round_trips(conn, lambda: _quiet(metaspace.search, run=runs[6]["run_id"], k=5, database_url=url)) == 2
    assert _round_trips(conn, lambda: _quiet(metaspace.suggest, runs[7]["env"], k=3, objective="sharpe",
                                             database_url=url)) == 2
    assert _backend(url) == pid


def _child(url: str, run_id: str, out) -> None:
    try:
        rows, _ = _quiet(metaspace.search, run=run_id, k=4, database_url=url)
        out.put((os.getpid(), _backend(url), [r["run_id"] for r in rows]))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        out.put(("error", repr(exc), None))


def test_a_forked_child_opens_its_own_connection_and_the_parent_keeps_its_own(small) -> None:
    url, runs = small
    rows, _ = _quiet(metaspace.search, run=runs[1]["run_id"], k=4, database_url=url)
    parent_backend = _backend(url)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child, args=(url, runs[1]["run_id"], out))
    child.start()
    pid, child_backend, child_rows = out.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0 and pid != "error", child_backend
    assert child_backend != parent_backend and child_rows == [r["run_id"] for r in rows]
    again, _ = _quiet(metaspace.search, run=runs[1]["run_id"], k=4, database_url=url)  # the parent's still works
    assert again == rows and _backend(url) == parent_backend


def test_a_connection_the_server_ended_is_taken_up_again_with_a_note(small, server_url: str) -> None:
    url, runs = small
    rows, _ = _quiet(metaspace.search, run=runs[2]["run_id"], k=4, database_url=url)
    victim = _backend(url)
    with psycopg.connect(server_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (victim,)).fetchone()[0]
    again, notes = _quiet(metaspace.search, run=runs[2]["run_id"], k=4, database_url=url)
    assert again == rows and _backend(url) != victim
    assert any("connection to the database was lost" in note and "reconnected" in note for note in notes), notes
    _, quiet = _quiet(metaspace.search, run=runs[2]["run_id"], k=4, database_url=url)
    assert not any("lost" in note for note in quiet)  # said once, by the call that had to reconnect


def test_close_ends_the_kept_connections_and_the_next_question_opens_one(small) -> None:
    url, runs = small
    _quiet(metaspace.search, run=runs[0]["run_id"], k=2, database_url=url)
    before = _backend(url)
    metaspace.close()
    rows, notes = _quiet(metaspace.search, run=runs[0]["run_id"], k=2, database_url=url)
    assert rows and _backend(url) != before and not any("lost" in note for note in notes)


def test_a_database_rebuilt_under_a_live_process_is_answered_with_its_new_state(server_url: str,
                                                                                  template_url: str) -> None:
    """The cache of fitted states was keyed by database and version only: a database dropped and built again
    (a new version 1, fitted on other runs) was encoded with the old state."""
    from conftest import TEMPLATE, _create_database, _drop_database

    name = f"r_{uuid.uuid4().hex[:12]}"
    answers = []
    try:
        for seed in (41, 42):
            url = _create_database(server_url, name, template=TEMPLATE)
            runs = sample_runs(400, seed=seed)
            pipeline.import_records((("mem", i, r) for i, r in enumerate(runs)), database_url=url)
            pipeline.embed_runs(database_url=url)
            probe = {"env": runs[10]["env"], "config": runs[10]["config"], "outcome": runs[10]["outcome"]}
            rows, _ = _quiet(metaspace.search, record=probe, k=1, exact=True, database_url=url)
            answers.append((runs[10]["run_id"], rows[0]["run_id"], rows[0]["distance"]))
            metaspace.close()  # the connection only: the cache of fitted states stays, as in a live process
            _drop_database(server_url, name)
    finally:
        _drop_database(server_url, name)
    for wanted, found, distance in answers:
        assert found == wanted and distance < 1e-5, answers


def test_an_embedded_server_stopped_between_two_questions_is_started_again_and_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from metaspace.store import embedded

    home = Path(tempfile.mkdtemp(prefix="metaspace-test-restart-"))
    monkeypatch.setenv("METASPACE_HOME", str(home))
    monkeypatch.delenv("METASPACE_DATABASE_URL", raising=False)
    try:
        metaspace.migrate()
        runs = sample_runs(300, seed=43)
        pipeline.import_records((("mem", i, r) for i, r in enumerate(runs)))
        pipeline.embed_runs()
        rows, _ = _quiet(metaspace.search, run=runs[0]["run_id"], k=3)
        assert embedded.stop()
        again, notes = _quiet(metaspace.search, run=runs[0]["run_id"], k=3)
        assert again == rows and embedded.ready()
        assert any("the embedded server had stopped, and was started again" in note for note in notes), notes
    finally:
        metaspace.close()
        embedded.stop()
        import shutil

        shutil.rmtree(home, ignore_errors=True)
