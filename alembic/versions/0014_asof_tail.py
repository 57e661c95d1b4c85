"""The selective as-of tail (issue 14): ``nearest_runs_v2`` walks as-of prefix graphs.

Revision ID: 0014_asof_tail
Revises: 0013_suggest_v4

At 1,000,000 runs an as-of date leaving 0.3-2% of them cost 3-9x the unfiltered p95: the graph walk
visits about k / share nodes, and the exact path below its threshold reads rows scattered over the whole
table. embed-runs now builds, for each space with a graph, partial copies of it over the runs known as of
a few dates (as-of prefix graphs, ``metaspace/store/graphs.py``), and this revision **replaces the body of
``historical_db.nearest_runs_v2`` in place** (``sql/nearest_runs_asof_v1.sql``): where a space has them,
the exact path is taken only below ``asof_exact_runs`` runs (default 2,000, for k = 10) and the walk is
left to the planner's choice of the smallest prefix graph covering the date. Same arguments, same
columns, same contract (``exact => true`` is the exact float32 scan), so ``search_runs_v3``,
``neighbours_v3`` and ``suggest_configs_v4`` gain it without new versions. Without prefix graphs the
function behaves as search_v3.sql's. Measured in docs/benchmarks.md, "The as-of tail, built".

``historical_db.settings`` may hold a new choice, ``asof_exact_runs`` (the name check is widened).
No index is built here (prefix graphs are built by embed-runs, which knows the as-of dates), so
``--concurrently`` has nothing to do.

Downgrading restores ``nearest_runs_v2``'s body of revision 0012 (its frozen ``search_v3.sql``) and the
name check; it refuses while ``asof_exact_runs`` is stored unless ``allow_data_loss`` is set. It drops the
prefix graphs, every index of ``historical_db`` whose name starts with ``asof_``: derived data that 0013's
embed-runs neither plans, rebuilds nor drops, while every insert would go on paying to feed them. No row
is lost; after upgrading again, embed-runs builds them anew (from the default ``asof_exact_runs``, the
stored choice being forgotten).
"""

import re
from pathlib import Path

from alembic import context, op

revision = "0014_asof_tail"
down_revision = "0013_suggest_v4"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "nearest_runs_asof_v1.sql": "239f4af3b2fcbe4179d2180e7e057a531617612bfbb5c4c750753f363f6c871f",
}
FROZEN = Path(__file__).parent / "frozen"
NAMES_BEFORE = ("'indexed_spaces', 'index_min_vectors', 'graph_type'")
NAMES_AFTER = ("'indexed_spaces', 'index_min_vectors', 'graph_type', 'asof_exact_runs'")
# The prefix graphs embed-runs built (metaspace/store/graphs.py names them asof_<space>_<kind>_<level>),
# looked up by the database when the downgrade runs, so that an offline downgrade script drops them too.
DROP_PREFIX_GRAPHS = """
DO $drop$
DECLARE
    graph text;
BEGIN
    FOR graph IN SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'historical_db'
                   AND c.relname ~ '^asof_(joint|config|env|outcome)_(vector|halfvec)_[0-9]+(_new|_old)?$' LOOP
        EXECUTE 'DROP INDEX ' || graph;
    END LOOP;
END
$drop$
"""


def _name_check(names: str) -> list[str]:
    return ["ALTER TABLE historical_db.settings DROP CONSTRAINT settings_name_check",
            f"ALTER TABLE historical_db.settings ADD CONSTRAINT settings_name_check CHECK (name IN ({names}))"]


def _released_0012_body() -> str:
    """nearest_runs_v2 as revision 0012 installed it, from its frozen search_v3.sql, as a replacement."""
    text = (FROZEN / "0012_search_v3.sql").read_text(encoding="utf-8")
    body = re.search(r"^CREATE FUNCTION historical_db\.nearest_runs_v2\(.*?^\$fn\$;$", text, re.MULTILINE | re.DOTALL)
    return "CREATE OR REPLACE" + body.group(0)[len("CREATE"):]


def upgrade() -> None:
    for statement in _name_check(NAMES_AFTER):
        op.execute(statement)
    op.execute((FROZEN / "0014_pin_search_path_v1.sql").read_text(encoding="utf-8"))
    op.execute((FROZEN / "0014_nearest_runs_asof_v1.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    if not (context.is_offline_mode() or context.config.attributes.get("allow_data_loss")):
        rows = op.get_bind().exec_driver_sql(
            "SELECT count(*) FROM historical_db.settings WHERE name = 'asof_exact_runs'").scalar()
        if rows:
            raise RuntimeError("historical_db.settings holds asof_exact_runs, which this downgrade would forget; "
                               "pass --allow-data-loss to metaspace migrate")
    op.execute(DROP_PREFIX_GRAPHS)
    op.execute("DELETE FROM historical_db.settings WHERE name = 'asof_exact_runs'")
    for statement in _name_check(NAMES_BEFORE):
        op.execute(statement)
    op.execute((FROZEN / "0014_pin_search_path_v1.sql").read_text(encoding="utf-8"))
    op.execute(_released_0012_body())
