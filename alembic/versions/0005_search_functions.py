"""Search inside the database: version 1 of the search functions, and the reader and writer roles.

Revision ID: 0005_search_functions
Revises: 0004_search_indexes

Installs ``sql/search_v1.sql``: ``historical_db.search_runs_v1`` (k nearest runs to a vector in a space,
as of a date, with filters), ``historical_db.neighbours_v1`` (of a stored run),
``historical_db.suggest_configs_v1`` (configs for a target environment, with a deflated measure), the
view ``historical_db.run_vectors_v1`` and their helpers; then ``sql/roles_v1.sql``: NOLOGIN roles
``metaspace_reader`` and ``metaspace_writer`` with their grants.

Each function pins ``search_path`` FROM CURRENT, so it is set here first to pg_catalog, the schema
the vector extension lives in (public, or wherever the server's administrator put it), and pg_temp.

Downgrading drops the functions, view and types (no data lives in them) and revokes the roles' grants
in this database; the roles themselves stay, since roles belong to the whole server and other
databases may use them.
"""

from pathlib import Path

from alembic import op

revision = "0005_search_functions"
down_revision = "0004_search_indexes"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "search_v1.sql": "9397266b3172b06f8e1c8061e97522bfae6842f7530c2b2a8a9c0be48debc297",
    "roles_v1.sql": "15b0cf2d287c50e7bae8cf0c4a3db8d9a1196020daa0784e3e648f7ef8a348af",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0005_{name}").read_text(encoding="utf-8")

DROP = [
    "DROP FUNCTION historical_db.suggest_configs_v1(vector, integer, date, text, boolean, integer, integer, text[], boolean)",
    "DROP FUNCTION historical_db.expected_max_normal_v1(integer)",
    "DROP FUNCTION historical_db.normal_quantile_v1(double precision)",
    "DROP FUNCTION historical_db.normal_cdf_v1(double precision)",
    "DROP FUNCTION historical_db.neighbours_v1(text, integer, text, date, text[], text[], jsonb, boolean)",
    "DROP FUNCTION historical_db.search_runs_v1(vector, integer, text, date, text[], text[], jsonb, boolean)",
    "DROP FUNCTION historical_db.nearest_runs_v1(vector, integer, text, integer, date, text[], text[], jsonb, boolean)",
    "DROP FUNCTION historical_db.check_search_args_v1(vector, integer, text, integer)",
    "DROP FUNCTION historical_db.active_encoder_version_v1()",
    "DROP VIEW historical_db.run_vectors_v1",
    "DROP TYPE historical_db.config_suggestion_v1",
    "DROP TYPE historical_db.run_match_v1",
    "DROP INDEX IF EXISTS historical_db.joint_embeddings_version_date",
]

REVOKE = """
DO $revoke$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['metaspace_writer', 'metaspace_reader'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA historical_db FROM ' || quote_ident(name);
            EXECUTE 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA historical_db FROM ' || quote_ident(name);
            EXECUTE 'REVOKE ALL ON ALL FUNCTIONS IN SCHEMA historical_db FROM ' || quote_ident(name);
            EXECUTE 'REVOKE ALL ON SCHEMA historical_db FROM ' || quote_ident(name);
        END IF;
    END LOOP;
END
$revoke$
"""


# Counting the runs known as of a date (the path rule of nearest_runs_v1) reads only this index. It also
# serves every lookup by encoder version, so 0003's single-column index goes: one index less to maintain
# on every load.
VERSION_DATE_INDEX = (
    "CREATE INDEX IF NOT EXISTS joint_embeddings_version_date ON historical_db.joint_embeddings "
    "(encoder_version, as_of_date) WHERE encoder_version IS NOT NULL"
)
VERSION_INDEX = (
    "CREATE INDEX IF NOT EXISTS joint_embeddings_encoder_version ON historical_db.joint_embeddings (encoder_version)"
)


def upgrade() -> None:
    op.execute(VERSION_DATE_INDEX)
    op.execute("DROP INDEX IF EXISTS historical_db.joint_embeddings_encoder_version")
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("search_v1.sql"))
    op.execute(_frozen("roles_v1.sql"))


def downgrade() -> None:
    op.execute(VERSION_INDEX)
    op.execute(REVOKE)
    for statement in DROP:
        op.execute(statement)
