"""Reading vectors for the landscape and writing clusterings (historical_db.clusterings / run_clusters)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from metaspace.errors import MetaspaceError


@dataclass
class Points:
    """Stored runs of one space: ids, vectors and what to colour or summarise them by."""

    run_ids: list[str]
    vectors: np.ndarray
    config_ids: list[str | None]
    strategies: list[str | None]
    objective: np.ndarray
    version: int
    colors: list[Any] = field(default_factory=list)


BRANCH_COLUMNS = {"config": "r.config", "env": "r.env", "outcome": "r.outcome"}


def points(conn: psycopg.Connection, space: str, version: int, objective: Sequence[str] | None, as_of: dt.date | None,
           color: tuple[str, list[str]] | None = None) -> Points:
    """Every embedded run of a space (active encoder version), as of a date, with its objective value and,
    with ``color`` = (branch, key path), the value of that key."""
    color_column = f"{BRANCH_COLUMNS[color[0]]} #> %(color_path)s" if color else "NULL::jsonb"
    cursor = conn.cursor(binary=True)
    cursor.execute(
        f"""
        SELECT v.run_id, v.vector, r.config_id, r.strategy_id,
               CASE WHEN jsonb_typeof(r.outcome #> %(path)s) = 'number' THEN (r.outcome #>> %(path)s)::float8 END,
               {color_column}
        FROM historical_db.run_vectors_v1 v JOIN historical_db.runs r ON r.run_id = v.run_id
        WHERE v.space = %(space)s AND v.encoder_version = %(version)s
          AND (%(as_of)s::date IS NULL OR v.as_of_date <= %(as_of)s::date)
        ORDER BY v.run_id
        """,  # noqa: S608 (fixed names only)
        {"path": list(objective) if objective else None, "space": space, "version": version, "as_of": as_of,
         "color_path": color[1] if color else None},
    )
    rows = cursor.fetchall()
    vectors = np.stack([row[1].to_numpy() for row in rows]) if rows else np.zeros((0, 384), dtype=np.float32)
    objective_values = np.array([np.nan if row[4] is None else row[4] for row in rows], dtype=np.float64)
    return Points([row[0] for row in rows], vectors, [row[2] for row in rows], [row[3] for row in rows],
                  objective_values, version, [row[5] for row in rows])


def save_clustering(conn: psycopg.Connection, space: str, version: int, k: int, method: str, params: dict[str, Any],
                    quality: dict[str, Any], run_ids: list[str], labels: np.ndarray, distances: np.ndarray) -> int:
    clustering_id = conn.execute(
        "INSERT INTO historical_db.clusterings (space, encoder_version, k, method, params, quality, runs) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING clustering_id",
        (space, version, k, method, Jsonb(params), Jsonb({str(key): value for key, value in quality.items()}),
         len(run_ids)),
    ).fetchone()[0]
    with conn.cursor().copy("COPY historical_db.run_clusters (clustering_id, run_id, label, distance) FROM STDIN") as copy:  # noqa: S608
        for run_id, label, distance in zip(run_ids, labels.tolist(), distances.tolist()):
            copy.write_row((clustering_id, run_id, label, distance))
    return clustering_id


def labels(conn: psycopg.Connection, run_ids: list[str], space: str, version: int,
           clustering_id: int | None) -> list[int | None]:
    """Each run's label in a clustering (the latest of this space and version when none is named)."""
    if clustering_id is None:
        row = conn.execute(
            "SELECT clustering_id FROM historical_db.clusterings WHERE space = %s AND encoder_version = %s "
            "ORDER BY created_at DESC, clustering_id DESC LIMIT 1", (space, version)).fetchone()
        if row is None:
            raise MetaspaceError(f"no clustering of the {space} space for encoder version {version}: "
                                 f"run metaspace cluster --space {space} --auto first")
        clustering_id = row[0]
    found = dict(conn.execute("SELECT run_id, label FROM historical_db.run_clusters WHERE clustering_id = %s",
                              (clustering_id,)).fetchall())
    return [found.get(run_id) for run_id in run_ids]
