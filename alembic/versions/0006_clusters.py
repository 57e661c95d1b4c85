"""Behaviour clusters: k-means labels of the stored vectors, kept with what produced them.

Revision ID: 0006_clusters
Revises: 0005_search_functions

- ``historical_db.clusterings``: one row per ``metaspace cluster`` run: the space, the encoder version
  whose vectors were clustered, k, how k was chosen, the parameters, and quality figures.
- ``historical_db.run_clusters``: each run's label (and distance to its centre) in a clustering.

Labels belong to an encoder version: a rebuild makes new vectors, so old clusterings stay readable
(for comparison) and the version they were made with is always known. Deleting an encoder version
deletes its clusterings (ON DELETE CASCADE); deleting a run deletes its labels.

Downgrading drops both tables; it refuses while they hold rows unless ``allow_data_loss`` is set.
"""

from alembic import context, op

revision = "0006_clusters"
down_revision = "0005_search_functions"
branch_labels = None
depends_on = None


def refuse_data_loss(tables: tuple[str, ...]) -> None:
    """Stop before dropping tables that hold rows, unless the user said --allow-data-loss. (Offline --sql
    output cannot look, so it prints the drop for a DBA to read.)"""
    if context.is_offline_mode() or context.config.attributes.get("allow_data_loss"):
        return
    for table in tables:
        rows = op.get_bind().exec_driver_sql(f"SELECT count(*) FROM historical_db.{table}").scalar()  # noqa: S608
        if rows:
            raise RuntimeError(f"historical_db.{table} holds {rows} rows that this downgrade would drop; export "
                               "them first, or pass --allow-data-loss to metaspace migrate")

UPGRADE = [
    """
    CREATE TABLE historical_db.clusterings (
        clustering_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        space           text NOT NULL CHECK (space IN ('joint', 'config', 'env', 'outcome')),
        encoder_version integer NOT NULL REFERENCES historical_db.encoder_versions (version) ON DELETE CASCADE,
        k               integer NOT NULL CHECK (k >= 1),
        method          text NOT NULL CHECK (method <> ''),
        params          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
        quality         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(quality) = 'object'),
        runs            bigint NOT NULL CHECK (runs >= 0),
        created_at      timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX clusterings_space_version ON historical_db.clusterings (space, encoder_version, created_at)",
    """
    CREATE TABLE historical_db.run_clusters (
        clustering_id bigint NOT NULL REFERENCES historical_db.clusterings (clustering_id) ON DELETE CASCADE,
        run_id        text NOT NULL REFERENCES historical_db.runs (run_id) ON DELETE CASCADE,
        label         integer NOT NULL CHECK (label >= 0),
        distance      double precision NOT NULL CHECK (distance >= 0),
        PRIMARY KEY (clustering_id, run_id)
    )
    """,
    "CREATE INDEX run_clusters_label ON historical_db.run_clusters (clustering_id, label)",
    # New tables get the roles' grants too (0005 granted on the tables that existed then).
    """
    DO $grants$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_reader') THEN
            GRANT SELECT ON historical_db.clusterings, historical_db.run_clusters TO metaspace_reader;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
            GRANT SELECT, INSERT, DELETE ON historical_db.clusterings, historical_db.run_clusters TO metaspace_writer;
        END IF;
    END
    $grants$
    """,
]

TABLES = ("run_clusters", "clusterings")


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    refuse_data_loss(TABLES)
    for table in TABLES:
        op.execute(f"DROP TABLE historical_db.{table}")
