"""Roles that do what the README says: version 2 of the grants.

Revision ID: 0008_roles_v2
Revises: 0007_store_run_function

``sql/roles_v1.sql`` (0005) ran before the clusters tables existed (0006) and never granted the
schema-version table that every command reads first, so a login role granted ``metaspace_writer`` could
not import and one granted ``metaspace_reader`` could not read clusters. ``sql/roles_v2.sql`` grants on
every table, the schema-version table, ANALYZE rights (MAINTAIN, PostgreSQL 17+), and default privileges
for tables that later revisions create; the online write function stays the writer's alone.

Downgrading leaves the grants: they are harmless to 0007's code, and roles belong to the whole server.
"""

from pathlib import Path

from alembic import op

revision = "0008_roles_v2"
down_revision = "0007_store_run_function"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "roles_v2.sql": "e1cbb5dabe9bd93c89d98649770425e29e7d97041fd823fdfd457349a028b8dd",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0008_{name}").read_text(encoding="utf-8")


def upgrade() -> None:
    op.execute(_frozen("roles_v2.sql"))


def downgrade() -> None:
    pass
