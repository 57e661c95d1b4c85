"""Suggestions that earn their place: ``historical_db.suggest_configs_v2``.

Revision ID: 0010_suggest_v2
Revises: 0009_point_in_time

Installs ``sql/suggest_v2.sql`` beside ``suggest_configs_v1`` (kept for old clients): evidence counted in
distinct neighbouring environments, each config judged relative to the others run in the same environment,
a confidence that is the probability of beating a random pick among the configs compared, and an
``eligible_configs`` argument (the replay of ``metaspace evaluate``). Measured in docs/suggestions.md.

The function pins ``search_path`` FROM CURRENT, so it is set first, as in 0005. Like every function, it is
executable by PUBLIC, so the roles of 0008 can call it.
Downgrading drops the function and its type; no data lives in them.
"""

from pathlib import Path

from alembic import op

revision = "0010_suggest_v2"
down_revision = "0009_point_in_time"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "suggest_v2.sql": "3b413b890ff58d4605933a8dfed7b9cb68913a21f336c153cb77aa0e85bd2dc7",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0010_{name}").read_text(encoding="utf-8")


def upgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("suggest_v2.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION historical_db.suggest_configs_v2(vector, integer, date, text, boolean, integer, "
               "integer, text[], boolean, text[], integer)")
    op.execute("DROP TYPE historical_db.config_suggestion_v2")
