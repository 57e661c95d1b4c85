"""Writing vectors: the bulk path (binary COPY into staging, one set-based insert), the online path
(historical_db.store_run), the quarantine, the HNSW indexes around a backfill, and the writers' lock."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from metaspace.errors import VersionChanged
from metaspace.names import BRANCH_MODELS, DIMENSION, JOINT_MODEL, JOINT_TYPE, SOURCE
from metaspace.store import citus

# Advisory lock key held by embed-runs while it writes (two backfills never interleave).
EMBED_LOCK_KEY = 0x6D657461_7370  # "meta" "sp"


def has_legacy_bytes(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = 'historical_db' "
        "AND table_name = 'joint_embeddings' AND column_name = 'vector_f32'"
    ).fetchone())


STAGING = [
    "CREATE TEMP TABLE IF NOT EXISTS staging_meta (idx integer, run_id text, as_of_date date, config_id text, "
    "strategy_id text, record_sha256 text) ON COMMIT DELETE ROWS",
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


def write_vectors(conn: psycopg.Connection, version: int, runs: Sequence[Mapping[str, Any]], ok: np.ndarray,
                  vectors: Mapping[str, np.ndarray], legacy_bytes: bool) -> None:
    """Binary COPY of the batch into staging tables, then one set-based insert per target table.

    The vectors' COPY stream is built for the whole batch at once with numpy (no per-row Python), and the
    runs' ids and dates are sent once per run rather than once per vector. Where the legacy float32-bytes
    column exists, it is filled too, so that older readers keep working.
    """
    conn.execute(";\n".join(STAGING))
    idx = np.flatnonzero(ok).astype(np.int32)
    with conn.cursor().copy(
        "COPY staging_meta (idx, run_id, as_of_date, config_id, strategy_id, record_sha256) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int4", "text", "date", "text", "text", "text"])
        for i in idx.tolist():
            run = runs[i]
            copy.write_row((i, run["run_id"], run["as_of_date"], run["config_id"], run["strategy_id"],
                            run["record_sha256"]))
    # Only runs whose record is still the one that was encoded. The runs are share-locked until this batch
    # commits: an import changing one of them waits, then drops the vectors written here (its upsert deletes
    # a changed run's vectors); an import that changed one first makes this batch wait for it and then skip
    # that run, which stays pending. Either way no vector outlives the record it was made from.
    citus.prepare_writer(conn)
    citus.share_lock_runs(conn, [runs[i]["run_id"] for i in idx.tolist()])
    current = [i for (i,) in conn.execute("SELECT m.idx FROM staging_meta m JOIN historical_db.runs r "
                                          "ON r.run_id = m.run_id AND r.record_sha256 = m.record_sha256")]
    conn.execute("DELETE FROM staging_meta WHERE NOT (idx = ANY (%s))", (current,))  # (Citus: no join in a DELETE)
    blocks = [_vector_rows(idx, SPACE_CODES[space], vectors[space][idx]) for space in SPACE_CODES]
    with conn.cursor().copy("COPY staging_vectors (idx, space, vector) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(_SIGNATURE)
        for block in blocks:
            copy.write(block)
        copy.write(_TRAILER)
    if legacy_bytes:
        with conn.cursor().copy("COPY staging_f32 (idx, f32) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_SIGNATURE + _f32_rows(idx, vectors["joint"][idx]) + _TRAILER)
    legacy_column = ", vector_f32" if legacy_bytes else ""
    legacy_value = ", f.f32" if legacy_bytes else ""
    legacy_join = "LEFT JOIN staging_f32 f ON f.idx = v.idx" if legacy_bytes else ""
    conn.execute(
        f"""
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version{legacy_column})
        SELECT m.run_id, %(joint_type)s, m.as_of_date,
               jsonb_build_object('run_id', m.run_id, 'config_id', m.config_id, 'strategy_id', m.strategy_id,
                                  'source', %(source)s::text),
               %(model_id)s, v.vector, %(version)s{legacy_value}
        FROM staging_vectors v JOIN staging_meta m ON m.idx = v.idx {legacy_join}
        WHERE v.space = 0
        ON CONFLICT (joint_type, model_id, run_id, encoder_version) WHERE encoder_version IS NOT NULL DO NOTHING
        """,  # noqa: S608 (only fixed column names are interpolated)
        {"joint_type": JOINT_TYPE, "source": SOURCE, "model_id": JOINT_MODEL, "version": version},
    )
    # The branch vectors: each distinct branch record stored once, the runs referencing it (one rule for every
    # writer: historical_db.attach_entities_v2, whose body is sql/branch_entities_v3.sql's since revision 0021).
    conn.execute(
        """
        SELECT historical_db.attach_entities_v2(%(version)s, array_agg(m.run_id ORDER BY m.idx),
                                                array_agg(c.vector ORDER BY m.idx), array_agg(e.vector ORDER BY m.idx),
                                                array_agg(o.vector ORDER BY m.idx))
        FROM staging_meta m
             JOIN staging_vectors c ON c.idx = m.idx AND c.space = %(config)s
             JOIN staging_vectors e ON e.idx = m.idx AND e.space = %(env)s
             JOIN staging_vectors o ON o.idx = m.idx AND o.space = %(outcome)s
        """,
        {"version": version} | {branch: SPACE_CODES[branch] for branch in BRANCH_MODELS},
    )


def store_run(conn: psycopg.Connection, record: Mapping[str, Any], sha256: str, version: int, fingerprint: str,
              vectors: Mapping[str, np.ndarray], legacy_bytes: bool) -> None:
    """One run and its four vectors in one statement (historical_db.store_run): the online path."""
    joint = vectors["joint"]
    if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        # The caller's connection leaves committing to the caller: open its transaction first, so that the
        # block below is a savepoint (a refusal rolls back to it) and never a commit of its own.
        conn.execute("SELECT 1")
    try:
        with conn.transaction():  # a savepoint inside the caller's transaction; a transaction in autocommit
            conn.execute(
                "SELECT historical_db.store_run(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (Jsonb(dict(record)), sha256, version, fingerprint, joint, vectors["config"], vectors["env"],
                 vectors["outcome"], joint.astype("<f4").tobytes() if legacy_bytes else None),
            )
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise VersionChanged(exc.diag.message_primary or str(exc)) from None


def quarantine(conn: psycopg.Connection, version: int, entries: Sequence[Mapping[str, Any]]) -> None:
    """Record runs that failed encoding (run_id, field, reason, record_sha256), so they are not retried
    until their record changes."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO historical_db.embedding_quarantine (run_id, encoder_version, field, reason, record_sha256) "
            "SELECT %(run_id)s, %(version)s, %(field)s, %(reason)s, %(record_sha256)s FROM historical_db.runs r "
            "WHERE r.run_id = %(run_id)s AND r.record_sha256 = %(record_sha256)s "
            "ON CONFLICT (run_id, encoder_version) DO UPDATE SET field = excluded.field, "
            "reason = excluded.reason, record_sha256 = excluded.record_sha256, quarantined_at = excluded.quarantined_at",
            [dict(entry, version=version) for entry in entries],
        )


def stored_vector_count(conn: psycopg.Connection, version: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM historical_db.joint_embeddings WHERE encoder_version = %s", (version,)
    ).fetchone()[0]


def owns_tables(conn: psycopg.Connection) -> bool:
    """Whether this login may drop and build the vector tables' indexes (it owns them, or is in the role
    that does)."""
    return conn.execute(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
        "WHERE c.oid = 'historical_db.joint_embeddings'::regclass"
    ).fetchone()[0]


def analyze(conn: psycopg.Connection) -> None:
    """Refresh the planner's statistics after a load, so searches use the HNSW indexes right away
    (before autovacuum gets to it, a freshly loaded table looks tiny and gets sequential scans)."""
    for table in ("joint_embeddings", "branch_entities", "run_entities", "runs"):
        conn.execute(f"ANALYZE historical_db.{table}")


def drop_orphans(conn: psycopg.Connection) -> int:
    """Remove the branch entities no run references any more (runs deleted, records changed by hand): what
    embed-runs sweeps after its writes. Returns how many."""
    return conn.execute("SELECT historical_db.drop_orphans_v2()").fetchone()[0]


def lock(conn: psycopg.Connection) -> None:
    """Serialise writers of vectors: a second embed-runs waits for the first, then finds nothing left to do."""
    conn.execute("SELECT pg_advisory_lock(%s)", (EMBED_LOCK_KEY,))


def unlock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (EMBED_LOCK_KEY,))
