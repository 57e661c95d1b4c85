"""One kept connection per database, per process and thread, and the facts every question needs, read in one
round trip: what makes one call of the Python API cost about what its SQL costs.

A notebook, a service or the Optuna sampler asks one question at a time. Opening a connection (and, on the
embedded default, checking the server), checking the schema and reading the active version for each of
them cost several times the question itself. So :func:`session` keeps a connection per database for the
life of the process (one per thread: a connection serves one thread at a time), checks the schema when it
opens it, and before each question reads, in one statement, what the question needs (:class:`Facts`). The
encoder state cache is keyed by the active version's fingerprint from those facts, so a database rebuilt
under a long-lived process is noticed without a round trip of its own.

- Fork-safe: a child process (Optuna workers, multiprocessing) never uses its parent's connection; it opens
  its own. The parent's is left to the parent (psycopg closes a connection only in the process that opened
  it).
- After the server restarts or ends the connection, the next question reconnects once (on the embedded
  default, starting the server again) and says so in a note.
- :func:`close` (``metaspace.close()``) closes this process's connections; so does the end of the process.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from metaspace.names import JOINT_MODEL, SCHEMA

# What a question needs, in one statement: the schema's revision, the active encoder version, and the facts
# the notes are made of (which spaces have a graph, the stored graph choice, when calibrations last changed,
# how often the runs changed).
_FACTS = f"""
SELECT (SELECT version_num FROM public.metaspace_schema_version),
       v.version, v.fingerprint, v.fitted_through,
       (SELECT value FROM {SCHEMA}.settings WHERE name = 'indexed_spaces'),
       (SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = '{SCHEMA}.joint_embeddings'::regclass),
       (SELECT coalesce(array_agg(c.relname::text), '{{}}') FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '{SCHEMA}' AND c.relkind = 'i' AND c.relname LIKE '%hnsw'),
       (SELECT max(created_at) FROM {SCHEMA}.suggest_calibrations),
       (SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relid = '{SCHEMA}.runs'::regclass)
FROM (SELECT 1) AS one
LEFT JOIN {SCHEMA}.encoder_versions v ON v.model_id = '{JOINT_MODEL}' AND v.is_active
"""  # noqa: S608 (constants only)


@dataclass(frozen=True)
class Facts:
    """What the store says as a question starts."""

    revision: str
    version: int | None  # the active encoder version (None before the first embed-runs)
    fingerprint: str | None
    fitted_through: dt.date | None
    indexed_spaces: tuple[str, ...] | None  # the stored choice (None: the default rule)
    joint_vectors: float
    graphs: frozenset[str]  # the HNSW indexes present (their names)
    calibrated_at: dt.datetime | None  # when the stored calibrations last changed
    runs_changes: int  # how often the runs table has changed (PostgreSQL's statistics; for caches)


@dataclass
class Session:
    """A kept connection and what the last question found."""

    conn: psycopg.Connection
    url: str  # resolved (the embedded server's, when none was given), for a helper's own connections
    facts: Facts
    notes: list[str] = field(default_factory=list)  # said once, by the call that had to reconnect


@dataclass
class _Held:
    conn: psycopg.Connection
    url: str
    pid: int


_local = threading.local()
_all: list[_Held] = []  # every connection this process holds, for close()
_lock = threading.Lock()
_generation = 0  # close() starts a new one: every thread's kept connections are then forgotten


def _held() -> dict[str | None, _Held]:
    if (getattr(_local, "pid", None), getattr(_local, "generation", None)) != (os.getpid(), _generation):
        # a forked child starts without its parent's connections; after close(), every thread anew
        _local.held, _local.pid, _local.generation = {}, os.getpid(), _generation
    return _local.held


def _forget_inherited() -> None:
    """In a forked child: drop the parent's connections without closing them (they are the parent's)."""
    global _all
    _all = []
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_forget_inherited)


def _open(url: str | None) -> _Held:
    from metaspace.store.connection import checked, connect_resolved

    conn, resolved = connect_resolved(url, autocommit=True)
    try:
        checked(conn, url, resolved)
        from pgvector.psycopg import register_vector

        register_vector(conn)
    except BaseException as exc:
        if isinstance(exc, psycopg.Error):
            from metaspace.store.connection import annotate

            annotate(exc, conn)
        conn.close()
        raise
    held = _Held(conn, resolved, os.getpid())
    with _lock:
        _all.append(held)
    return held


def _lost(exc: BaseException, conn: psycopg.Connection) -> bool:
    """Whether an error means the connection is gone (the server restarted or ended it), not that the query
    failed."""
    sqlstate = getattr(exc, "sqlstate", None)
    return conn.closed or conn.broken or sqlstate is None or sqlstate.startswith(("08", "57P"))


def _read_facts(conn: psycopg.Connection) -> Facts:
    row = conn.execute(_FACTS).fetchone()
    return Facts(row[0], row[1], row[2], row[3], tuple(row[4]) if row[4] is not None else None, float(row[5] or 0),
                 frozenset(row[6]), row[7], int(row[8] or 0))


def _discard(held: _Held) -> None:
    with _lock:
        if held in _all:
            _all.remove(held)
    try:
        held.conn.close()
    except psycopg.Error:
        pass


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """The kept connection to ``url`` (else ``METASPACE_DATABASE_URL``, else the embedded server) with the
    facts read as this question starts. Opens it (and checks the schema) the first time; reconnects once,
    and says so in ``notes``, when the server has restarted or ended it meanwhile. Errors raised inside the
    block leave the connection open for the next question, unless they broke it."""
    from metaspace.errors import SchemaBehindError
    from metaspace.store.migrate import head, require_current

    held = _held()
    notes: list[str] = []
    kept = held.get(url)
    if kept is not None and kept.pid != os.getpid():
        kept = None
    if kept is None:
        kept = held[url] = _open(url)
    try:
        facts = _read_facts(kept.conn)
    except psycopg.Error as exc:
        if not _lost(exc, kept.conn):
            if isinstance(exc, psycopg.errors.UndefinedTable):  # the schema went away under us: say how to fix it
                require_current(kept.conn)
            from metaspace.store.connection import annotate

            annotate(exc, kept.conn)
            raise
        _discard(kept)
        del held[url]
        from metaspace.store.connection import embedded_default

        restarted = embedded_default(url) and not _embedded_ready()
        kept = held[url] = _open(url)
        notes.append(f"the connection to the database was lost ({_first_line(exc)}): "
                     + ("the embedded server had stopped, and was started again" if restarted else "reconnected"))
        facts = _read_facts(kept.conn)
    if facts.revision != head():
        require_current(kept.conn)
        raise SchemaBehindError(f"the database schema is at {facts.revision}, this metaspace needs {head()}")
    try:
        yield Session(kept.conn, kept.url, facts, notes)
    except psycopg.Error as exc:
        if _lost(exc, kept.conn):
            _discard(kept)
            held.pop(url, None)
        from metaspace.store.connection import annotate

        annotate(exc, kept.conn)
        raise


def _embedded_ready() -> bool:
    from metaspace.store import embedded

    return embedded.ready()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def close() -> None:
    """Close every connection this process keeps, in every thread (the next question opens a new one)."""
    global _generation
    with _lock:
        mine = [held for held in _all if held.pid == os.getpid()]
        for held in mine:
            _all.remove(held)
        _generation += 1
    for held in mine:
        try:
            held.conn.close()
        except psycopg.Error:
            pass


atexit.register(close)
