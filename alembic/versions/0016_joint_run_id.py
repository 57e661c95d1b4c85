"""``joint_embeddings.run_id``: each vector's run as a real column, the distribution column of a Citus cluster.

Revision ID: 0016_joint_run_id
Revises: 0015_suggest_calibration

Citus places every row by a column of its own and enforces uniqueness only where the key includes that
column (docs/scaling.md, "What changed first"). The run of a joint vector was the expression
``entity_scope ->> 'run_id'``; it becomes the column ``run_id text NOT NULL``:

- filled from the scope; a row of another joint type whose scope names no run gets ``'legacy:' ||
  embedding_id``, a value of its own, so that such rows spread over the shards as runs do;
- ``CHECK joint_embeddings_run_id_matches``: where the scope has a run_id, the column equals it;
- ``joint_embeddings_one_per_run`` (same name, same rule, one vector per joint type, model, run and encoder
  version) is now on the column instead of the expression;
- a trigger fills the column for a writer that does not give it (other teams' programs, clients of the
  previous release), so their inserts keep working on one server. On Citus such a writer must give it:
  the coordinator routes a row by the column before any trigger could run on a shard.

The writers give it themselves: ``sql/store_run_v3.sql`` (the online path), ``sql/embed_pending_v2.sql``
(embedding inside the database) and ``metaspace/store/vectors.write_vectors`` (the bulk COPY path). The
ON CONFLICT target of store_run_v1, store_run_v2 and embed_pending_v1 named the old expression, so they
now hand over to the new versions (``sql/writers_handover_v1.sql``); their callers see no change.

The primary key stays ``embedding_id``: see docs/scaling.md for why, and what a Citus user runs instead.

Cost on a large table (measured: docs/scaling.md, "Cost, measured"). Plain ``metaspace migrate`` writes the
column by rewriting the table once (``ALTER COLUMN ... TYPE text USING``: one pass, no dead rows, every
index rebuilt in bulk, the table locked meanwhile). ``metaspace migrate --concurrently`` keeps readers and
writers going: the joint HNSW graphs are dropped (searches answer by exact scan meanwhile), the column is
filled in batches of 10,000 rows, each its own transaction, the graphs are built again CONCURRENTLY, the
constraints are added NOT VALID and validated without blocking writes, and the new unique index is built
CONCURRENTLY before the old one is dropped. Its filled rows leave dead row versions for VACUUM.

Downgrading drops the column, the trigger and the new functions and gives back the expression index and the
released store_run_v1, store_run_v2 and embed_pending_v1; no row is lost. It refuses, unless
``allow_data_loss`` is set, while a row whose scope names no run holds a run_id other than the one this
revision would give it (a writer chose it, and the downgrade would forget it).
"""

import logging
from pathlib import Path

from alembic import context, op

revision = "0016_joint_run_id"
down_revision = "0015_suggest_calibration"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "store_run_v3.sql": "d6fd354cf83cdd7993cec69fb05d7102a1895f0e67ec36179e0e5cb6de61b1b8",
    "embed_pending_v2.sql": "f1055410d81bd88faa8e38c9d9ce2154544f8ff45d032623fec80c941b8db23e",
    "writers_handover_v1.sql": "094d1a432c890e2eedfd89210b0de0207bc41bd7f823dc7f4681de9bdeecfb15",
}

FROZEN = Path(__file__).parent / "frozen"
TABLE = "historical_db.joint_embeddings"
BATCH = 10_000
# A row's run: its scope's, else one of its own.
RUN_OF_ROW = "coalesce(entity_scope ->> 'run_id', 'legacy:' || embedding_id)"
MATCHES = "CHECK (run_id = coalesce(entity_scope ->> 'run_id', run_id))"
ONE_PER_RUN = ("CREATE UNIQUE INDEX {name} ON historical_db.joint_embeddings "
               "(joint_type, model_id, run_id, encoder_version) WHERE encoder_version IS NOT NULL")
# The released search functions (neighbours_v1 to v3, search_record_v1/v2) find a run's joint vector by its
# scope's run_id; the unique index on that expression was their way in, and without it each lookup read every
# row of the version (74 ms at 200,000 rows, growing with the table). A plain index on the expression keeps
# them fast (a Citus user may drop it with the functions that need it: docs/scaling.md).
SCOPE_RUN = ("CREATE INDEX IF NOT EXISTS joint_embeddings_scope_run_id ON historical_db.joint_embeddings "
             "((entity_scope ->> 'run_id'))")
ONE_PER_RUN_BEFORE = ("CREATE UNIQUE INDEX joint_embeddings_one_per_run ON historical_db.joint_embeddings "
                      "(joint_type, model_id, (entity_scope ->> 'run_id'), encoder_version) "
                      "WHERE encoder_version IS NOT NULL")
FILL = [
    """
    CREATE OR REPLACE FUNCTION historical_db.joint_embeddings_fill_run_id() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
    BEGIN
        NEW.run_id := coalesce(NEW.entity_scope ->> 'run_id', 'legacy:' || NEW.embedding_id);
        RETURN NEW;
    END
    $fn$
    """,
    """
    CREATE TRIGGER joint_embeddings_fill_run_id BEFORE INSERT ON historical_db.joint_embeddings
    FOR EACH ROW WHEN (NEW.run_id IS NULL) EXECUTE FUNCTION historical_db.joint_embeddings_fill_run_id()
    """,
    # The roles of sql/roles_v3.sql may execute every function of the schema; this one is no exception.
    """
    DO $grant$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_reader') THEN
            GRANT EXECUTE ON FUNCTION historical_db.joint_embeddings_fill_run_id() TO metaspace_reader;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
            GRANT EXECUTE ON FUNCTION historical_db.joint_embeddings_fill_run_id() TO metaspace_writer;
        END IF;
    END
    $grant$
    """,
]
# The functions sql/writers_handover_v1.sql replaces, and the revisions that released them.
HANDED_OVER = {
    "historical_db.store_run_v1(jsonb, text, integer, text, vector, vector, vector, vector, bytea)":
        "0007_store_run_v1.sql",
    "historical_db.store_run_v2(jsonb, text, integer, text, vector, vector, vector, vector, bytea)":
        "0009_store_run_v2.sql",
    "historical_db.embed_pending_v1(integer)": "0011_embed_pending_v1.sql",
}

log = logging.getLogger("metaspace.migrations")


def _frozen(name: str) -> str:
    return (FROZEN / f"0016_{name}").read_text(encoding="utf-8")


def _graphs() -> dict[str, str]:
    """The table's HNSW indexes and their definitions."""
    return dict(op.get_bind().exec_driver_sql(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "  # noqa: S608
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
        f"WHERE i.indrelid = '{TABLE}'::regclass AND a.amname = 'hnsw'").all())


def _fill_in_batches() -> int:
    """Fill run_id in batches of BATCH rows along embedding_id, each batch its own transaction."""
    bind = op.get_bind()
    last, filled = -(2**63), 0
    while True:
        batch = bind.exec_driver_sql(
            f"""
            WITH batch AS (SELECT embedding_id AS id FROM {TABLE}
                           WHERE embedding_id > %(last)s ORDER BY embedding_id LIMIT {BATCH}),
                 filled AS (UPDATE {TABLE} SET run_id = {RUN_OF_ROW}
                            FROM batch WHERE embedding_id = batch.id AND run_id IS NULL RETURNING 1)
            SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM filled)
            """,  # noqa: S608 (constants only)
            {"last": last},
        ).one()
        if batch[0] is None:
            return filled
        last, filled = batch[0], filled + batch[1]


def upgrade() -> None:
    # Every step may find itself done: an interrupted --concurrently run leaves the steps it committed.
    op.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS run_id text")
    op.execute(f"DROP TRIGGER IF EXISTS joint_embeddings_fill_run_id ON {TABLE}")
    op.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS joint_embeddings_run_id_matches, "
               "DROP CONSTRAINT IF EXISTS joint_embeddings_run_id_present")
    op.execute("DROP INDEX IF EXISTS historical_db.joint_embeddings_one_per_run_0016")
    if context.config.attributes.get("concurrently") and not context.is_offline_mode():
        for statement in FILL:  # rows written from now on are filled as they come
            op.execute(statement)
        with context.get_context().autocommit_block():  # metaspace migrate --concurrently: writers go on
            # Every filled row is a new row version, which each HNSW graph would take in one insert at a time
            # (measured: 9x the time of building the graph afresh, and the graph twice its size). So the
            # graphs go while the rows are filled and are built again after, CONCURRENTLY; searches answer
            # by exact scan meanwhile. (Stopped between the two, embed-runs builds the missing graphs.)
            unfilled = op.get_bind().exec_driver_sql(
                f"SELECT EXISTS (SELECT FROM {TABLE} WHERE run_id IS NULL)").scalar()  # noqa: S608
            graphs = _graphs() if unfilled else {}  # (an empty table keeps its graphs)
            for name in graphs:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            log.info("filled run_id of %d rows of %s", _fill_in_batches(), TABLE)
            for definition in graphs.values():
                op.execute(definition.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
            op.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT joint_embeddings_run_id_matches {MATCHES} NOT VALID, "
                       "ADD CONSTRAINT joint_embeddings_run_id_present CHECK (run_id IS NOT NULL) NOT VALID")
            op.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT joint_embeddings_run_id_matches")
            op.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT joint_embeddings_run_id_present")
            # The validated CHECK proves the column has no NULL: SET NOT NULL then skips its scan.
            op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN run_id SET NOT NULL")
            op.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT joint_embeddings_run_id_present")
            op.execute(ONE_PER_RUN.replace("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX CONCURRENTLY", 1)
                       .format(name="joint_embeddings_one_per_run_0016"))
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS historical_db.joint_embeddings_scope_run_id")  # if invalid
            op.execute(SCOPE_RUN.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
        op.execute("DROP INDEX historical_db.joint_embeddings_one_per_run")
        op.execute("ALTER INDEX historical_db.joint_embeddings_one_per_run_0016 RENAME TO joint_embeddings_one_per_run")
    else:
        op.execute("DROP INDEX historical_db.joint_embeddings_one_per_run")
        # A type change whose USING reads another column rewrites the table once, which is cheaper than an
        # UPDATE of every row (no dead rows, no HNSW insert per row: the graphs are rebuilt in bulk). Rows an
        # interrupted --concurrently run filled keep their value.
        op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN run_id TYPE text USING coalesce(run_id, {RUN_OF_ROW}), "
                   f"ALTER COLUMN run_id SET NOT NULL, ADD CONSTRAINT joint_embeddings_run_id_matches {MATCHES}")
        for statement in FILL:  # (after the rewrite: a column a trigger names cannot change type)
            op.execute(statement)
        op.execute(ONE_PER_RUN.format(name="joint_embeddings_one_per_run"))
        op.execute(SCOPE_RUN)
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("store_run_v3.sql"))
    op.execute(_frozen("embed_pending_v2.sql"))
    op.execute(_frozen("writers_handover_v1.sql"))


def downgrade() -> None:
    if not context.is_offline_mode():
        chosen = op.get_bind().exec_driver_sql(
            f"SELECT count(*) FROM {TABLE} WHERE NOT entity_scope ? 'run_id' "  # noqa: S608 (constants only)
            "AND run_id <> 'legacy:' || embedding_id").scalar()
        if chosen and not context.config.attributes.get("allow_data_loss"):
            raise RuntimeError(f"{chosen} row(s) of {TABLE} whose scope names no run were given a run_id by their "
                               "writer, which this downgrade would forget; pass --allow-data-loss to metaspace "
                               "migrate")
    op.execute("DROP FUNCTION historical_db.embed_pending_v2(integer)")
    op.execute("DROP FUNCTION historical_db.store_run_v3(jsonb, text, integer, text, vector, vector, vector, vector, "
               "bytea)")
    op.execute("DROP INDEX historical_db.joint_embeddings_one_per_run")
    op.execute("DROP INDEX IF EXISTS historical_db.joint_embeddings_scope_run_id")
    op.execute(ONE_PER_RUN_BEFORE)
    op.execute(f"DROP TRIGGER IF EXISTS joint_embeddings_fill_run_id ON {TABLE}")  # a Citus user drops it
    op.execute("DROP FUNCTION historical_db.joint_embeddings_fill_run_id()")
    op.execute(f"ALTER TABLE {TABLE} DROP COLUMN run_id")
    op.execute(_frozen("pin_search_path_v1.sql"))
    for released in HANDED_OVER.values():  # replaced, not dropped: EXECUTE granted on them by hand stays
        op.execute((FROZEN / released).read_text(encoding="utf-8").replace(
            "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
