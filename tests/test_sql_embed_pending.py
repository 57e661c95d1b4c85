"""embed_pending_v1: runs another program inserted get, from the SQL encoders, the vectors embed-runs
would write, beside a running embed-runs, and only writers may call it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from metaspace import pipeline
from metaspace.fitted import load_space
from metaspace.sample import sample_runs, write_runs
from metaspace.store import runs as run_store
from metaspace.store.connection import connect
from metaspace.store.vectors import EMBED_LOCK_KEY


@pytest.fixture
def fitted_db(db_url: str, tmp_path: Path) -> Iterator[str]:
    """299 imported runs, a version fitted on them (one run embedded by Python), then a run with a string
    where the history has numbers."""
    runs = sample_runs(300, seed=21)
    pipeline.import_runs([str(write_runs(runs[:-1], tmp_path / "runs.jsonl"))], database_url=db_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.embed_runs(database_url=db_url, limit=1)
    bad = dict(runs[-1], env=dict(runs[-1]["env"], realized_vol="high"))
    pipeline.import_runs([str(write_runs([bad], tmp_path / "bad.jsonl"))], database_url=db_url)
    yield db_url


def _vectors(conn: psycopg.Connection, version: int) -> dict[str, dict[str, np.ndarray]]:
    rows = conn.execute("SELECT run_id, 'joint', vector FROM historical_db.joint_embeddings WHERE encoder_version = %s "
                        "UNION ALL SELECT run_id, branch, vector FROM historical_db.branch_embeddings "
                        "WHERE encoder_version = %s", (version, version)).fetchall()
    out: dict[str, dict[str, np.ndarray]] = {}
    for run_id, space, vector in rows:
        out.setdefault(space, {})[run_id] = vector.to_numpy()
    return out


def test_embed_pending_writes_the_vectors_embed_runs_would(fitted_db: str) -> None:
    with connect(fitted_db, autocommit=True) as conn:
        version, embedded, quarantined = conn.execute("SELECT * FROM historical_db.embed_pending_v1(50)").fetchone()
        assert embedded + quarantined == 50
        rest = conn.execute("SELECT embedded, quarantined FROM historical_db.embed_pending_v1(1000)").fetchone()
        assert (embedded + rest[0], quarantined + rest[1]) == (298, 1)  # 300 runs, one embedded by Python
        assert run_store.count_pending(conn, version, run_store.Selection()) == 0
        field, reason = conn.execute("SELECT field, reason FROM historical_db.embedding_quarantine").fetchone()
        assert field == "env.realized_vol" and "the string 'high'" in reason
        stored = _vectors(conn, version)
        runs = run_store.pending_runs(conn, version, run_store.Selection(), "", 1000)  # none: all done
        assert runs == []
        every = conn.execute(f"SELECT {run_store.RUN_COLUMNS} FROM historical_db.runs r ORDER BY run_id").fetchall()
        runs = [run_store._run_from_row(row) for row in every]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoded = load_space(conn, version).encode(runs)
    assert [e.field for e in encoded.errors.values()] == [field]
    for space, vectors in encoded.vectors().items():
        for i, run in enumerate(runs):
            if i in encoded.errors:
                assert run["run_id"] not in stored[space]
                continue
            got, expected = stored[space][run["run_id"]], vectors[i]
            assert np.abs(got - expected).max() <= 1e-6 * max(float(np.linalg.norm(expected)), 1e-30)


def test_embed_runs_after_embed_pending_finds_nothing_left(fitted_db: str) -> None:
    with connect(fitted_db, autocommit=True) as conn:
        conn.execute("SELECT * FROM historical_db.embed_pending_v1(1000)")
    summary = pipeline.embed_runs(database_url=fitted_db)
    assert summary.pending == 0 and summary.embedded == 0


def test_embed_pending_waits_for_a_running_embed_runs(fitted_db: str) -> None:
    with connect(fitted_db, autocommit=True) as holder, connect(fitted_db, autocommit=True) as conn:
        holder.execute("SELECT pg_advisory_lock(%s)", (EMBED_LOCK_KEY,))
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SELECT * FROM historical_db.embed_pending_v1(10)")
        holder.execute("SELECT pg_advisory_unlock(%s)", (EMBED_LOCK_KEY,))
        assert conn.execute("SELECT embedded FROM historical_db.embed_pending_v1(10)").fetchone()[0] == 10


def test_embed_pending_refuses_a_bad_max_runs(fitted_db: str) -> None:
    with connect(fitted_db, autocommit=True) as conn, pytest.raises(psycopg.errors.InvalidParameterValue,
                                                                     match="max_runs"):
        conn.execute("SELECT * FROM historical_db.embed_pending_v1(0)")


def test_only_writers_may_embed_pending(db_url: str) -> None:
    with connect(db_url, autocommit=True) as conn:
        rights = dict(conn.execute(
            "SELECT r, has_function_privilege(r, 'historical_db.embed_pending_v1(integer)', 'EXECUTE') "
            "FROM unnest(ARRAY['metaspace_reader', 'metaspace_writer', 'public']) r").fetchall())
    assert rights == {"metaspace_reader": False, "metaspace_writer": True, "public": False}


def test_a_table_converted_from_float32_bytes_gets_them_from_embed_pending_too(empty_db: str, tmp_path: Path) -> None:
    from test_migrations import _make_legacy_table

    from metaspace.store import migrate

    _make_legacy_table(empty_db, 6, {})
    migrate.upgrade(empty_db)
    runs = sample_runs(40, seed=3)
    pipeline.import_runs([str(write_runs(runs, tmp_path / "runs.jsonl"))], database_url=empty_db)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.embed_runs(database_url=empty_db, limit=1)
    with connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT embedded FROM historical_db.embed_pending_v1(100)").fetchone()[0] == 39
        rows = conn.execute("SELECT vector, vector_f32 FROM historical_db.joint_embeddings "
                            "WHERE encoder_version IS NOT NULL").fetchall()
    assert len(rows) == 40
    assert all(bytes(blob) == vector.to_numpy().astype("<f4").tobytes() for vector, blob in rows)


def test_embed_pending_stages_in_its_own_temporary_table_not_one_planted_in_public(fitted_db: str) -> None:
    """An unqualified name would find public.embed_pending_rows first (search_path lists pg_temp last): a table
    (with a trigger) planted there by any login could see, keep or act on a writer's rows."""
    with psycopg.connect(fitted_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.embed_pending_rows (LIKE historical_db.runs)")
        try:
            embedded = conn.execute("SELECT embedded FROM historical_db.embed_pending_v1(20)").fetchone()[0]
            planted = conn.execute("SELECT count(*) FROM public.embed_pending_rows").fetchone()[0]
        finally:
            conn.execute("DROP TABLE public.embed_pending_rows")
    assert embedded > 0 and planted == 0
