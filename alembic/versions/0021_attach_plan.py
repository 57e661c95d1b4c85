"""attach_entities_v2 keeps its plan on a table without statistics (embed-runs' first load of a database).

Revision ID: 0021_attach_plan
Revises: 0020_citus

``sql/branch_entities_v3.sql`` replaces ``attach_entities_v2`` (revision 0020) in place, with the same arguments,
rule and answers: the step that moves an entity's first_seen back compares a date with ``first_seen + 0``, so that
the planner cannot walk the index on (encoder_version, branch, first_seen) for it. Before statistics exist it priced
that walk as the unique key's and took it, reading for each record of a batch every entity of its branch seen
later; the plan is kept for the writer's session, so a first load of a sweep slowed batch after batch (the file
says more).

Nothing is stored: downgrading gives attach_entities_v2 its 0020 body.
"""

import re
from pathlib import Path

from alembic import op

revision = "0021_attach_plan"
down_revision = "0020_citus"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "branch_entities_v3.sql": "b99c7810204b9ba0df922e5f954f17a0a7fa5ebb1b53addec090a3b30991cb7b",
}

FROZEN = Path(__file__).parent / "frozen"


def upgrade() -> None:
    for name in FROZEN_SQL:
        op.execute((FROZEN / f"0021_{name}").read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute((FROZEN / "0021_pin_search_path_v1.sql").read_text(encoding="utf-8"))
    text = (FROZEN / "0020_branch_entities_v2.sql").read_text(encoding="utf-8")
    body = re.search(r"^CREATE FUNCTION historical_db\.attach_entities_v2\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
    op.execute("CREATE OR REPLACE" + body.group(0)[len("CREATE"):])
