"""Functions in forms Citus plans: the entity writers, the branch spaces' walk, search_distinct and suggest's
records (issue 26).

Revision ID: 0020_citus
Revises: 0019_branch_entities

``sql/branch_entities_v2.sql``: the same rules as ``attach_entities_v1``, ``drop_orphans_v1``,
``walk_entities_v1`` and ``search_distinct_v1`` (revision 0019), written so that Citus plans them: the runs are
read once, by one query, and every write works on those values; orphans are found by one query per branch column
and removed by id; on Citus the walk keeps the entities with a matching run after it, and search_distinct reads
its runs by id. ``sql/suggest_v8.sql``: ``suggest_evidence_v1`` (revision 0017) with the candidates' records read
by ``recent_records_v1``, whose LATERAL ... FETCH FIRST Citus does not plan (there, one ranked query). The
released names keep their arguments and results and hand over to these (one body per rule); on one server every
answer is the same (floats within 1e-12). ``store_run_v3`` is replaced in place again (no now() in its upsert's
DO UPDATE, which Citus refuses; its entities by attach_entities_v2). ``sql/roles_v5.sql`` is run again, so that the new writing functions are the writer's alone.

Nothing is stored: downgrading gives the released functions their 0019 and 0017 bodies and drops the new ones.
"""

import re
from pathlib import Path

from alembic import op

revision = "0020_citus"
down_revision = "0019_branch_entities"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "branch_entities_v2.sql": "ae33e450ef5d9a69ddea58cc4be843f88be1cc8645faa8652b269970b4b1e854",
    "suggest_v8.sql": "83df059fa12e0edfcbd7f7aef63305b1bb20b9824bd4b4a72c6488595a120073",
    "roles_v5.sql": "902b3ce01006617cf5cf96dbf1527164b525148b5ffe67240d36d43d4113e2f1",
}

FROZEN = Path(__file__).parent / "frozen"

DROPPED = [
    "FUNCTION historical_db.suggest_evidence_v2(vector, date, text[], double precision, integer, integer, text[], "
    "boolean, text[], integer, integer, integer, boolean)",
    "FUNCTION historical_db.recent_records_v1(text[], bigint, date, text[], text[])",
    "FUNCTION historical_db.outcome_keys_v2(date)",
    "FUNCTION historical_db.search_distinct_v2(vector, integer, text, date, text[], text[], jsonb, boolean, integer)",
    "FUNCTION historical_db.walk_entities_v2(vector, text, integer, date, text[], text[], jsonb, integer, boolean)",
    "FUNCTION historical_db.distributed_v1(regclass)",
    "FUNCTION historical_db.attach_entities_v2(integer, text[], vector[], vector[], vector[])",
    "FUNCTION historical_db.drop_orphans_v2(bigint[])",
]


def _frozen(name: str) -> str:
    return (FROZEN / f"0020_{name}").read_text(encoding="utf-8")


def _released(frozen: str, names: tuple[str, ...]) -> list[str]:
    """The functions ``names`` as an earlier revision installed them (its frozen copy of a file), as
    replacements."""
    text = (FROZEN / frozen).read_text(encoding="utf-8")
    bodies = []
    for name in names:
        body = re.search(rf"^CREATE FUNCTION historical_db\.{name}\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
        bodies.append("CREATE OR REPLACE" + body.group(0)[len("CREATE"):])
    return bodies


def _released_or_replaced(frozen: str, name: str) -> list[str]:
    """A function as an earlier revision replaced it in place (its frozen file's CREATE OR REPLACE)."""
    text = (FROZEN / frozen).read_text(encoding="utf-8")
    body = re.search(rf"^CREATE OR REPLACE FUNCTION historical_db\.{name}\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
    return [body.group(0)]


def upgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("branch_entities_v2.sql"))
    op.execute(_frozen("suggest_v8.sql"))
    op.execute(_frozen("roles_v5.sql"))


def downgrade() -> None:
    op.execute(_frozen("pin_search_path_v1.sql"))
    for statement in (_released("0017_suggest_v6.sql", ("suggest_evidence_v1", "outcome_keys_v1"))
                      + _released("0019_branch_entities_v1.sql", ("attach_entities_v1", "drop_orphans_v1",
                                                                   "walk_entities_v1", "search_distinct_v1"))
                      + _released_or_replaced("0019_branch_entities_v1.sql", "store_run_v3")):
        op.execute(statement)
    for name in DROPPED:
        op.execute(f"DROP {name}")
