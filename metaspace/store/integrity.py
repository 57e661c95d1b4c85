"""What must hold of a store after any crash, kill or full disk, counted in one statement (``metaspace db check``).

Every write of metaspace is one transaction per batch, so a fault leaves each batch whole or absent; this is
the check that says so from the rows themselves. Faults (each must be 0):

- ``duplicate_joint``: runs with more than one joint vector of one encoder version;
- ``orphan_joint``: joint vectors of a run that no longer exists;

(each of metaspace's own joint type and model: rows other programs keep in the table are theirs);
- ``partial_entities``: runs whose reference to their env, config or outcome vector is missing for a version
  they have a joint vector of (a run is embedded with all four or none);
- ``orphan_entities``: distinct branch vectors no run references (embed-runs sweeps them; a crash between a
  writer's delete and its sweep leaves them until the next embed-runs);
- ``invalid_indexes``: indexes of the schema left invalid by an interrupted ``CREATE INDEX CONCURRENTLY`` (one
  being built now is not counted).

And, for information: ``runs``, the runs ``embedded`` for the active version, the runs ``pending`` (neither
embedded nor quarantined) and ``quarantined``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

from metaspace.names import JOINT_MODEL, JOINT_TYPE, SCHEMA

FAULTS = ("duplicate_joint", "orphan_joint", "partial_entities", "orphan_entities", "invalid_indexes")

_CHECK = f"""
WITH active AS (SELECT (SELECT version FROM {SCHEMA}.encoder_versions
                        WHERE model_id = '{JOINT_MODEL}' AND is_active) AS version),
     ours AS NOT MATERIALIZED (SELECT * FROM {SCHEMA}.joint_embeddings
              WHERE joint_type = '{JOINT_TYPE}' AND model_id = '{JOINT_MODEL}' AND encoder_version IS NOT NULL)
SELECT
  (SELECT count(*) FROM {SCHEMA}.runs),
  (SELECT count(*) FROM ours j, active a WHERE j.encoder_version = a.version),
  (SELECT count(*) FROM {SCHEMA}.runs r, active a
    WHERE NOT EXISTS (SELECT 1 FROM ours j WHERE j.run_id = r.run_id AND j.encoder_version = a.version)
      AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.embedding_quarantine q
                      WHERE q.run_id = r.run_id AND q.encoder_version = a.version)),
  (SELECT count(*) FROM {SCHEMA}.embedding_quarantine q, active a WHERE q.encoder_version = a.version),
  (SELECT count(*) FROM (SELECT 1 FROM ours GROUP BY run_id, encoder_version HAVING count(*) > 1) d),
  (SELECT count(*) FROM ours j WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.runs r WHERE r.run_id = j.run_id)),
  (SELECT count(*) FROM ours j
    WHERE NOT EXISTS (
      SELECT 1 FROM {SCHEMA}.run_entities e
      WHERE e.run_id = j.run_id AND e.encoder_version = j.encoder_version
        AND e.env_entity IS NOT NULL AND e.config_entity IS NOT NULL AND e.outcome_entity IS NOT NULL)),
  (SELECT count(*) FROM {SCHEMA}.branch_entities b
    WHERE NOT (b.branch = 'config' AND EXISTS (
                 SELECT 1 FROM {SCHEMA}.run_entities e WHERE e.config_entity = b.entity_id))
      AND NOT (b.branch = 'env' AND EXISTS (
                 SELECT 1 FROM {SCHEMA}.run_entities e WHERE e.env_entity = b.entity_id))
      AND NOT (b.branch = 'outcome' AND EXISTS (
                 SELECT 1 FROM {SCHEMA}.run_entities e WHERE e.outcome_entity = b.entity_id))),
  (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{SCHEMA}' AND NOT i.indisvalid
      AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid))
"""  # noqa: S608 (constants only)


@dataclass(frozen=True)
class Integrity:
    runs: int
    embedded: int
    pending: int
    quarantined: int
    duplicate_joint: int
    orphan_joint: int
    partial_entities: int
    orphan_entities: int
    invalid_indexes: int

    @property
    def faults(self) -> dict[str, int]:
        """The checks that failed, with their counts (empty: the store is whole)."""
        return {name: getattr(self, name) for name in FAULTS if getattr(self, name)}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def check(conn: psycopg.Connection) -> Integrity:
    """Count what a fault could have left behind (see the module's docstring), in one statement and snapshot."""
    return Integrity(*(int(value) for value in conn.execute(_CHECK).fetchone()))
