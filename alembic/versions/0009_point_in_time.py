"""Point in time: what an encoder version was fitted on, and queries that carry their encoder version.

Revision ID: 0009_point_in_time
Revises: 0008_roles_v2

- ``encoder_versions.fit_until``: the cap given to ``embed-runs --fit-until`` (NULL: every run known then),
  and ``fitted_through``: the latest as_of_date among the runs the version was fitted on. An answer as of
  an earlier date says that the encoder saw later runs. Both are immutable like the rest of a version.
- ``sql/search_v2.sql``: ``search_runs_v2`` and ``neighbours_v2`` take the encoder version the query was
  encoded with and refuse it once another version is active, so a batch of queries never compares points
  of two spaces across a rebuild's switch.
- ``sql/store_run_v2.sql``: the online write holds a share lock on its version's row, so an activation
  waits for it (and then deletes its old-version rows) or it sees the switch and refuses.

The _v1 functions stay for clients of the previous release. Downgrading drops the _v2 functions and the
two columns; it refuses while a version records a fit_until unless ``allow_data_loss`` is set.
"""

import logging
from pathlib import Path

from alembic import context, op

revision = "0009_point_in_time"
down_revision = "0008_roles_v2"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "search_v2.sql": "0da4ad7ccbe74bf53fbc412c2ce1dcac87bb7679e30e72156818c6fb5a60e8dc",
    "store_run_v2.sql": "f3e2bef5dfc71f7e6410bf4ae5b50f6ad37675be6057f5effcf814614bc2ad9c",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0009_{name}").read_text(encoding="utf-8")


IMMUTABLE = """
CREATE OR REPLACE FUNCTION historical_db.encoder_versions_immutable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
BEGIN
    IF NEW.version <> OLD.version OR NEW.model_id <> OLD.model_id OR NEW.state <> OLD.state
       OR NEW.fingerprint <> OLD.fingerprint OR NEW.fitted_on_runs <> OLD.fitted_on_runs
       OR NEW.created_at <> OLD.created_at{extra} THEN
        RAISE EXCEPTION USING MESSAGE = 'encoder version ' || OLD.version
            || ' is registered and immutable; fit a new version instead';
    END IF;
    RETURN NEW;
END
$fn$
"""
FIT_COLUMNS = (" OR NEW.fit_until IS DISTINCT FROM OLD.fit_until"
               " OR NEW.fitted_through IS DISTINCT FROM OLD.fitted_through")


def upgrade() -> None:
    op.execute("ALTER TABLE historical_db.encoder_versions ADD COLUMN fit_until date, ADD COLUMN fitted_through date")
    op.execute(IMMUTABLE.replace("{extra}", FIT_COLUMNS))
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("search_v2.sql"))
    op.execute(_frozen("store_run_v2.sql"))


def downgrade() -> None:
    if not context.is_offline_mode():
        bind = op.get_bind()
        capped = bind.exec_driver_sql(
            "SELECT count(*) FROM historical_db.encoder_versions WHERE fit_until IS NOT NULL").scalar()
        if capped and not context.config.attributes.get("allow_data_loss"):
            raise RuntimeError(f"{capped} encoder version(s) were fitted with --fit-until, which this downgrade "
                               "would forget; pass --allow-data-loss to metaspace migrate")
        recorded = bind.exec_driver_sql(
            "SELECT count(*) FROM historical_db.encoder_versions WHERE fitted_through IS NOT NULL").scalar()
        if recorded:
            logging.getLogger("metaspace.migrations").warning(
                "%s encoder version(s) forget the latest date of the runs they were fitted on: after upgrading "
                "again, answers as of a date say that date is unknown", recorded)
    op.execute("DROP FUNCTION historical_db.store_run_v2(jsonb, text, integer, text, vector, vector, vector, vector, "
               "bytea)")
    op.execute("DROP FUNCTION historical_db.neighbours_v2(text, integer, text, date, text[], text[], jsonb, boolean, "
               "integer)")
    op.execute("DROP FUNCTION historical_db.search_runs_v2(vector, integer, text, date, text[], text[], jsonb, "
               "boolean, integer)")
    op.execute("DROP FUNCTION historical_db.query_version_v2(integer)")
    op.execute(IMMUTABLE.replace("{extra}", ""))
    op.execute("ALTER TABLE historical_db.encoder_versions DROP COLUMN fitted_through, DROP COLUMN fit_until")
