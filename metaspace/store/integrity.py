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

from metaspace.names import JOINT_MODEL, JOINT_TYPE

FAULTS = ("duplicate_joint", "orphan_joint", "partial_entities", "orphan_entities", "invalid_indexes")

# Each count a statement of its own, all in one snapshot (one REPEATABLE READ transaction): on Citus a statement
# with correlated subqueries over a CTE is refused, and a reference table (branch_entities) is anti-joined to the
# distributed run_entities only through a subquery that is not correlated.
_OURS = "j.joint_type = %(joint_type)s AND j.model_id = %(model)s AND j.encoder_version IS NOT NULL"
_ACTIVE = "SELECT version FROM historical_db.encoder_versions WHERE model_id = %(model)s AND is_active"
_COUNTS = tuple(query.replace("{ours}", _OURS) for query in (
    "SELECT count(*) FROM historical_db.runs",
    "SELECT count(*) FROM historical_db.joint_embeddings j WHERE {ours} AND j.encoder_version = %(v)s",
    """SELECT count(*) FROM historical_db.runs r
       WHERE NOT EXISTS (SELECT 1 FROM historical_db.joint_embeddings j
                         WHERE j.run_id = r.run_id AND {ours} AND j.encoder_version = %(v)s)
         AND NOT EXISTS (SELECT 1 FROM historical_db.embedding_quarantine q
                         WHERE q.run_id = r.run_id AND q.encoder_version = %(v)s)""",
    "SELECT count(*) FROM historical_db.embedding_quarantine q WHERE q.encoder_version = %(v)s",
    """SELECT count(*) FROM (SELECT j.run_id FROM historical_db.joint_embeddings j WHERE {ours}
                             GROUP BY j.run_id, j.encoder_version HAVING count(*) > 1) d""",
    """SELECT count(*) FROM historical_db.joint_embeddings j
       WHERE {ours} AND NOT EXISTS (SELECT 1 FROM historical_db.runs r WHERE r.run_id = j.run_id)""",
    """SELECT count(*) FROM historical_db.joint_embeddings j
       WHERE {ours} AND NOT EXISTS (SELECT 1 FROM historical_db.run_entities e
                                    WHERE e.run_id = j.run_id AND e.encoder_version = j.encoder_version)""",
    """SELECT count(*) FROM historical_db.branch_entities b
       WHERE NOT (b.branch = 'config' AND b.entity_id IN (SELECT e.config_entity FROM historical_db.run_entities e))
         AND NOT (b.branch = 'env' AND b.entity_id IN (SELECT e.env_entity FROM historical_db.run_entities e))
         AND NOT (b.branch = 'outcome'
                  AND b.entity_id IN (SELECT e.outcome_entity FROM historical_db.run_entities e))""",
    """SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'historical_db' AND NOT i.indisvalid
         AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)""",
))


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
    """Count what a fault could have left behind (see the module's docstring), in one snapshot."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if idle:  # (a caller's open transaction keeps its own snapshot)
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        names = {"joint_type": JOINT_TYPE, "model": JOINT_MODEL}
        row = conn.execute(_ACTIVE, names).fetchone()
        values = {**names, "v": row[0] if row else None}
        return Integrity(*(int(conn.execute(query, values).fetchone()[0]) for query in _COUNTS))
