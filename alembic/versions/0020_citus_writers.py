"""The entity writers in a form Citus plans: ``attach_entities_v2`` and ``drop_orphans_v2``.

Revision ID: 0020_citus_writers
Revises: 0019_branch_entities

``sql/branch_entities_v2.sql``: the same rules as ``attach_entities_v1`` and ``drop_orphans_v1`` (revision
0019), written so that Citus plans them (issue 26): the runs are read once, by one query, and every write works
on those values; orphans are found by one query per branch column and removed by id. The released names keep
their arguments and results and hand over to these (one body per rule). ``sql/roles_v5.sql`` is run again, so
that the new writing functions are the writer's alone.

Nothing is stored: downgrading gives the two released functions their 0019 bodies and drops the new ones.
"""

import re
from pathlib import Path

from alembic import op

revision = "0020_citus_writers"
down_revision = "0019_branch_entities"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "branch_entities_v2.sql": "8a9e97a311c38f35cd4c6907df6af2b3f06cbce0fc14da1a5f3776e89b03ed36",
    "roles_v5.sql": "902b3ce01006617cf5cf96dbf1527164b525148b5ffe67240d36d43d4113e2f1",
}

FROZEN = Path(__file__).parent / "frozen"

DROPPED = [
    "FUNCTION historical_db.search_distinct_v2(vector, integer, text, date, text[], text[], jsonb, boolean, integer)",
    "FUNCTION historical_db.walk_entities_v2(vector, text, integer, date, text[], text[], jsonb, integer, boolean)",
    "FUNCTION historical_db.distributed_v1(regclass)",
    "FUNCTION historical_db.attach_entities_v2(integer, text[], vector[], vector[], vector[])",
    "FUNCTION historical_db.drop_orphans_v2(bigint[])",
]


def _frozen(name: str) -> str:
    return (FROZEN / f"0020_{name}").read_text(encoding="utf-8")


def _released_0019(names: tuple[str, ...]) -> list[str]:
    """The functions ``names`` as revision 0019 installed them (its frozen branch_entities_v1.sql), as
    replacements."""
    text = (FROZEN / "0019_branch_entities_v1.sql").read_text(encoding="utf-8")
    bodies = []
    for name in names:
        body = re.search(rf"^CREATE FUNCTION historical_db\.{name}\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
        bodies.append("CREATE OR REPLACE" + body.group(0)[len("CREATE"):])
    return bodies


def upgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("branch_entities_v2.sql"))
    op.execute(_frozen("roles_v5.sql"))


def downgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    for statement in _released_0019(("attach_entities_v1", "drop_orphans_v1", "walk_entities_v1",
                                     "search_distinct_v1")):
        op.execute(statement)
    for name in DROPPED:
        op.execute(f"DROP {name}")
