"""Suggestions calibrated on the replayed past: ``historical_db.suggest_calibrations`` and
``historical_db.suggest_configs_v5``.

Revision ID: 0015_suggest_calibration
Revises: 0014_asof_tail

A calibration says, for one objective, direction and encoder version, as of the date it was fitted on
(``fitted_until``: the decisions whose outcomes were known by then), how far the neighbourhood moves each
config's record (``local_scale``, 0 = the record alone, 1 = version 4) and how a raw confidence maps to the
observed frequency that a pick beat the random pick (``confidence_from`` to ``confidence_to``, monotone).
``metaspace evaluate --save-calibration`` writes them, one per date its replay refitted on; version 5
(``sql/suggest_v5.sql``) reads the latest fitted on or before an answer's as_of date, so an answer as of D
never depends on a decision realised after D. ``suggest_for_env_v4`` is the same on a JSON env.

Self-contained on purpose (written beside 0014, which another change adds; the chain is re-linked when
both are merged): it touches nothing 0014 does. The functions pin ``search_path`` FROM CURRENT, so it is
set first, as in 0005. Last, ``sql/roles_v3.sql``: the grants of ``roles_v2.sql`` again, plus the table's
own, explicitly (SELECT to ``metaspace_reader``; SELECT, INSERT and DELETE to ``metaspace_writer``, which
replaces a calibration by DELETE and INSERT). Explicitly, because the reader's SELECT would otherwise come
from the default privileges of whichever role ran 0008, which do not apply when another role runs this
revision, and because the README's answer to lost grants is to rerun the roles file.

Downgrading drops the functions, the type and the table (and with it the table's grants; the grants on
older objects stay, as 0008's do); it refuses while the table holds calibrations unless ``allow_data_loss``
is set (a replay can write them again, but they are what past answers were given with).
"""

from pathlib import Path

from alembic import context, op

revision = "0015_suggest_calibration"
down_revision = "0014_asof_tail"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "suggest_v5.sql": "c22b5153351edf479911af0dc1803a64c5f9be4ba0ddf27c7cb6d5c8774cfdae",
    "roles_v3.sql": "f7db8bdcff610cfa3f92e80b7139d79b5b1948e01ea3579862a2f86228dd65b4",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0015_{name}").read_text(encoding="utf-8")


CALIBRATIONS = """
CREATE TABLE historical_db.suggest_calibrations (
    objective        text NOT NULL,
    higher_is_better boolean NOT NULL,
    encoder_version  integer NOT NULL REFERENCES historical_db.encoder_versions (version) ON DELETE CASCADE,
    fitted_until     date NOT NULL,
    local_scale      double precision NOT NULL CHECK (local_scale >= 0 AND local_scale <= 1),
    confidence_from  double precision[] NOT NULL,
    confidence_to    double precision[] NOT NULL,
    decisions        integer NOT NULL CHECK (decisions >= 0),
    settings         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (objective, higher_is_better, encoder_version, fitted_until),
    CONSTRAINT suggest_calibrations_map CHECK (
        cardinality(confidence_from) = cardinality(confidence_to) AND cardinality(confidence_from) >= 1)
)
"""
COMMENT = ("COMMENT ON TABLE historical_db.suggest_calibrations IS 'suggest_configs_v5''s calibrations, one per "
           "objective, direction, encoder version and date fitted on (metaspace evaluate --save-calibration)'")


def upgrade() -> None:
    op.execute(CALIBRATIONS)
    op.execute(COMMENT)
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("suggest_v5.sql"))
    op.execute(_frozen("roles_v3.sql"))


def downgrade() -> None:
    if not (context.is_offline_mode() or context.config.attributes.get("allow_data_loss")):
        stored = op.get_bind().exec_driver_sql("SELECT count(*) FROM historical_db.suggest_calibrations").scalar()
        if stored:
            raise RuntimeError(f"historical_db.suggest_calibrations holds {stored} calibrations that this downgrade "
                               "would drop; pass --allow-data-loss to metaspace migrate to drop them")
    op.execute("DROP FUNCTION historical_db.suggest_for_env_v4(jsonb, integer, date, text, boolean, integer, integer, "
               "text[], boolean, integer, integer)")
    op.execute("DROP FUNCTION historical_db.suggest_configs_v5(vector, integer, date, text, boolean, integer, "
               "integer, text[], boolean, text[], integer, integer, integer, double precision, boolean)")
    op.execute("DROP FUNCTION historical_db.calibrated_confidence_v1(double precision, double precision[], "
               "double precision[])")
    op.execute("DROP TYPE historical_db.config_suggestion_v5")
    op.execute("DROP TABLE historical_db.suggest_calibrations")
