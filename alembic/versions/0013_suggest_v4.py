"""Suggestions centred on each config's own record: ``historical_db.suggest_configs_v4``.

Revision ID: 0013_suggest_v4
Revises: 0012_index_settings

Installs ``sql/suggest_v4.sql`` beside versions 1 to 3 (kept for old clients): each config's local edge is
shrunk toward its record over the history known at the date instead of toward the candidates' mean,
evidence is counted in blocks of one outcome window, and how far local departures come through is
estimated from the data at the date. ``suggest_for_env_v3`` is the same on a JSON env encoded inside the
database. Measured in docs/suggestions.md.

The function pins ``search_path`` FROM CURRENT, so it is set first, as in 0005. Like every function, it is
executable by PUBLIC, so the roles of 0008 can call it.
An index on ``runs ((coalesce(config_id, run_id)), as_of_date)`` finds the candidates' runs (built
CONCURRENTLY under ``metaspace migrate --concurrently``, as in 0004, so writers are not blocked). Downgrading
drops the functions, the type and the index; no data lives in them.
"""

from pathlib import Path

from alembic import context, op

revision = "0013_suggest_v4"
down_revision = "0012_index_settings"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "suggest_v4.sql": "43daf69b93ee88558006adb6cf87970cf131024e5253c781631c45e68970e68e",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0013_{name}").read_text(encoding="utf-8")


# The records read each candidate's latest runs known at a date.
RUNS_BY_CONFIG = ("CREATE INDEX runs_config_as_of ON historical_db.runs "
                  "((coalesce(config_id, run_id)), as_of_date)")


def upgrade() -> None:
    if context.config.attributes.get("concurrently"):  # metaspace migrate --concurrently: writers go on
        with context.get_context().autocommit_block():
            op.execute(RUNS_BY_CONFIG.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
    else:
        op.execute(RUNS_BY_CONFIG)
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("suggest_v4.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION historical_db.suggest_for_env_v3(jsonb, integer, date, text, boolean, integer, integer, "
               "text[], boolean, integer, integer)")
    op.execute("DROP FUNCTION historical_db.suggest_configs_v4(vector, integer, date, text, boolean, integer, "
               "integer, text[], boolean, text[], integer, integer, integer)")
    op.execute("DROP TYPE historical_db.config_suggestion_v4")
    op.execute("DROP INDEX historical_db.runs_config_as_of")
