"""HNSW indexes on every stored vector, and the B-tree indexes the search filters need.

Revision ID: 0004_search_indexes
Revises: 0003_runs_and_encoder_registry

On a large live table, run ``metaspace migrate --concurrently``: the indexes are then built with
CREATE INDEX CONCURRENTLY, each outside a transaction, so writers are not blocked while they build.
"""

from pathlib import Path

from alembic import context, op

revision = "0004_search_indexes"
down_revision = "0003_runs_and_encoder_registry"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "vector_indexes_v1.sql": "b011b87c7ec7d0e5ab999fdfbc491ef354b46ec53a46ad887eb5a5400a46aa32",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0004_{name}").read_text(encoding="utf-8")

FILTER_INDEXES = [
    "CREATE INDEX IF NOT EXISTS joint_embeddings_type_date ON historical_db.joint_embeddings (joint_type, as_of_date)",
]
INDEX_NAMES = [
    "joint_embeddings_vector_hnsw",
    "branch_embeddings_config_hnsw",
    "branch_embeddings_env_hnsw",
    "branch_embeddings_outcome_hnsw",
    "joint_embeddings_type_date",
]


def _statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip().rstrip(";") for part in "\n".join(lines).split(";\n") if part.strip().rstrip(";").strip()]


def upgrade() -> None:
    ddl = _statements(_frozen("vector_indexes_v1.sql")) + FILTER_INDEXES
    if context.config.attributes.get("concurrently"):
        with context.get_context().autocommit_block():
            for statement in ddl:
                op.execute(statement.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
    else:
        for statement in ddl:
            op.execute(statement)


def downgrade() -> None:
    for name in INDEX_NAMES:
        op.execute(f"DROP INDEX IF EXISTS historical_db.{name}")
