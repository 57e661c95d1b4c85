"""The encoder registry (historical_db.encoder_versions): versions, their stored states, the active one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from metaspace.names import JOINT_MODEL


@dataclass(frozen=True)
class Version:
    version: int
    fingerprint: str
    is_active: bool
    fitted_on_runs: int
    fit_until: Any = None  # the cap given to the fit (a date), if any
    fitted_through: Any = None  # the latest as_of_date among the runs it was fitted on (None: not recorded)


def versions(conn: psycopg.Connection) -> list[Version]:
    rows = conn.execute(
        "SELECT version, fingerprint, is_active, fitted_on_runs, fit_until, fitted_through "
        "FROM historical_db.encoder_versions "
        "WHERE model_id = %s ORDER BY version",
        (JOINT_MODEL,),
    ).fetchall()
    return [Version(*row) for row in rows]


def load_state(conn: psycopg.Connection, version: int) -> tuple[dict[str, Any], str]:
    """The stored state of a registered version and its fingerprint."""
    row = conn.execute(
        "SELECT state, fingerprint FROM historical_db.encoder_versions WHERE version = %s", (version,)
    ).fetchone()
    if row is None:
        raise LookupError(f"encoder version {version} is not registered")
    return row[0], row[1]


def fingerprint(conn: psycopg.Connection, version: int) -> str:
    """A registered version's fingerprint (what its cached state is checked against)."""
    row = conn.execute("SELECT fingerprint FROM historical_db.encoder_versions WHERE version = %s",
                       (version,)).fetchone()
    if row is None:
        raise LookupError(f"encoder version {version} is not registered")
    return row[0]


def active_version(conn: psycopg.Connection) -> int | None:
    """The active encoder version, or None before the first fit."""
    row = conn.execute(
        "SELECT version FROM historical_db.encoder_versions WHERE model_id = %s AND is_active", (JOINT_MODEL,)
    ).fetchone()
    return row[0] if row else None


def register(conn: psycopg.Connection, state: dict[str, Any], fingerprint: str, fitted_on_runs: int, *,
             activate: bool, fit_until: Any = None, fitted_through: Any = None) -> int:
    """Register a fitted state as a new version (or return the version that already has its fingerprint),
    with the form of its state that the SQL encoders read."""
    existing = conn.execute(
        "SELECT version FROM historical_db.encoder_versions WHERE fingerprint = %s", (fingerprint,)
    ).fetchone()
    if existing:
        return existing[0]
    version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM historical_db.encoder_versions").fetchone()[0]
    conn.execute(
        "INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, fitted_on_runs, "
        "is_active, activated_at, fit_until, fitted_through) "
        "VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END, %s, %s)",
        (version, JOINT_MODEL, Jsonb(state, dumps=_dumps), fingerprint, fitted_on_runs,
         activate, activate, fit_until, fitted_through),
    )
    from metaspace.store import sql_encoders  # numpy, here only: a search by stored run never registers

    sql_encoders.write(conn, version, state)  # for historical_db.encode_v1 (sql/encode_v1.sql)
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
        conn.execute("DELETE FROM historical_db.run_entities WHERE encoder_version = %s", (previous[0],))
        conn.execute("DELETE FROM historical_db.branch_entities WHERE encoder_version = %s", (previous[0],))
        return previous[0]
    return None
