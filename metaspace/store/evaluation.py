"""What ``metaspace evaluate`` reads: decision points (runs that share one env at one date), the history of
the objective by config and date, and one restricted suggestion per decision."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from metaspace.names import JOINT_MODEL
from metaspace.store.search import HISTORY_RUNS, SUGGESTION_COLUMNS, _call

# The ranking functions evaluate may replay: the released ones by version, or (benchmarks) any function
# with suggest_configs_v2's signature, named schema.function.
# "v2" is the v2 ranking; suggest_configs_v3 computes it over whichever graph the env space has (revision 0012).
# "v5" is replayed through picks_at_scales (the ranking at every local scale of the calibration's grid).
RANKINGS = {"v1": ("historical_db", "suggest_configs_v1"), "v2": ("historical_db", "suggest_configs_v3"),
            "v4": ("historical_db", "suggest_configs_v4"),
            # what `metaspace suggest` answers: the stable name, with the calibrations stored as of each date
            "suggest": ("historical_db", "suggest_configs")}
_QUALIFIED = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")

# Runs that report the objective as a number and have an env vector of the active encoder version (read first,
# and passed in: on Citus a function in the join would run on the shards, where its read of the reference table
# encoder_versions is a nested distributed query), known by $until (as_of_date on or before it). An environment
# is one env object at one as_of_date.
_KNOWN = """
    SELECT r.run_id, coalesce(r.config_id, r.run_id) AS config_id, r.as_of_date, md5(r.env::text) AS env_key,
           (r.outcome #>> %(path)s)::double precision AS value
    FROM historical_db.runs r
    JOIN historical_db.run_entities b
      ON b.run_id = r.run_id AND b.env_entity IS NOT NULL
     AND b.encoder_version = %(active)s
    WHERE jsonb_typeof(r.outcome #> %(path)s) = 'number'
      AND (%(until)s::date IS NULL OR r.as_of_date <= %(until)s::date)
"""


@dataclass(frozen=True)
class DecisionPoint:
    """Runs sharing one env at one as_of_date: the configs tried there and what each realised (a config run
    twice there counts once, with its mean)."""

    as_of_date: dt.date
    env_key: str
    env_run_id: str
    configs: tuple[str, ...]
    values: tuple[float, ...]


def decision_points(conn: psycopg.Connection, path: list[str], until: dt.date | None) -> list[DecisionPoint]:
    """Every decision point known by ``until`` where two or more configs were tried, oldest first."""
    rows = conn.execute(
        f"""
        WITH known AS ({_KNOWN}), per_config AS (
            SELECT k.as_of_date, k.env_key, k.config_id, avg(k.value) AS value, min(k.run_id) AS run_id
            FROM known k GROUP BY k.as_of_date, k.env_key, k.config_id
        )
        SELECT p.as_of_date, p.env_key, min(p.run_id), array_agg(p.config_id ORDER BY p.config_id),
               array_agg(p.value ORDER BY p.config_id)
        FROM per_config p
        GROUP BY p.as_of_date, p.env_key
        HAVING count(*) >= 2
        ORDER BY p.as_of_date, p.env_key
        """,  # noqa: S608 (constant text; the arguments are parameters)
        {"path": path, "until": until, "active": _active_version(conn)},
    ).fetchall()
    return [DecisionPoint(d, key, run, tuple(configs), tuple(float(v) for v in values))
            for d, key, run, configs, values in rows]


def objective_history(conn: psycopg.Connection, path: list[str],
                      until: dt.date | None) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """The objective's sum and count by (as_of_date, config), oldest first: (dates, configs, sums, counts)."""
    rows = conn.execute(
        f"""
        WITH known AS ({_KNOWN})
        SELECT k.as_of_date, k.config_id, sum(k.value), count(*)
        FROM known k GROUP BY k.as_of_date, k.config_id ORDER BY k.as_of_date, k.config_id
        """,  # noqa: S608 (constant text; the arguments are parameters)
        {"path": path, "until": until, "active": _active_version(conn)},
    ).fetchall()
    dates = np.array([r[0] for r in rows], dtype="datetime64[D]")
    return dates, [r[1] for r in rows], np.array([r[2] for r in rows], float), np.array([r[3] for r in rows], float)


def test_window_horizon(conn: psycopg.Connection, until: dt.date | None) -> int | None:
    """Days from the start of a run's outcome window (its ``test_start`` extra field) to its as_of_date, at
    most over the runs known by ``until``; None when no run carries a test_start date."""
    row = conn.execute(
        """
        SELECT max(r.as_of_date - (r.extra ->> 'test_start')::date)
        FROM historical_db.runs r
        WHERE jsonb_typeof(r.extra -> 'test_start') = 'string'
          AND pg_input_is_valid(r.extra ->> 'test_start', 'date')
          AND (%(until)s::date IS NULL OR r.as_of_date <= %(until)s::date)
        """,
        {"until": until},
    ).fetchone()
    return None if row[0] is None else int(row[0])


def _ranking_function(ranking: str) -> sql.Composable:
    if ranking in RANKINGS:
        return sql.Identifier(*RANKINGS[ranking])
    if not _QUALIFIED.match(ranking):
        raise ValueError(f"unknown ranking {ranking!r}: use suggest, v1, v2, v4 or schema.function")
    return sql.Identifier(*ranking.split("."))


def _active_version(conn: psycopg.Connection) -> int | None:
    return conn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]


def _env_vector(conn: psycopg.Connection, run_id: str) -> Any:
    """The run's env vector for the active encoder version (None when it has none), read before the call that
    ranks by it: on Citus a vector read by a subquery in that call's arguments would be planned on the shards."""
    row = conn.execute(
        "SELECT b.vector FROM historical_db.branch_embeddings b WHERE b.run_id = %s AND b.branch = 'env' "
        "AND b.encoder_version = %s", (run_id, _active_version(conn))).fetchone()
    return None if row is None else row[0]


def ranked_eligible(conn: psycopg.Connection, point: DecisionPoint, *, as_of: dt.date, objective: str,
                    higher_is_better: bool, neighbours: int, min_runs: int, ranking: str = "v4",
                    exact: bool = False, horizon: int | None = None) -> list[dict[str, Any]]:
    """The suggestions for the point's env as of ``as_of``, among the configs tried there, best first.

    v2 and its variants restrict the candidates in SQL (``eligible_configs``); v1 has no such argument, so it
    ranks every config and the eligible ones are kept in its order. ``horizon`` (days of one outcome
    window) reaches v4 and suggest, which count evidence in blocks of it."""
    env = sql.SQL("%(env)s::vector")
    params = {"env": _env_vector(conn, point.env_run_id), "as_of": as_of, "objective": objective, "higher": higher_is_better,
              "neighbours": neighbours, "min_runs": min_runs, "exact": exact}
    if ranking == "v1":
        statement = sql.SQL(
            "SELECT * FROM {fn}({env}, 1000, %(as_of)s, %(objective)s, %(higher)s, %(neighbours)s, %(min_runs)s, "
            "NULL, %(exact)s)").format(fn=_ranking_function(ranking), env=env)
        rows = [dict(zip(SUGGESTION_COLUMNS, row)) for row in _call(conn, statement, params)]
        eligible = set(point.configs)
        return [row for row in rows if row["config_id"] in eligible]
    statement = sql.SQL(
        "SELECT * FROM {fn}({env}, k => %(k)s, as_of => %(as_of)s, objective => %(objective)s, "
        "higher_is_better => %(higher)s, neighbours => %(neighbours)s, min_runs => %(min_runs)s, "
        "exact => %(exact)s, eligible_configs => %(eligible)s{horizon})").format(
            fn=_ranking_function(ranking), env=env,
            horizon=sql.SQL({"v4": ", horizon => %(horizon)s", "suggest": ", horizon => %(horizon)s"}.get(ranking, "")))
    cursor = conn.execute(statement, params | {"k": len(point.configs), "eligible": list(point.configs),
                                               "horizon": horizon})
    columns = [d.name for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def picks_at_scales(conn: psycopg.Connection, point: DecisionPoint, *, as_of: dt.date, objective: str,
                    higher_is_better: bool, neighbours: int, min_runs: int, scales: tuple[float, ...],
                    exact: bool = False, horizon: int | None = None) -> dict[float, tuple[str, float]]:
    """Among the configs tried at the point, the top suggestion as of ``as_of`` at each local scale, and its
    raw confidence: {scale: (config_id, raw_confidence)}, empty where no config has the evidence. Asked of
    historical_db.suggest_picks (what suggest_configs ranks by, at every scale in one call), uncalibrated: the
    replay fits the calibrations."""
    rows = _call(conn, """
        SELECT p.local_scale, p.config_id, p.raw_confidence
        FROM historical_db.suggest_picks(
            %(env)s::vector, %(as_of)s, %(objective)s, %(higher)s, %(neighbours)s, %(min_runs)s, %(eligible)s, %(exact)s, %(horizon)s,
            %(scales)s, %(history)s) p""",
        {"env": _env_vector(conn, point.env_run_id), "as_of": as_of, "objective": objective,
         "higher": higher_is_better, "neighbours": neighbours, "min_runs": min_runs, "eligible": list(point.configs),
         "exact": exact,
         "horizon": horizon, "scales": [float(scale) for scale in scales], "history": HISTORY_RUNS})
    return {float(scale): (config, float(raw)) for scale, config, raw in rows}


def calibrated_confidences(conn: psycopg.Connection, raw: list[float], knots_from: tuple[float, ...] | None,
                           knots_to: tuple[float, ...] | None) -> list[float]:
    """Raw confidences through a calibration's map (historical_db.calibrated_confidence_v1, the one suggest
    applies); without a map, the raw confidences."""
    if knots_from is None:
        return [float(x) for x in raw]
    rows = conn.execute(
        "SELECT historical_db.calibrated_confidence_v1(u.x, %s, %s) FROM unnest(%s::float8[]) WITH ORDINALITY "
        "AS u (x, i) ORDER BY u.i", (list(knots_from), list(knots_to), [float(x) for x in raw])).fetchall()
    return [float(value) for (value,) in rows]


def stored_calibrations(conn: psycopg.Connection, *, objective: str, higher_is_better: bool) -> tuple[int, Any]:
    """How many calibrations of this objective and direction are stored for the active encoder version, and
    the date the latest was fitted until (None without any)."""
    return conn.execute(
        "SELECT count(*)::integer, max(fitted_until) FROM historical_db.suggest_calibrations "
        "WHERE objective = %s AND higher_is_better = %s AND encoder_version = historical_db.active_encoder_version_v1()",
        (objective, higher_is_better)).fetchone()


def calibration_settings(conn: psycopg.Connection, *, objective: str, higher_is_better: bool,
                         fitted_until: Any) -> dict[str, Any]:
    """The settings stored with one calibration of the active encoder version ({} if there is none)."""
    row = conn.execute(
        "SELECT settings FROM historical_db.suggest_calibrations WHERE objective = %s AND higher_is_better = %s "
        "AND encoder_version = historical_db.active_encoder_version_v1() AND fitted_until = %s",
        (objective, higher_is_better, fitted_until)).fetchone()
    return row[0] if row else {}


def active_version(conn: psycopg.Connection) -> int | None:
    """The active encoder version, as this connection's snapshot sees it (None before the first embed-runs)."""
    row = conn.execute(f"SELECT version FROM historical_db.encoder_versions "  # noqa: S608 (a constant)
                       f"WHERE model_id = '{JOINT_MODEL}' AND is_active").fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class Saved:
    count: int
    encoder_version: int
    already: bool  # the same calibrations were stored already (by another evaluate that finished first)


def save_calibrations(conn: psycopg.Connection, *, objective: str, higher_is_better: bool,
                      fits: list[Any], encoder_version: int) -> Saved:
    """Replace the stored calibrations of this objective and direction, for ``encoder_version`` (the version they
    were measured on), with ``fits`` (metaspace.calibration.Calibration, one per date
    refitted on), in one transaction.

    Two savers of one objective, direction and version take turns (a transaction-level advisory lock): the
    second waits for the first to commit, then reads what it stored; calibrations equal to its own are left as
    they are, and ``already`` says so. Without the turn, both deleted what neither could yet see and the
    second failed on the first's primary keys."""
    with conn.transaction():
        version = encoder_version
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"metaspace.suggest_calibrations/{objective}/{higher_is_better}/{version}",))
        where = ("WHERE objective = %(objective)s AND higher_is_better = %(higher)s "
                 "AND encoder_version = %(version)s")
        keys = {"objective": objective, "higher": higher_is_better, "version": version}
        stored = conn.execute(
            "SELECT fitted_until, local_scale, confidence_from, confidence_to, decisions, settings "  # noqa: S608
            f"FROM historical_db.suggest_calibrations {where} ORDER BY fitted_until", keys).fetchall()
        wanted = sorted(((f.fitted_until, float(f.local_scale), [float(x) for x in f.confidence_from],
                          [float(x) for x in f.confidence_to], int(f.decisions), f.settings) for f in fits),
                        key=lambda row: row[0])
        if [tuple(row) for row in stored] == [tuple(row) for row in wanted]:
            return Saved(len(fits), version, already=bool(fits))
        conn.execute(f"DELETE FROM historical_db.suggest_calibrations {where}", keys)  # noqa: S608
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO historical_db.suggest_calibrations (objective, higher_is_better, encoder_version, "
                "fitted_until, local_scale, confidence_from, confidence_to, decisions, settings) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(objective, higher_is_better, version, f.fitted_until, f.local_scale, list(f.confidence_from),
                  list(f.confidence_to), f.decisions, Jsonb(f.settings)) for f in fits])
    return Saved(len(fits), version, already=False)
