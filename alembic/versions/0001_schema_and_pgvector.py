"""The historical_db schema and the pgvector extension (0.8 or newer).

Revision ID: 0001_schema_and_pgvector
Revises:
"""

from pathlib import Path

from alembic import op

revision = "0001_schema_and_pgvector"
down_revision = None
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "require_pgvector_v1.sql": "456c305bc6f94956e0dd104e025823a29a65373cd1c153c15351256f7ff0e2ba",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0001_{name}").read_text(encoding="utf-8")


def upgrade() -> None:
    op.execute(_frozen("require_pgvector_v1.sql"))
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
