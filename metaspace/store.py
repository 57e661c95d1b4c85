"""Reading and writing metaspace's tables. The one module (with the SQL files) that knows their layout."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from metaspace.encoders import EncodedRuns, MetaSpace
from metaspace.names import (
    BRANCH_MODELS,
    DIMENSION,
    EMBED_LOCK_KEY,
    HNSW_INDEX_NAMES,
    JOINT_MODEL,
    JOINT_TYPE,
    SCHEMA,
    SOURCE,
)
from metaspace.records import Run
from metaspace.sqlfiles import statements

HNSW_INDEXES = "vector_indexes_v1.sql"


# -- runs ---------------------------------------------------------------------------------------------


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def upsert_runs(conn: psycopg.Connection, runs: Sequence[Run]) -> UpsertCounts:
    """Insert new runs, update changed ones (dropping their now stale vectors), leave unchanged ones alone."""
    latest = {run.run_id: run for run in runs}
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS staging_runs (LIKE historical_db.runs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
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
            (run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256)
        SELECT run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256 FROM staging_runs
        ON CONFLICT (run_id) DO UPDATE SET
            config_id = excluded.config_id, strategy_id = excluded.strategy_id, as_of_date = excluded.as_of_date,
            config = excluded.config, env = excluded.env, outcome = excluded.outcome, extra = excluded.extra,
            record_sha256 = excluded.record_sha256, updated_at = now()
        WHERE r.record_sha256 <> excluded.record_sha256
        RETURNING run_id, (xmax = 0) AS inserted
        """
    ).fetchall()
    updated = [run_id for run_id, inserted in rows if not inserted]
    if updated:
        forget_vectors(conn, updated)
    inserted = len(rows) - len(updated)
    return UpsertCounts(inserted, len(updated), len(latest) - len(rows))


def forget_vectors(conn: psycopg.Connection, run_ids: list[str]) -> None:
    """Drop the vectors and quarantine entries of changed runs, so that embed-runs encodes them again."""
    conn.execute(
        "DELETE FROM historical_db.joint_embeddings WHERE encoder_version IS NOT NULL AND joint_type = %s "
        "AND model_id = %s AND (entity_scope ->> 'run_id') = ANY(%s)",
        (JOINT_TYPE, JOINT_MODEL, run_ids),
    )
    conn.execute("DELETE FROM historical_db.branch_embeddings WHERE run_id = ANY(%s)", (run_ids,))
    conn.execute("DELETE FROM historical_db.embedding_quarantine WHERE run_id = ANY(%s)", (run_ids,))


def _run_from_row(row: tuple) -> dict[str, Any]:
    run_id, config_id, strategy_id, as_of_date, config, env, outcome, sha = row
    return {"run_id": run_id, "config_id": config_id, "strategy_id": strategy_id, "as_of_date": as_of_date,
            "config": config, "env": env, "outcome": outcome, "record_sha256": sha}


RUN_COLUMNS = "r.run_id, r.config_id, r.strategy_id, r.as_of_date, r.config, r.env, r.outcome, r.record_sha256"


def sample_runs(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    """A deterministic sample of stored runs for fitting (the same database gives the same sample)."""
    rows = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM historical_db.runs r ORDER BY md5(r.run_id) LIMIT %s", (limit,)  # noqa: S608
    ).fetchall()
    return [_run_from_row(row) for row in rows]


def count_runs(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]


@dataclass(frozen=True)
class Selection:
    since: Any = None
    strategies: tuple[str, ...] = ()


def _pending_where(selection: Selection) -> str:
    clauses = [
        "NOT EXISTS (SELECT 1 FROM historical_db.joint_embeddings j WHERE j.encoder_version = %(version)s "
        "AND j.joint_type = %(joint_type)s AND j.model_id = %(model_id)s AND (j.entity_scope ->> 'run_id') = r.run_id)",
        "NOT EXISTS (SELECT 1 FROM historical_db.embedding_quarantine q WHERE q.encoder_version = %(version)s "
        "AND q.run_id = r.run_id)",
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


# -- encoder registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    version: int
    fingerprint: str
    is_active: bool
    fitted_on_runs: int


def versions(conn: psycopg.Connection) -> list[Version]:
    rows = conn.execute(
        "SELECT version, fingerprint, is_active, fitted_on_runs FROM historical_db.encoder_versions "
        "WHERE model_id = %s ORDER BY version",
        (JOINT_MODEL,),
    ).fetchall()
    return [Version(*row) for row in rows]


_SPACES: dict[tuple[str, int], MetaSpace] = {}
_SPACES_KEPT = 8


def load_space(conn: psycopg.Connection, version: int) -> MetaSpace:
    """The fitted joint model of a registered version (cached per process, the last few: a registered version
    never changes; a database rebuilt under a running process is caught by store_run_v1's fingerprint check,
    after which :func:`forget_space` drops the entry)."""
    dsn = conn.info.dsn
    key = (dsn, version)
    if key not in _SPACES:
        while len(_SPACES) >= _SPACES_KEPT:
            _SPACES.pop(next(iter(_SPACES)))
        row = conn.execute(
            "SELECT state, fingerprint FROM historical_db.encoder_versions WHERE version = %s", (version,)
        ).fetchone()
        space = MetaSpace.from_dict(row[0])
        if space.fingerprint_ != row[1]:
            raise ValueError(f"encoder version {version}: stored state does not match its fingerprint")
        _SPACES[key] = space
    return _SPACES[key]


def forget_space(conn: psycopg.Connection, version: int) -> None:
    _SPACES.pop((conn.info.dsn, version), None)


def register(conn: psycopg.Connection, space: MetaSpace, *, activate: bool) -> int:
    """Register a fitted state as a new version (or return the version that already has its fingerprint)."""
    existing = conn.execute(
        "SELECT version FROM historical_db.encoder_versions WHERE fingerprint = %s", (space.fingerprint_,)
    ).fetchone()
    if existing:
        return existing[0]
    version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM historical_db.encoder_versions").fetchone()[0]
    conn.execute(
        "INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, fitted_on_runs, "
        "is_active, activated_at) VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)",
        (version, JOINT_MODEL, Jsonb(space.to_dict(), dumps=_dumps), space.fingerprint_, space.n_fit_runs_,
         activate, activate),
    )
    return version


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def activate(conn: psycopg.Connection, version: int) -> int | None:
    """Make ``version`` the active one and drop the previous version's vectors; return the previous version."""
    previous = conn.execute(
        "SELECT version FROM historical_db.encoder_versions WHERE model_id = %s AND is_active", (JOINT_MODEL,)
    ).fetchone()
    conn.execute("UPDATE historical_db.encoder_versions SET is_active = false WHERE model_id = %s AND is_active",
                 (JOINT_MODEL,))
    conn.execute("UPDATE historical_db.encoder_versions SET is_active = true, activated_at = now() WHERE version = %s",
                 (version,))
    if previous and previous[0] != version:
        conn.execute("DELETE FROM historical_db.joint_embeddings WHERE encoder_version = %s", (previous[0],))
        conn.execute("DELETE FROM historical_db.branch_embeddings WHERE encoder_version = %s", (previous[0],))
        return previous[0]
    return None


# -- vectors ----------------------------------------------------------------------------------------


def has_legacy_bytes(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = 'historical_db' "
        "AND table_name = 'joint_embeddings' AND column_name = 'vector_f32'"
    ).fetchone())


STAGING = [
    "CREATE TEMP TABLE IF NOT EXISTS staging_meta (idx integer, run_id text, as_of_date date, config_id text, "
    "strategy_id text) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS staging_vectors (idx integer, space smallint, vector vector(384)) "
    "ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS staging_f32 (idx integer, f32 bytea) ON COMMIT DELETE ROWS",
]
SPACE_CODES = {"joint": 0, **{branch: i + 1 for i, branch in enumerate(BRANCH_MODELS)}}
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
# One row of COPY's binary format for (idx int4, space int2, vector): every field has a fixed width, so a
# whole batch is one numpy array turned into bytes (pgvector's binary form: int16 dim, int16 0, float4s).
_VECTOR_ROW = np.dtype([("fields", ">i2"), ("idx_len", ">i4"), ("idx", ">i4"), ("space_len", ">i4"),
                        ("space", ">i2"), ("vector_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"),
                        ("vector", ">f4", (DIMENSION,))])
# (idx int4, f32 bytea): the legacy column's little-endian float32 bytes.
_F32_ROW = np.dtype([("fields", ">i2"), ("idx_len", ">i4"), ("idx", ">i4"), ("bytes_len", ">i4"),
                     ("bytes", "<f4", (DIMENSION,))])


def _vector_rows(idx: np.ndarray, space: int, vectors: np.ndarray) -> bytes:
    rows = np.empty(len(idx), _VECTOR_ROW)
    rows["fields"], rows["idx_len"], rows["idx"] = 3, 4, idx
    rows["space_len"], rows["space"] = 2, space
    rows["vector_len"], rows["dim"], rows["unused"], rows["vector"] = 4 + 4 * DIMENSION, DIMENSION, 0, vectors
    return rows.tobytes()


def _f32_rows(idx: np.ndarray, vectors: np.ndarray) -> bytes:
    rows = np.empty(len(idx), _F32_ROW)
    rows["fields"], rows["idx_len"], rows["idx"] = 2, 4, idx
    rows["bytes_len"], rows["bytes"] = 4 * DIMENSION, vectors
    return rows.tobytes()


def write_vectors(conn: psycopg.Connection, version: int, runs: Sequence[dict], encoded: EncodedRuns,
                  legacy_bytes: bool) -> None:
    """Binary COPY of the batch into staging tables, then one set-based insert per target table.

    The vectors' COPY stream is built for the whole batch at once with numpy (no per-row Python), and the
    runs' ids and dates are sent once per run rather than once per vector. Where the legacy float32-bytes
    column exists, it is filled too, so that older readers keep working.
    """
    conn.execute(";\n".join(STAGING))
    idx = np.flatnonzero(encoded.ok).astype(np.int32)
    with conn.cursor().copy(
        "COPY staging_meta (idx, run_id, as_of_date, config_id, strategy_id) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int4", "text", "date", "text", "text"])
        for i in idx.tolist():
            run = runs[i]
            copy.write_row((i, run["run_id"], run["as_of_date"], run["config_id"], run["strategy_id"]))
    blocks = [_vector_rows(idx, SPACE_CODES["joint"], encoded.joint[idx])]
    blocks += [_vector_rows(idx, SPACE_CODES[b], vectors[idx]) for b, vectors in encoded.branches.items()]
    with conn.cursor().copy("COPY staging_vectors (idx, space, vector) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(_SIGNATURE)
        for block in blocks:
            copy.write(block)
        copy.write(_TRAILER)
    if legacy_bytes:
        with conn.cursor().copy("COPY staging_f32 (idx, f32) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_SIGNATURE + _f32_rows(idx, encoded.joint[idx]) + _TRAILER)
    legacy_column = ", vector_f32" if legacy_bytes else ""
    legacy_value = ", f.f32" if legacy_bytes else ""
    legacy_join = "LEFT JOIN staging_f32 f ON f.idx = v.idx" if legacy_bytes else ""
    conn.execute(
        f"""
        INSERT INTO historical_db.joint_embeddings
            (joint_type, as_of_date, entity_scope, model_id, vector, encoder_version{legacy_column})
        SELECT %(joint_type)s, m.as_of_date,
               jsonb_build_object('run_id', m.run_id, 'config_id', m.config_id, 'strategy_id', m.strategy_id,
                                  'source', %(source)s::text),
               %(model_id)s, v.vector, %(version)s{legacy_value}
        FROM staging_vectors v JOIN staging_meta m ON m.idx = v.idx {legacy_join}
        WHERE v.space = 0
        ON CONFLICT (joint_type, model_id, (entity_scope ->> 'run_id'), encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING
        """,  # noqa: S608 (only fixed column names are interpolated)
        {"joint_type": JOINT_TYPE, "source": SOURCE, "model_id": JOINT_MODEL, "version": version},
    )
    conn.execute(
        """
        INSERT INTO historical_db.branch_embeddings
            (run_id, branch, encoder_version, model_id, as_of_date, strategy_id, config_id, vector)
        SELECT m.run_id, b.branch, %(version)s, b.model_id, m.as_of_date, m.strategy_id, m.config_id, v.vector
        FROM staging_vectors v JOIN staging_meta m ON m.idx = v.idx
             JOIN (SELECT unnest(%(codes)s::smallint[]) AS code, unnest(%(branches)s::text[]) AS branch,
                          unnest(%(models)s::text[]) AS model_id) b ON b.code = v.space
        ON CONFLICT (run_id, branch, encoder_version) DO NOTHING
        """,
        {"version": version, "codes": [SPACE_CODES[b] for b in BRANCH_MODELS], "branches": list(BRANCH_MODELS),
         "models": list(BRANCH_MODELS.values())},
    )


def store_run(conn: psycopg.Connection, run: Run, version: int, fingerprint: str, encoded: EncodedRuns,
              legacy_bytes: bool) -> None:
    """One run and its four vectors in one statement (sql/store_run_v1.sql): the online path."""
    joint = encoded.joint[0]
    conn.execute(
        "SELECT historical_db.store_run_v1(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (Jsonb(run.as_record() | {"extra": run.extra}), run.sha256, version, fingerprint, joint,
         encoded.branches["config"][0],
         encoded.branches["env"][0], encoded.branches["outcome"][0],
         joint.astype("<f4").tobytes() if legacy_bytes else None),
    )


def quarantine(conn: psycopg.Connection, version: int, runs: Sequence[dict], encoded: EncodedRuns) -> list[dict]:
    entries = [
        {"run_id": runs[i]["run_id"], "field": error.field, "reason": error.reason}
        for i, error in sorted(encoded.errors.items())
    ]
    for i, entry in zip(sorted(encoded.errors), entries):
        conn.execute(
            "INSERT INTO historical_db.embedding_quarantine (run_id, encoder_version, field, reason, record_sha256) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, encoder_version) DO UPDATE SET field = excluded.field, "
            "reason = excluded.reason, quarantined_at = now()",
            (entry["run_id"], version, entry["field"], entry["reason"], runs[i]["record_sha256"]),
        )
    return entries


def stored_vector_count(conn: psycopg.Connection, version: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM historical_db.joint_embeddings WHERE encoder_version = %s", (version,)
    ).fetchone()[0]


def drop_hnsw_indexes(conn: psycopg.Connection) -> None:
    for name in HNSW_INDEX_NAMES:
        conn.execute(f"DROP INDEX IF EXISTS {SCHEMA}.{name}")


def ensure_hnsw_indexes(conn: psycopg.Connection, maintenance_work_mem: str | None = None) -> None:
    """Create any missing HNSW index (after a bulk load, or after an interrupted one)."""
    if maintenance_work_mem:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
    for statement in statements(HNSW_INDEXES):
        conn.execute(statement)


def analyze(conn: psycopg.Connection) -> None:
    """Refresh the planner's statistics after a load, so searches use the HNSW indexes right away
    (before autovacuum gets to it, a freshly loaded table looks tiny and gets sequential scans)."""
    conn.execute("ANALYZE historical_db.joint_embeddings")
    conn.execute("ANALYZE historical_db.branch_embeddings")
    conn.execute("ANALYZE historical_db.runs")


def lock(conn: psycopg.Connection) -> None:
    """Serialise writers of vectors: a second embed-runs waits for the first, then finds nothing left to do."""
    conn.execute("SELECT pg_advisory_lock(%s)", (EMBED_LOCK_KEY,))


def unlock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (EMBED_LOCK_KEY,))

