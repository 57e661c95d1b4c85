"""Suggestions on the histories of searches: ``suggest_configs_v7`` (and ``suggest_for_env_v6``), which the
stable ``suggest_configs`` and ``suggest_for_env`` now call, and ``suggest_picks``, evaluate's replay.

Revision ID: 0018_suggest_v7
Revises: 0017_stable_names

``sql/suggest_v7.sql``: version 6's answers wherever the runs near carry an outcome window, and where none
does (Optuna studies, MLflow experiments) evidence in blocks of environments, objectives in each
environment's spread, evidence counted by how near its environment is, and no confidence from a zero
variance (in both kinds of history). ``suggest_answer_v1`` is the last step, shared from now on.
``sql/stable_v2.sql``: the stable suggest names replaced in place (same arguments and columns).
``sql/record_as_of_strict_v1.sql``: a record's as_of_date read strictly (an ISO date or date-time), replaced
in place; '2024-03-29garbage' is now an error, as it is on import.

Nothing is stored: downgrading gives the stable names back their 0017 bodies and drops what this installs.
"""

import re
from pathlib import Path

from alembic import op

revision = "0018_suggest_v7"
down_revision = "0017_stable_names"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "suggest_v7.sql": "919631b135977ad08312bb4e7776c5f53cd9d719f819907ff98acae504a8a8d3",
    "stable_v2.sql": "088a943366d1c43a89b896d27866a0b02c501caa5f2952cd65a7c5e5df91420e",
    "record_as_of_strict_v1.sql": "979eef57be04f6f1f4c1fd21ca9b2255c76f8bc635ae96ad51f767c5ffcf49dd",
}

FROZEN = Path(__file__).parent / "frozen"

DROPPED = [
    "FUNCTION historical_db.suggest_picks(vector, date, text, boolean, integer, integer, text[], boolean, integer, "
    "double precision[], integer)",
    "FUNCTION historical_db.suggest_for_env_v6(jsonb, integer, date, text, boolean, integer, integer, text[], "
    "boolean, integer, integer)",
    "FUNCTION historical_db.suggest_configs_v7(vector, integer, date, text, boolean, integer, integer, text[], "
    "boolean, text[], integer, integer, integer, double precision, boolean)",
    "FUNCTION historical_db.suggest_answer_v1(historical_db.suggest_evidence_v1[], double precision, "
    "double precision, historical_db.suggest_calibrations, integer)",
]


def _frozen(name: str) -> str:
    return (FROZEN / f"0018_{name}").read_text(encoding="utf-8")


def _released_0017(names: tuple[str, ...]) -> list[str]:
    """The stable wrappers ``names`` as revision 0017 installed them, as replacements."""
    text = (FROZEN / "0017_stable_v1.sql").read_text(encoding="utf-8")
    bodies = []
    for name in names:
        body = re.search(rf"^CREATE FUNCTION historical_db\.{name}\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
        bodies.append("CREATE OR REPLACE" + body.group(0)[len("CREATE"):])
    return bodies


def _released_0011_as_of() -> str:
    """record_as_of_v1 as revision 0011 installed it (its frozen search_record_v1.sql), as a replacement."""
    text = (FROZEN / "0011_search_record_v1.sql").read_text(encoding="utf-8")
    body = re.search(r"^CREATE FUNCTION historical_db\.record_as_of_v1\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
    return "CREATE OR REPLACE" + body.group(0)[len("CREATE"):]


def upgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("suggest_v7.sql"))
    op.execute(_frozen("stable_v2.sql"))
    op.execute(_frozen("record_as_of_strict_v1.sql"))


def downgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_released_0011_as_of())
    for statement in _released_0017(("suggest_configs", "suggest_for_env")):
        op.execute(statement)
    for name in DROPPED:
        op.execute(f"DROP {name}")
