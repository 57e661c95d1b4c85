"""Which spaces get an HNSW graph, and from how many vectors: ``historical_db.settings``.

Revision ID: 0012_index_settings
Revises: 0011_sql_encoders

A graph pays for its build (and its memory) only where queries are asked of a space holding many
vectors: below a few thousand, the exact scan answers in milliseconds. ``metaspace embed-runs
--indexed-spaces joint,env --index-min-vectors N`` records a team's choice here, and every later
embed-runs builds the graphs it calls for (and drops those of spaces no longer indexed). With no row, the
defaults of ``metaspace/store/graphs.py`` apply. The table holds choices, never data about runs; the
readers' SELECT comes from the default privileges of 0008's roles (it is the tables' owner who builds
and drops graphs, so writers get no write grant).

Downgrading drops the table; it refuses while it holds a choice unless ``allow_data_loss`` is set. The
graphs themselves are left as they are.
"""

from alembic import context, op

revision = "0012_index_settings"
down_revision = "0011_sql_encoders"
branch_labels = None
depends_on = None

UPGRADE = [
    """
    CREATE TABLE historical_db.settings (
        name   text PRIMARY KEY CHECK (name IN ('indexed_spaces', 'index_min_vectors')),
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


def downgrade() -> None:
    if not (context.is_offline_mode() or context.config.attributes.get("allow_data_loss")):
        rows = op.get_bind().exec_driver_sql("SELECT count(*) FROM historical_db.settings").scalar()
        if rows:
            raise RuntimeError(f"historical_db.settings holds {rows} choice(s) (indexed spaces, index threshold) "
                               "that this downgrade would forget; pass --allow-data-loss to metaspace migrate")
    op.execute("DROP TABLE historical_db.settings")
