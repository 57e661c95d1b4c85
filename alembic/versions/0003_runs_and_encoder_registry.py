"""Historical runs, the encoder registry, branch vectors and the quarantine.

Revision ID: 0003_runs_and_encoder_registry
Revises: 0002_joint_embeddings

- ``historical_db.runs``: one row per run record (PRODUCT.md), keyed by run_id, with a sha256 of its
  canonical JSON so that re-importing an unchanged record is a no-op.
- ``historical_db.encoder_versions``: every fitted state of the joint model (with its three branch
  encoders), immutable once registered (a trigger refuses changes to it), one of them active.
- ``historical_db.branch_embeddings``: the config, env and outcome vectors of each run, so that
  search by one branch alone is possible; partial HNSW indexes per branch come in 0004.
- ``historical_db.embedding_quarantine``: runs that failed encoding, with the reason.
- ``joint_embeddings.encoder_version`` and the uniqueness rule: one vector per run, joint type,
  model and encoder version. The version is part of the rule so that a rebuild can write the new
  version's vectors while the old ones stay queryable; legacy rows (no version) are not constrained.

Downgrading drops these tables; it refuses while they hold rows unless ``allow_data_loss`` is set
(``metaspace migrate --downgrade ... --allow-data-loss``).
"""

from alembic import context, op

revision = "0003_runs_and_encoder_registry"
down_revision = "0002_joint_embeddings"
branch_labels = None
depends_on = None


def refuse_data_loss(tables: tuple[str, ...]) -> None:
    """Stop before dropping tables that hold rows, unless the user said --allow-data-loss. (Offline --sql
    output cannot look, so it prints the drop for a DBA to read.)"""
    if context.is_offline_mode() or context.config.attributes.get("allow_data_loss"):
        return
    for table in tables:
        rows = op.get_bind().exec_driver_sql(f"SELECT count(*) FROM historical_db.{table}").scalar()  # noqa: S608
        if rows:
            raise RuntimeError(f"historical_db.{table} holds {rows} rows that this downgrade would drop; export "
                               "them first, or pass --allow-data-loss to metaspace migrate")

UPGRADE = [
    """
    CREATE TABLE historical_db.runs (
        run_id       text PRIMARY KEY CHECK (run_id <> '' AND length(run_id) <= 512),
        config_id    text CHECK (config_id <> ''),
        strategy_id  text CHECK (strategy_id <> ''),
        as_of_date   date NOT NULL,
        config       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
        env          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(env) = 'object'),
        outcome      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(outcome) = 'object'),
        extra        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
        record_sha256 text NOT NULL CHECK (record_sha256 ~ '^[0-9a-f]{64}$'),
        imported_at  timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX runs_as_of_date ON historical_db.runs (as_of_date)",
    "CREATE INDEX runs_strategy_id ON historical_db.runs (strategy_id, as_of_date)",
    """
    CREATE TABLE historical_db.encoder_versions (
        version      integer PRIMARY KEY CHECK (version > 0),
        model_id     text NOT NULL CHECK (model_id <> ''),
        state        jsonb NOT NULL CHECK (jsonb_typeof(state) = 'object'),
        fingerprint  text NOT NULL UNIQUE CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
        fitted_on_runs bigint NOT NULL CHECK (fitted_on_runs >= 0),
        is_active    boolean NOT NULL DEFAULT false,
        created_at   timestamptz NOT NULL DEFAULT now(),
        activated_at timestamptz
    )
    """,
    "CREATE UNIQUE INDEX encoder_versions_one_active ON historical_db.encoder_versions (model_id) WHERE is_active",
    """
    CREATE FUNCTION historical_db.encoder_versions_immutable() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
    BEGIN
        IF NEW.version <> OLD.version OR NEW.model_id <> OLD.model_id OR NEW.state <> OLD.state
           OR NEW.fingerprint <> OLD.fingerprint OR NEW.fitted_on_runs <> OLD.fitted_on_runs
           OR NEW.created_at <> OLD.created_at THEN
            RAISE EXCEPTION USING MESSAGE = 'encoder version ' || OLD.version
                || ' is registered and immutable; fit a new version instead';
        END IF;
        RETURN NEW;
    END
    $fn$
    """,
    """
    CREATE TRIGGER encoder_versions_immutable BEFORE UPDATE ON historical_db.encoder_versions
    FOR EACH ROW EXECUTE FUNCTION historical_db.encoder_versions_immutable()
    """,
    "ALTER TABLE historical_db.joint_embeddings ADD COLUMN encoder_version integer "
    "REFERENCES historical_db.encoder_versions (version) ON DELETE RESTRICT",
    "CREATE UNIQUE INDEX joint_embeddings_one_per_run ON historical_db.joint_embeddings "
    "(joint_type, model_id, (entity_scope ->> 'run_id'), encoder_version) WHERE encoder_version IS NOT NULL",
    "CREATE INDEX joint_embeddings_encoder_version ON historical_db.joint_embeddings (encoder_version)",
    """
    CREATE TABLE historical_db.branch_embeddings (
        run_id          text NOT NULL REFERENCES historical_db.runs (run_id) ON DELETE CASCADE,
        branch          text NOT NULL CHECK (branch IN ('config', 'env', 'outcome')),
        encoder_version integer NOT NULL REFERENCES historical_db.encoder_versions (version) ON DELETE RESTRICT,
        model_id        text NOT NULL CHECK (model_id <> ''),
        as_of_date      date NOT NULL,
        strategy_id     text,
        config_id       text,
        vector          vector(384) NOT NULL,
        PRIMARY KEY (run_id, branch, encoder_version)
    )
    """,
    "CREATE INDEX branch_embeddings_version_date ON historical_db.branch_embeddings (encoder_version, branch, as_of_date)",
    """
    CREATE TABLE historical_db.embedding_quarantine (
        run_id          text NOT NULL REFERENCES historical_db.runs (run_id) ON DELETE CASCADE,
        encoder_version integer NOT NULL REFERENCES historical_db.encoder_versions (version) ON DELETE CASCADE,
        field           text,
        reason          text NOT NULL CHECK (reason <> ''),
        record_sha256   text NOT NULL,
        quarantined_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, encoder_version)
    )
    """,
]

TABLES = ("embedding_quarantine", "branch_embeddings", "encoder_versions", "runs")


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    refuse_data_loss(TABLES)
    op.execute("DROP INDEX IF EXISTS historical_db.joint_embeddings_encoder_version")
    op.execute("DROP INDEX IF EXISTS historical_db.joint_embeddings_one_per_run")
    op.execute("ALTER TABLE historical_db.joint_embeddings DROP COLUMN encoder_version")
    for table in TABLES:
        op.execute(f"DROP TABLE historical_db.{table}")
    op.execute("DROP FUNCTION historical_db.encoder_versions_immutable()")
