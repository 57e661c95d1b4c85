"""Calls of the SQL search functions by their stable names (sql/stable_v1.sql), the names SQL clients call:
the Python API answers as SQL does because it asks the same functions. The only Python that names them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from metaspace.errors import MetaspaceError, VersionChanged

if TYPE_CHECKING:
    import numpy as np

HISTORY_RUNS = 20_000  # suggest's default: the records read the latest runs known, shared among the candidates
MATCH_COLUMNS = ("run_id", "config_id", "strategy_id", "as_of_date", "distance", "entity_scope")
SUGGESTION_COLUMNS = ("config_id", "config", "score", "weighted_objective", "runs", "mean_distance", "objective_mean", "objective_std",
                      "best_run_id", "best_objective", "edge_z", "deflated_confidence", "candidates", "environments",
                      "relative_objective", "history_objective", "history_blocks", "local_weight",
                      "estimated_local_weight", "local_scale", "record_estimate", "record_var", "local_var",
                      "environment_var", "raw_confidence", "calibrated_until")


@dataclass(frozen=True)
class Filters:
    as_of: dt.date | None = None
    strategies: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    scope: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "strategies": list(self.strategies) or None,
                "configs": list(self.configs) or None, "scope": Jsonb(self.scope) if self.scope else None}


def _call(conn: psycopg.Connection, statement: Any, params: dict[str, Any], notes: list[str] | None = None) -> list[tuple]:
    """Run a search function; its argument errors (SQLSTATE 22023, P0002) become MetaspaceError, and a
    query encoded with a version that is no longer active (55000) VersionChanged. What the function says
    with RAISE NOTICE (why an answer is empty, and what to change) is added to ``notes``."""
    said: list[str] = []

    def listen(diag: psycopg.errors.Diagnostic) -> None:  # read now: the diagnostic is freed after the call
        if diag.severity_nonlocalized == "NOTICE":
            said.append(f"{diag.message_primary}" + (f" ({diag.message_hint})" if diag.message_hint else ""))

    conn.add_notice_handler(listen)
    try:
        return conn.execute(statement, params).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise VersionChanged(exc.diag.message_primary or str(exc)) from None
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.NoDataFound) as exc:
        hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
        raise MetaspaceError(f"{exc.diag.message_primary}{hint}") from None
    finally:
        conn.remove_notice_handler(listen)
        if notes is not None:
            notes.extend(said)


def _float32(vector: Any) -> np.ndarray:
    """A query vector as float32, numpy imported here: a search by stored run never needs it."""
    import numpy as np

    return np.asarray(vector, dtype=np.float32)


def _matches(rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(MATCH_COLUMNS, row)) | {"as_of_date": row[3].isoformat()} for row in rows]


def search(conn: psycopg.Connection, vector: np.ndarray, k: int, space: str, filters: Filters,
           exact: bool, version: int | None = None) -> list[dict[str, Any]]:
    """The k nearest runs to a vector made with encoder ``version`` (VersionChanged if that is no longer
    the active one)."""
    rows = _call(
        conn,
        "SELECT * FROM historical_db.search_runs(%(q)s, %(k)s, %(space)s, %(as_of)s, %(strategies)s, %(configs)s, "
        "%(scope)s, %(exact)s, %(version)s)",
        {"q": _float32(vector), "k": k, "space": space, "exact": exact, "version": version}
        | filters.params(),
    )
    return _matches(rows)


DISTINCT_COLUMNS = ("entity_id", "distance", "runs", "first_date", "last_date", "first_run", "record")


def distinct(conn: psycopg.Connection, vector: np.ndarray | None, k: int, space: str, filters: Filters, exact: bool,
             version: int | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
    """The k nearest distinct entities of a branch space (historical_db.search_distinct): to a vector made with
    encoder ``version``, or to a stored run's own vector in that space (``run_id``)."""
    if run_id is not None:
        # (the active version read first: on Citus a function in the filter would run on the shards, where its
        # read of the reference table encoder_versions is a nested distributed query)
        active = conn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]
        found = conn.execute(
            "SELECT b.vector, b.encoder_version FROM historical_db.branch_embeddings b WHERE b.run_id = %s "
            "AND b.branch = %s AND b.encoder_version = %s", (run_id, space, active)).fetchone()
        if found is None:
            raise MetaspaceError(f"run {run_id!r} has no {space} vector for the active encoder version: import it "
                                 "(metaspace import-runs) and embed it (metaspace embed-runs), or check the run_id")
        query, version = found
    else:
        query = _float32(vector)
    rows = _call(
        conn,
        "SELECT * FROM historical_db.search_distinct(%(q)s, %(k)s, %(space)s, %(as_of)s, %(strategies)s, "
        "%(configs)s, %(scope)s, %(exact)s, %(version)s)",
        {"q": query, "k": k, "space": space, "exact": exact, "version": version} | filters.params(),
    )
    found_rows = [dict(zip(DISTINCT_COLUMNS, row)) for row in rows]
    return [row | {"first_date": row["first_date"].isoformat(), "last_date": row["last_date"].isoformat()}
            for row in found_rows]


def neighbours(conn: psycopg.Connection, run_id: str, k: int, space: str, filters: Filters,
               exact: bool) -> list[dict[str, Any]]:
    rows = _call(
        conn,
        "SELECT * FROM historical_db.neighbours(%(run)s, %(k)s, %(space)s, %(as_of)s, %(strategies)s, %(configs)s, "
        "%(scope)s, %(exact)s)",
        {"run": run_id, "k": k, "space": space, "exact": exact} | filters.params(),
    )
    return _matches(rows)


def suggest(conn: psycopg.Connection, env: np.ndarray, *, k: int, as_of: dt.date | None, objective: str,
            higher_is_better: bool, neighbours: int, min_runs: int, strategies: tuple[str, ...],
            exact: bool, history: int | None, horizon: int | None,
            encoder_version: int | None = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """historical_db.suggest_configs (with the stored calibration as of the date, if any); ``encoder_version`` (the version
    ``env`` was encoded with) fails fast if it is no longer the active one. Why an empty answer is empty is added to
    ``notes``."""
    rows = _call(
        conn,
        "SELECT * FROM historical_db.suggest_configs(%(env)s, %(k)s, %(as_of)s, %(objective)s, %(higher)s, "
        "%(neighbours)s, %(min_runs)s, %(strategies)s, %(exact)s, encoder_version => %(version)s, "
        "history => %(history)s, horizon => %(horizon)s)",
        {"env": _float32(env), "k": k, "as_of": as_of, "objective": objective,
         "higher": higher_is_better, "neighbours": neighbours, "min_runs": min_runs,
         "strategies": list(strategies) or None, "exact": exact, "version": encoder_version,
         "history": history, "horizon": horizon},
        notes,
    )
    return [dict(zip(SUGGESTION_COLUMNS, row)) for row in rows]


def why_nothing(conn: psycopg.Connection, space: str, filters: Filters) -> str:
    """Why a search answered no runs, and what to change."""
    known, earliest = conn.execute(
        "SELECT count(*) FILTER (WHERE %(as_of)s::date IS NULL OR as_of_date <= %(as_of)s::date), min(as_of_date) "
        "FROM historical_db.runs", {"as_of": filters.as_of}).fetchone()
    if not known:
        return (f"no run is dated on or before {filters.as_of}" + (f" (the earliest is dated {earliest})" if earliest
                else " (the store holds no runs)") + ": ask as of a later date")
    filtered = [f"{name} {', '.join(values)}" for name, values in (("strategy", filters.strategies),
                                                                    ("config_id", filters.configs)) if values]
    if filters.scope:
        filtered.append(f"scope {filters.scope}")
    if filtered:
        return f"no run{f' known by {filters.as_of}' if filters.as_of else ''} matches {'; '.join(filtered)}"
    return f"no run has a vector in the {space} space of the active encoder version yet: run metaspace embed-runs"

