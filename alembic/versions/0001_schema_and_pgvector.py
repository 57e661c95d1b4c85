"""The historical_db schema and the pgvector extension (0.8 or newer).

Revision ID: 0001_schema_and_pgvector
Revises:
"""

from alembic import op

from metaspace.store.sqlfiles import read_sql

revision = "0001_schema_and_pgvector"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(read_sql("require_pgvector_v1.sql"))
    op.execute("CREATE SCHEMA IF NOT EXISTS historical_db")


def downgrade() -> None:
    # The schema may have held the user's tables before metaspace came: drop it only when empty.
    # The vector extension stays: other schemas may use it.
    op.execute(
        """
        DO $drop_schema$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = 'historical_db')
               AND NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                               WHERE n.nspname = 'historical_db') THEN
                DROP SCHEMA IF EXISTS historical_db;
            END IF;
        END
        $drop_schema$
        """
    )
