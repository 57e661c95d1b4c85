"""metaspace's tables on Citus: which are distributed by ``run_id`` (co-located), which are reference tables,
and the step that makes them so, run by ``metaspace migrate`` on a database where the ``citus`` extension is
installed (docs/scaling.md, "Running metaspace on Citus"). A plain ``migrate`` elsewhere never calls it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import psycopg
from psycopg import sql

# Tables that grow with the runs: one shard group, keyed by the run, so a run's record, vectors, entity
# references, quarantine entries and clusters sit on one shard and every join between them is on run_id.
DISTRIBUTED = ("runs", "joint_embeddings", "run_entities", "embedding_quarantine", "run_clusters")
# Tables every node reads whole: the encoder state, settings, calibrations, clusterings, and the distinct
# branch records (branch_entities: a run's three entities are joined on their own id, not on run_id, so a
# distributed branch_entities would make every expansion of an entity to its runs a join across nodes).
REFERENCE = ("encoder_versions", "encoder_branches", "encoder_features", "encoder_matrices", "settings",
             "clusterings", "suggest_calibrations", "branch_entities")
# Shards per distributed table. A k-NN query walks one HNSW graph per shard and the coordinator merges them:
# Citus's default of 32 is 32 walks a query (16 per core here); 8 is 4 per worker of a 2-worker cluster,
# enough to spread over up to 8 workers later by moving shards (citus_rebalance_start) without splitting them.
SHARD_COUNT = 8
SCHEMA = "historical_db"


_DISTRIBUTED: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def distributed(conn: psycopg.Connection) -> bool:
    """Whether this database's runs are a Citus distributed table (asked once per connection)."""
    known = _DISTRIBUTED.get(conn)
    if known is None:
        known = bool(conn.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL").fetchone()[0]
                     and conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition "
                                      "WHERE logicalrelid = to_regclass('historical_db.runs'))").fetchone()[0])
        _DISTRIBUTED[conn] = known
    return known


def prepare_writer(conn: psycopg.Connection) -> None:
    """For a connection that writes, on Citus: its statements over several shards use one connection per worker,
    so that a transaction may write the reference table branch_entities after reading or writing the run
    tables (a new run's entities, an orphan's removal), which Citus refuses after a statement that ran over
    several connections to a worker. Set for the session (in a transaction, until it ends), before any such
    statement. Nothing on one server."""
    if distributed(conn):
        conn.execute("SET citus.multi_shard_modify_mode = 'sequential'")


def share_lock_runs(conn: psycopg.Connection, run_ids: Sequence[str]) -> None:
    """Hold these runs FOR SHARE until the transaction ends, in run_id order (as every writer locks them, so two
    never deadlock). Citus takes row locks only in a query on one shard: there, one query per shard."""
    ids = sorted(set(run_ids))
    if not distributed(conn):
        conn.execute("SELECT 1 FROM historical_db.runs r WHERE r.run_id = ANY (%s) ORDER BY r.run_id FOR SHARE",
                     (ids,))
        return
    groups = conn.execute(
        "SELECT array_agg(u.id ORDER BY u.id) FROM unnest(%s::text[]) AS u (id) "
        "GROUP BY get_shard_id_for_distribution_column('historical_db.runs', u.id) ORDER BY min(u.id)",
        (ids,)).fetchall()
    for (group,) in groups:
        conn.execute("SELECT 1 FROM historical_db.runs r WHERE r.run_id = ANY (%s) ORDER BY r.run_id FOR SHARE",
                     (group,))


def installed(conn: psycopg.Connection) -> bool:
    """Whether this database has the citus extension."""
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None


def layout(conn: psycopg.Connection) -> dict[str, tuple[str, int | None]]:
    """Each of metaspace's tables that Citus knows: its kind ('distributed' or 'reference') and shard count."""
    rows = conn.execute(
        "SELECT c.relname, CASE p.partmethod WHEN 'h' THEN 'distributed' WHEN 'n' THEN 'reference' ELSE "
        "p.partmethod::text END, (SELECT count(*) FROM pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid) "
        "FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
        "WHERE c.relnamespace = %s::regnamespace", (SCHEMA,)).fetchall()
    return {name: (kind, int(shards)) for name, kind, shards in rows}


def distribute(url: str, shard_count: int = SHARD_COUNT) -> list[str]:
    """Make metaspace's tables distributed and reference tables (those not yet so); return what was done.

    Citus refuses to distribute a table that has foreign keys to a table it does not manage yet, and adds
    tables linked by foreign keys to its metadata on its own (after which one with an identity column, such as
    ``joint_embeddings``, can no longer be distributed): so the keys among these tables are dropped, the tables
    distributed in one transaction, and the same keys created again. Two changes that revision 0016 left to a
    Citus user are made here: ``joint_embeddings``' primary key becomes ``(run_id, embedding_id)`` (Citus's
    keys must hold the distribution column), and its trigger that fills ``run_id`` is dropped (a row is routed
    by ``run_id`` before a trigger could run; every metaspace writer gives it). The encoder tables keep the
    triggers that refuse changes to a registered encoder (``citus.enable_unsafe_triggers``, for this step)."""
    with psycopg.connect(url, autocommit=True) as conn:
        done = layout(conn)
        todo = [name for name in REFERENCE + DISTRIBUTED if name not in done]
        if not todo:
            return []
        present = {name for (name,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'r'", (SCHEMA,))}
        missing = [name for name in todo if name not in present]
        if missing:
            raise psycopg.errors.UndefinedTable(f"{SCHEMA}.{missing[0]} is missing: run metaspace migrate first")
        with conn.transaction():
            conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
            conn.execute("SELECT set_config('citus.shard_count', %s, true)", (str(int(shard_count)),))
            conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
            keys = conn.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE contype = 'f' AND connamespace = %s::regnamespace ORDER BY conrelid::regclass::text, conname",
                (SCHEMA,)).fetchall()
            for table, name, _ in keys:
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.SQL(table), sql.Identifier(name)))  # (a regclass's own text, quoted as needed)
            if "joint_embeddings" in todo:
                primary = conn.execute(
                    "SELECT conname FROM pg_constraint WHERE conrelid = 'historical_db.joint_embeddings'::regclass "
                    "AND contype = 'p'").fetchone()
                if primary is not None:
                    conn.execute(sql.SQL("ALTER TABLE historical_db.joint_embeddings DROP CONSTRAINT {}").format(
                        sql.Identifier(primary[0])))
                conn.execute("ALTER TABLE historical_db.joint_embeddings ADD PRIMARY KEY (run_id, embedding_id)")
                conn.execute("DROP TRIGGER IF EXISTS joint_embeddings_fill_run_id ON historical_db.joint_embeddings")
            for name in todo:
                table = f"{SCHEMA}.{name}"
                if name in REFERENCE:
                    conn.execute("SELECT create_reference_table(%s)", (table,))
                elif name == "runs":
                    conn.execute("SELECT create_distributed_table(%s, 'run_id')", (table,))
                else:
                    conn.execute("SELECT create_distributed_table(%s, 'run_id', colocate_with => %s)",
                                 (table, f"{SCHEMA}.runs"))
            for table, name, definition in keys:
                conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.SQL(table), sql.Identifier(name), sql.SQL(definition)))
    reference = [name for name in todo if name in REFERENCE]
    distributed = [name for name in todo if name in DISTRIBUTED]
    lines = []
    if distributed:
        lines.append(f"Citus: distributed {', '.join(distributed)} by run_id over {shard_count} shards (co-located)")
    if reference:
        lines.append(f"Citus: made {', '.join(reference)} reference tables (a copy on every node)")
    return lines
