"""HNSW indexes on every stored vector, and the B-tree indexes the search filters need.

Revision ID: 0004_search_indexes
Revises: 0003_runs_and_encoder_registry

On a large live table, run ``metaspace migrate --concurrently``: the indexes are then built with
CREATE INDEX CONCURRENTLY, each outside a transaction, so writers are not blocked while they build.
"""

from alembic import context, op

from metaspace.store.sqlfiles import statements

revision = "0004_search_indexes"
down_revision = "0003_runs_and_encoder_registry"
branch_labels = None
depends_on = None

FILTER_INDEXES = [
    "CREATE INDEX IF NOT EXISTS joint_embeddings_type_date ON historical_db.joint_embeddings (joint_type, as_of_date)",
]
INDEX_NAMES = [
    "joint_embeddings_vector_hnsw",
    "branch_embeddings_config_hnsw",
    "branch_embeddings_env_hnsw",
    "branch_embeddings_outcome_hnsw",
    "joint_embeddings_type_date",
]


def upgrade() -> None:
    ddl = statements("vector_indexes_v1.sql") + FILTER_INDEXES
    if context.config.attributes.get("concurrently"):
        with context.get_context().autocommit_block():
            for statement in ddl:
                op.execute(statement.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
    else:
        for statement in ddl:
            op.execute(statement)


def downgrade() -> None:
    for name in INDEX_NAMES:
        op.execute(f"DROP INDEX IF EXISTS historical_db.{name}")
