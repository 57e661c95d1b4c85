"""Graphs only where they pay, and on halfvec: ``historical_db.settings`` and the v3 searches.

Revision ID: 0012_index_settings
Revises: 0011_sql_encoders

A graph pays for its build (and its memory) only where queries are asked of a space holding many
vectors: below a few thousand, the exact scan answers in milliseconds. ``metaspace embed-runs
--indexed-spaces joint,env --index-min-vectors N`` records a team's choice here, and every later
embed-runs builds the graphs it calls for (and drops those of spaces no longer indexed). With no row, the
defaults of ``metaspace/store/graphs.py`` apply. The table holds choices, never data about runs; the
readers' SELECT comes from the default privileges of 0008's roles (it is the tables' owner who builds
and drops graphs, so writers get no write grant).

- ``sql/vector_indexes_v2.sql``: the HNSW graphs over ``vector::halfvec(384)`` (expression indexes; the
  stored float32 vectors are unchanged), which embed-runs builds where the rule wants a halfvec graph.
  Released here, run by embed-runs (``store/graphs.py``), never by a migration: a graph is built for a
  space only once it holds enough vectors.
- ``sql/search_v3.sql``: ``nearest_runs_v2`` (the path rule of v1, walking whichever graph a space has:
  halfvec with the query cast to match, else float32, else none and the exact scan), ``search_runs_v3``
  and ``neighbours_v3``; ``sql/suggest_v3.sql``: ``suggest_configs_v3``; ``sql/search_record_v2.sql``:
  ``search_record_v2`` and ``suggest_for_env_v2`` (the SQL clients' JSON entry points, calling v3). The
  older versions stay for older clients (they walk only float32 graphs, and scan exactly where a space has
  none).

Downgrading drops the functions and the table; it refuses while the table holds a choice unless
``allow_data_loss`` is set. The graphs themselves are left as they are (a halfvec graph is then unused).
"""

from pathlib import Path

from alembic import context, op

revision = "0012_index_settings"
down_revision = "0011_sql_encoders"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "vector_indexes_v2.sql": "8ed36055a4e6b9b8765aed6e8ebbff57ecd99ba367dc8cbacdec5d8006d15f3f",
    "search_v3.sql": "a3491f841db773f42b767afce237ea77c575bbff75c84d8e653d351fb1791acf",
    "suggest_v3.sql": "1a519cb1c911377efd5ebc1fb7962d87bc05d8c94b58ea14883e0dc7a6b85d6e",
    "search_record_v2.sql": "86e4a4fed27f76583673bd75c2cc6679fdb4cd6cc3ae0eacac544ed8982b2d0a",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0012_{name}").read_text(encoding="utf-8")


UPGRADE = [
    """
    CREATE TABLE historical_db.settings (
        name   text PRIMARY KEY CHECK (name IN ('indexed_spaces', 'index_min_vectors', 'graph_type')),
        value  jsonb NOT NULL,
        set_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "COMMENT ON TABLE historical_db.settings IS 'metaspace choices: which spaces get an HNSW graph, and from how "
    "many vectors (metaspace embed-runs --indexed-spaces, --index-min-vectors)'",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("search_v3.sql"))
    op.execute(_frozen("suggest_v3.sql"))
    op.execute(_frozen("search_record_v2.sql"))


def downgrade() -> None:
    if not (context.is_offline_mode() or context.config.attributes.get("allow_data_loss")):
        rows = op.get_bind().exec_driver_sql("SELECT count(*) FROM historical_db.settings").scalar()
        if rows:
            raise RuntimeError(f"historical_db.settings holds {rows} choice(s) (indexed spaces, index threshold) "
                               "that this downgrade would forget; pass --allow-data-loss to metaspace migrate")
    op.execute("DROP FUNCTION historical_db.suggest_for_env_v2(jsonb, integer, date, text, boolean, integer, "
               "integer, text[], boolean)")
    op.execute("DROP FUNCTION historical_db.search_record_v2(jsonb, integer, text, date, text[], text[], jsonb, "
               "boolean)")
    op.execute("DROP FUNCTION historical_db.suggest_configs_v3(vector, integer, date, text, boolean, integer, "
               "integer, text[], boolean, text[], integer)")
    for name in ("neighbours_v3(text", "search_runs_v3(vector"):
        op.execute(f"DROP FUNCTION historical_db.{name}, integer, text, date, text[], text[], jsonb, boolean, "
                   "integer)")
    op.execute("DROP FUNCTION historical_db.nearest_runs_v2(vector, integer, text, integer, date, text[], text[], "
               "jsonb, boolean)")
    op.execute("DROP TABLE historical_db.settings")
