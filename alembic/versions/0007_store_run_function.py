"""The online path in one round trip: ``historical_db.store_run_v1``.

Revision ID: 0007_store_run_function
Revises: 0006_clusters

``metaspace.embed_run(record)`` encodes the run in Python and hands the record and its four vectors to
this function, which upserts the run and inserts the vectors in one statement (sql/store_run_v1.sql).
Only ``metaspace_writer`` (and the owner) may execute it. Downgrading drops it; no data lives in it.
"""

from pathlib import Path

from alembic import op

revision = "0007_store_run_function"
down_revision = "0006_clusters"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "store_run_v1.sql": "6700e802936c906a81cb784ea01afc011191706d57cf560757d45b2a2156c952",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0007_{name}").read_text(encoding="utf-8")


def upgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("store_run_v1.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION historical_db.store_run_v1(jsonb, text, integer, text, vector, vector, vector, vector, bytea)")
