"""The online path in one round trip: ``historical_db.store_run_v1``.

Revision ID: 0007_store_run_function
Revises: 0006_clusters

``metaspace.embed_run(record)`` encodes the run in Python and hands the record and its four vectors to
this function, which upserts the run and inserts the vectors in one statement (sql/store_run_v1.sql).
Only ``metaspace_writer`` (and the owner) may execute it. Downgrading drops it; no data lives in it.
"""

from alembic import op

from metaspace.store.sqlfiles import read_sql

revision = "0007_store_run_function"
down_revision = "0006_clusters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(read_sql("pin_search_path_v1.sql"))
    op.execute(read_sql("store_run_v1.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION historical_db.store_run_v1(jsonb, text, integer, text, vector, vector, vector, vector, bytea)")
