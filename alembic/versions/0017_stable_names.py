"""Stable SQL names over the current versions, suggest_configs_v6 in shared parts, and a SQL encoder that
refuses a transform it does not know.

Revision ID: 0017_stable_names
Revises: 0016_joint_run_id

- ``sql/suggest_v6.sql``: version 5's ranking cut into parts later versions share (the argument checks, the
  evidence, the ranking at one or several local scales, the calibration read), ``suggest_configs_v6`` and
  ``suggest_for_env_v5`` over them. Same arguments and columns as version 5 (``config_suggestion_v5``);
  new: an objective no run reports is an error (22023) and an empty answer says why (a NOTICE).
- ``sql/encoder_transform_v1.sql``: ``encoder_features_v1``'s body replaced in place, its transforms in one
  function that raises on one it does not know (before, the identity, silently). No vector changes.
- ``sql/stable_v1.sql``: ``historical_db.encode``, ``search_runs``, ``neighbours``, ``search_record``,
  ``suggest_configs``, ``suggest_for_env``, ``store_run`` and ``embed_pending``, each a wrapper over the
  current version. metaspace calls these names.
- ``sql/roles_v4.sql``: the grants again; the stable writers are the writer's alone, as their versions are.

Nothing is stored, no table changes: downgrading drops what this installs and restores
``encoder_features_v1``'s body of revision 0011.
"""

import re
from pathlib import Path

from alembic import op

revision = "0017_stable_names"
down_revision = "0016_joint_run_id"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "suggest_v6.sql": "1bb05fb525fdb92488305f0548fb5f9f17e0c98ad93b758a2f3df4019de19203",
    "encoder_transform_v1.sql": "193d9fbe9be18345bcc8dfaaca7dfd6b9f91672ca6a5f12c496fd0b90c226abf",
    "stable_v1.sql": "9918ae31334f73ccbada818b883f3107c2bd3e893a615040296583e60cb45f83",
    "roles_v4.sql": "6863150f6e17c8294d38b5d1a6796804060d90efd0c231f94bdb823d32b3aa2a",
}

FROZEN = Path(__file__).parent / "frozen"

# What this revision creates, in the order a downgrade drops it.
DROPPED = [
    "FUNCTION historical_db.embed_pending(integer)",
    "FUNCTION historical_db.store_run(jsonb, text, integer, text, vector, vector, vector, vector, bytea)",
    "FUNCTION historical_db.suggest_for_env(jsonb, integer, date, text, boolean, integer, integer, text[], boolean, "
    "integer, integer)",
    "FUNCTION historical_db.suggest_configs(vector, integer, date, text, boolean, integer, integer, text[], boolean, "
    "text[], integer, integer, integer, double precision, boolean)",
    "FUNCTION historical_db.search_record(jsonb, integer, text, date, text[], text[], jsonb, boolean)",
    "FUNCTION historical_db.neighbours(text, integer, text, date, text[], text[], jsonb, boolean, integer)",
    "FUNCTION historical_db.search_runs(vector, integer, text, date, text[], text[], jsonb, boolean, integer)",
    "FUNCTION historical_db.encode(text, jsonb, integer)",
    "FUNCTION historical_db.suggest_for_env_v5(jsonb, integer, date, text, boolean, integer, integer, text[], "
    "boolean, integer, integer)",
    "FUNCTION historical_db.suggest_configs_v6(vector, integer, date, text, boolean, integer, integer, text[], "
    "boolean, text[], integer, integer, integer, double precision, boolean)",
    "FUNCTION historical_db.suggest_empty_v1(vector, date, text[], integer, integer, text[], boolean, text[], integer)",
    "FUNCTION historical_db.suggest_ranking_v1(historical_db.suggest_evidence_v1[], double precision[])",
    "FUNCTION historical_db.suggest_evidence_v1(vector, date, text[], double precision, integer, integer, text[], "
    "boolean, text[], integer, integer, integer, boolean)",
    "FUNCTION historical_db.suggest_calibration_v1(text[], boolean, integer, date)",
    "FUNCTION historical_db.outcome_keys_v1(date)",
    "FUNCTION historical_db.suggest_args_v1(vector, integer, text, boolean, integer, integer, text[], integer, "
    "integer, double precision)",
    "TYPE historical_db.suggest_rank_v1",
    "TYPE historical_db.suggest_evidence_v1",
]


def _frozen(name: str) -> str:
    return (FROZEN / f"0017_{name}").read_text(encoding="utf-8")


def _released_0011_features() -> str:
    """encoder_features_v1 as revision 0011 installed it (its frozen encode_v1.sql), as a replacement."""
    text = (FROZEN / "0011_encode_v1.sql").read_text(encoding="utf-8")
    body = re.search(r"^CREATE FUNCTION historical_db\.encoder_features_v1\(.*?^\$fn\$;$", text,
                     re.MULTILINE | re.DOTALL)
    return "CREATE OR REPLACE" + body.group(0)[len("CREATE"):]


def upgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("suggest_v6.sql"))
    op.execute(_frozen("encoder_transform_v1.sql"))
    op.execute(_frozen("stable_v1.sql"))
    op.execute(_frozen("roles_v4.sql"))


def downgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_released_0011_features())
    op.execute("DROP FUNCTION historical_db.encoder_transform_v1(text, double precision, double precision)")
    op.execute("DROP FUNCTION historical_db.encoder_unknown_transform_v1(text)")
    for name in DROPPED:
        op.execute(f"DROP {name}")
