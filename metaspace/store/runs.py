"""The runs table: upserts from import, and the runs that still need vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from metaspace.names import JOINT_MODEL, JOINT_TYPE


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


# Errors the server raises for a record it cannot take (bad data, a broken constraint, a value too large):
# the batch is split until the refused records are found. Any other error stops the import.
REFUSALS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)


def upsert_runs(conn: psycopg.Connection, runs: Sequence[Any]) -> tuple[UpsertCounts, list[tuple[str, str]]]:
    """Upsert runs (validated ``records.Run``s); return the counts and the (run_id, reason) of any the
    server refused. A refused batch is halved, each half in its own savepoint, down to the single
    records that fail: one bad record never stops the others, and nothing lands half-way silently."""
    try:
        with conn.transaction():
            return _upsert(conn, runs), []
    except REFUSALS as exc:
        if len(runs) == 1:
            sqlstate = exc.sqlstate or "?"
            return UpsertCounts(), [(runs[0].run_id, f"the database refused it: {exc.diag.message_primary or exc} "
                                                     f"(SQLSTATE {sqlstate})")]
    half = len(runs) // 2
    first, refused_first = upsert_runs(conn, runs[:half])
    second, refused_second = upsert_runs(conn, runs[half:])
    total = UpsertCounts(first.inserted + second.inserted, first.updated + second.updated,
                         first.unchanged + second.unchanged)
    return total, refused_first + refused_second


def _upsert(conn: psycopg.Connection, runs: Sequence[Any]) -> UpsertCounts:
    """Insert new runs (validated ``records.Run``s), update changed ones (dropping their now stale vectors),
    leave unchanged ones alone."""
    latest = {run.run_id: run for run in runs}
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS staging_runs (LIKE historical_db.runs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    conn.execute("TRUNCATE staging_runs")  # a batch being split holds its earlier halves here until it commits
    with conn.cursor().copy(
        "COPY staging_runs (run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256) "
        "FROM STDIN"
    ) as copy:
        for run in latest.values():
            copy.write_row((run.run_id, run.config_id, run.strategy_id, run.as_of_date, Jsonb(run.config),
                            Jsonb(run.env), Jsonb(run.outcome), Jsonb(run.extra), run.sha256))
    rows = conn.execute(
        """
        INSERT INTO historical_db.runs AS r
            (run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256, updated_at)
        SELECT run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256, updated_at
        FROM staging_runs
        ORDER BY run_id  -- rows are locked in run_id order, as embed locks them: the two never deadlock
        -- (updated_at: the staged default, now(); Citus takes only immutable functions in DO UPDATE SET)
        ON CONFLICT (run_id) DO UPDATE SET
            config_id = excluded.config_id, strategy_id = excluded.strategy_id, as_of_date = excluded.as_of_date,
            config = excluded.config, env = excluded.env, outcome = excluded.outcome, extra = excluded.extra,
            record_sha256 = excluded.record_sha256, updated_at = excluded.updated_at
        WHERE r.record_sha256 <> excluded.record_sha256
        RETURNING run_id, (xmax = 0) AS inserted
        """
    ).fetchall()
    updated = [run_id for run_id, inserted in rows if not inserted]
    if updated:
        forget_vectors(conn, updated)
    inserted = len(rows) - len(updated)
    return UpsertCounts(inserted, len(updated), len(latest) - len(rows))


def import_cursor(conn: psycopg.Connection, source: str, scope: dict[str, Any], field: str) -> int | None:
    """Where the last import from a source stopped: the largest ``extra -> source -> field`` (a number, such
    as MLflow's end time in ms) among the stored runs whose ``extra -> source`` contains ``scope``."""
    row = conn.execute(
        "SELECT max((extra -> %s ->> %s)::numeric) FROM historical_db.runs WHERE extra -> %s @> %s",
        (source, field, source, Jsonb(scope)),
    ).fetchone()
    return None if row[0] is None else int(row[0])


def forget_vectors(conn: psycopg.Connection, run_ids: list[str]) -> None:
    """Drop the vectors and quarantine entries of changed runs, so that embed-runs encodes them again."""
    conn.execute("SELECT historical_db.forget_vectors_v1(%s)", (run_ids,))  # and the entities only they used


def _run_from_row(row: tuple) -> dict[str, Any]:
    run_id, config_id, strategy_id, as_of_date, config, env, outcome, sha = row
    return {"run_id": run_id, "config_id": config_id, "strategy_id": strategy_id, "as_of_date": as_of_date,
            "config": config, "env": env, "outcome": outcome, "record_sha256": sha}


RUN_COLUMNS = "r.run_id, r.config_id, r.strategy_id, r.as_of_date, r.config, r.env, r.outcome, r.record_sha256"


def sample_runs(conn: psycopg.Connection, limit: int, until: Any = None) -> list[dict[str, Any]]:
    """A deterministic sample of stored runs for fitting (the same database gives the same sample), of
    those known by ``until`` (as_of_date on or before it) when given."""
    rows = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM historical_db.runs r WHERE %s::date IS NULL OR r.as_of_date <= %s::date "  # noqa: S608
        "ORDER BY md5(r.run_id) LIMIT %s", (until, until, limit),
    ).fetchall()
    return [_run_from_row(row) for row in rows]


def count_runs(conn: psycopg.Connection, until: Any = None) -> int:
    return conn.execute("SELECT count(*) FROM historical_db.runs WHERE %s::date IS NULL OR as_of_date <= %s::date",
                        (until, until)).fetchone()[0]


@dataclass(frozen=True)
class Selection:
    since: Any = None
    strategies: tuple[str, ...] = ()


def _pending_where(selection: Selection) -> str:
    clauses = [
        "NOT EXISTS (SELECT 1 FROM historical_db.joint_embeddings j WHERE j.encoder_version = %(version)s "
        "AND j.joint_type = %(joint_type)s AND j.model_id = %(model_id)s AND j.run_id = r.run_id)",
        "NOT EXISTS (SELECT 1 FROM historical_db.embedding_quarantine q WHERE q.encoder_version = %(version)s "
        "AND q.run_id = r.run_id AND q.record_sha256 = r.record_sha256)",
    ]
    if selection.since is not None:
        clauses.append("r.as_of_date >= %(since)s")
    if selection.strategies:
        clauses.append("r.strategy_id = ANY(%(strategies)s)")
    return " AND ".join(clauses)


def _params(version: int, selection: Selection, **more: Any) -> dict[str, Any]:
    return {"version": version, "joint_type": JOINT_TYPE, "model_id": JOINT_MODEL, "since": selection.since,
            "strategies": list(selection.strategies), **more}


def count_pending(conn: psycopg.Connection, version: int, selection: Selection) -> int:
    where = _pending_where(selection)
    return conn.execute(
        f"SELECT count(*) FROM historical_db.runs r WHERE {where}", _params(version, selection)  # noqa: S608
    ).fetchone()[0]


def pending_runs(conn: psycopg.Connection, version: int, selection: Selection, after: str, limit: int) -> list[dict]:
    """The next runs (by run_id, after ``after``) that have no vector for this version yet."""
    where = _pending_where(selection)
    rows = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM historical_db.runs r WHERE r.run_id > %(after)s AND {where} "  # noqa: S608
        "ORDER BY r.run_id LIMIT %(limit)s",
        _params(version, selection, after=after, limit=limit),
    ).fetchall()
    return [_run_from_row(row) for row in rows]


def branch_sample(conn: psycopg.Connection, branch: str, limit: int, until: Any = None) -> list[dict[str, Any]]:
    """One branch object (config, env or outcome) of up to ``limit`` stored runs known by ``until`` (all,
    without it), the latest first."""
    column = {"config": "config", "env": "env", "outcome": "outcome"}[branch]
    rows = conn.execute(
        f"SELECT {column} FROM historical_db.runs WHERE %s::date IS NULL OR as_of_date <= %s::date "  # noqa: S608
        "ORDER BY as_of_date DESC LIMIT %s", (until, until, limit),
    ).fetchall()
    return [row[0] for row in rows]


def key_exists(conn: psycopg.Connection, branch: str, path: list[str], numeric: bool, until: Any = None) -> bool:
    """Whether any stored run (known by ``until``, if given) has this key (holding a number, with ``numeric``)."""
    column = {"config": "config", "env": "env", "outcome": "outcome"}[branch]
    return conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM historical_db.runs WHERE jsonb_typeof({column} #> %s) "  # noqa: S608
        "= ANY(%s) AND (%s::date IS NULL OR as_of_date <= %s::date))",
        (path, ["number"] if numeric else ["number", "string", "boolean", "array"], until, until),
    ).fetchone()[0]


def sources_of(conn: psycopg.Connection, run_id_pattern: str, field: str) -> list[str | None]:
    """The distinct values of ``extra -> field ->> 'source'`` among the runs whose run_id matches the regular
    expression ``run_id_pattern`` (None for runs that recorded none): where an importer's runs came from."""
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT extra -> %s ->> 'source' FROM historical_db.runs WHERE run_id ~ %s",
        (field, run_id_pattern)).fetchall()]

