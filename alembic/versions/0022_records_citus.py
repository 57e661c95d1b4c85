"""suggest's records on Citus read by each shard's index, not by ranking every run of the candidates.

Revision ID: 0022_records_citus
Revises: 0021_attach_plan

``sql/suggest_v9.sql`` adds ``recent_records_v2`` (the same arguments, rule and rows as ``recent_records_v1``), and
v1 hands over to it. On one server it is v1's walk, unchanged. On Citus it finds each candidate config's cutoff
date by a query whose LIMIT the shards apply to their own index walks, then reads the runs on or after each cutoff
in one join over the shards; v1 ranked every run of the candidate configs there (4.6 s a suggest at 1,000,000
runs, docs/benchmarks.md). The file says more. ``sql/roles_v5.sql`` is run again, so that the readers' grants
cover the new function.

Nothing is stored: downgrading gives recent_records_v1 its 0020 body and drops v2.
"""

import re
from pathlib import Path

from alembic import op

revision = "0022_records_citus"
down_revision = "0021_attach_plan"
branch_labels = None
depends_on = None

FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "suggest_v9.sql": "ce6dcca015ee6a672930b2741f3926fb0b3d252f021cef87f6c847e95cfcb2d8",
    "roles_v5.sql": "902b3ce01006617cf5cf96dbf1527164b525148b5ffe67240d36d43d4113e2f1",
}

FROZEN = Path(__file__).parent / "frozen"


def upgrade() -> None:
    for name in FROZEN_SQL:
        op.execute((FROZEN / f"0022_{name}").read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute((FROZEN / "0022_pin_search_path_v1.sql").read_text(encoding="utf-8"))
    text = (FROZEN / "0020_suggest_v8.sql").read_text(encoding="utf-8")
    body = re.search(r"^CREATE FUNCTION historical_db\.recent_records_v1\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
    op.execute("CREATE OR REPLACE" + body.group(0)[len("CREATE"):])
    op.execute("DROP FUNCTION historical_db.recent_records_v2(text[], bigint, date, text[], text[])")
