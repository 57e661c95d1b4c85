"""What the transfer model reads from the store: past environments near a study's, as of a date, and their
runs. An environment is the runs of one strategy (a study, an experiment) in one env object.

Searched exactly over distinct environments: each environment's distance is that of one of its env vectors
(they are the same vector, one per run) to the query, computed for every environment known by the date.
That scan reads one env vector per environment and every run's date, objective and strategy once, which is
milliseconds for thousands of environments and seconds for millions of runs: the sampler does it once per
study and process, not per trial.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

_ENVIRONMENTS = """
WITH known AS (
    SELECT r.run_id, coalesce(r.strategy_id, '') AS strategy, jsonb_hash_extended(r.env, 0) AS env_key,
           r.as_of_date
    FROM historical_db.runs r
    WHERE (%(as_of)s::date IS NULL OR r.as_of_date <= %(as_of)s::date)
      AND jsonb_typeof(r.outcome #> %(path)s) = 'number'
      AND NOT (coalesce(r.strategy_id, '') = ANY (%(exclude)s::text[]))
), environments AS (
    SELECT k.strategy, k.env_key, count(*) AS runs, max(k.as_of_date) AS latest, min(k.run_id) AS probe
    FROM known k GROUP BY k.strategy, k.env_key HAVING count(*) >= %(min_runs)s
)
SELECT e.strategy, e.env_key, e.runs, e.latest,
       CASE WHEN %(query)s::vector IS NULL THEN NULL ELSE b.vector <-> %(query)s::vector END AS distance,
       (SELECT r.env FROM historical_db.runs r WHERE r.run_id = e.probe) AS env
FROM environments e
LEFT JOIN historical_db.branch_embeddings b
       ON b.run_id = e.probe AND b.branch = 'env' AND b.encoder_version = %(version)s
ORDER BY distance NULLS LAST, e.runs DESC, e.latest DESC, e.strategy, e.env_key
LIMIT %(limit)s
"""

_RUNS = """
SELECT coalesce(r.strategy_id, ''), jsonb_hash_extended(r.env, 0), r.config, (r.outcome #>> %(path)s)::double precision
FROM historical_db.runs r
WHERE (%(as_of)s::date IS NULL OR r.as_of_date <= %(as_of)s::date)
  AND jsonb_typeof(r.outcome #> %(path)s) = 'number'
  AND (coalesce(r.strategy_id, ''), jsonb_hash_extended(r.env, 0)) IN (
      SELECT * FROM unnest(%(strategies)s::text[], %(envs)s::bigint[]))
ORDER BY r.run_id
"""


@dataclass
class Environment:
    """One past environment: its strategy, its env, how many runs report the objective, the latest's date,
    its distance to the query (None without one), and its runs as (config, objective value)."""

    strategy: str
    env_key: int
    env: dict[str, Any]
    runs: int
    latest: dt.date
    distance: float | None
    rows: list[tuple[dict[str, Any], float]]


def environments(conn: psycopg.Connection, *, query: np.ndarray | None, version: int | None, path: list[str],
                 as_of: dt.date | None, exclude: list[str], limit: int, min_runs: int = 5) -> list[Environment]:
    """The ``limit`` environments nearest ``query`` (an env vector of ``version``; without one, those with the
    most runs) among the runs known by ``as_of`` that report the objective at ``path`` (inside outcome),
    strategies in ``exclude`` left out, each with its runs."""
    found = conn.execute(_ENVIRONMENTS, {"as_of": as_of, "path": path, "exclude": list(exclude),
                                         "min_runs": min_runs, "query": query, "version": version,
                                         "limit": limit}).fetchall()
    if not found:
        return []
    chosen = {(strategy, env_key): Environment(strategy, env_key, env or {}, runs, latest,
                                               None if distance is None else float(distance), [])
              for strategy, env_key, runs, latest, distance, env in found}
    for strategy, env_key, config, value in conn.execute(
            _RUNS, {"as_of": as_of, "path": path, "strategies": [k[0] for k in chosen],
                    "envs": [k[1] for k in chosen]}):
        chosen[(strategy, env_key)].rows.append((config or {}, float(value)))
    return [chosen[(strategy, env_key)] for strategy, env_key, *_ in found]
