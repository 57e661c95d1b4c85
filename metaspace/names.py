"""The one place that knows the names of metaspace's models, tables and SQL functions."""

SCHEMA = "historical_db"
DIMENSION = 384

JOINT_TYPE = "META_CONFIG_ENV_V0"
SOURCE = "meta-config-env"

CONFIG_MODEL = "num-config-core-v1"
ENV_MODEL = "num-env-core-v1"
OUTCOME_MODEL = "num-outcome-core-v1"
JOINT_MODEL = "joint-meta-config-env-v1"

BRANCHES = ("config", "env", "outcome")
BRANCH_MODELS = {"config": CONFIG_MODEL, "env": ENV_MODEL, "outcome": OUTCOME_MODEL}
SPACES = ("joint", *BRANCHES)

JOINT_EMBEDDINGS = f"{SCHEMA}.joint_embeddings"
BRANCH_EMBEDDINGS = f"{SCHEMA}.branch_embeddings"
RUNS = f"{SCHEMA}.runs"
ENCODER_VERSIONS = f"{SCHEMA}.encoder_versions"
QUARANTINE = f"{SCHEMA}.embedding_quarantine"

# Advisory lock key held by embed-runs while it writes (two backfills never interleave).
EMBED_LOCK_KEY = 0x6D657461_7370  # "meta" "sp"

# SQL functions (sql/search_v1.sql, installed by revision 0005). A changed signature is a new _vN name.
SEARCH_RUNS = f"{SCHEMA}.search_runs_v1"
NEIGHBOURS = f"{SCHEMA}.neighbours_v1"
SUGGEST_CONFIGS = f"{SCHEMA}.suggest_configs_v1"
ACTIVE_VERSION = f"{SCHEMA}.active_encoder_version_v1"
RUN_VECTORS = f"{SCHEMA}.run_vectors_v1"
CLUSTERINGS = f"{SCHEMA}.clusterings"
RUN_CLUSTERS = f"{SCHEMA}.run_clusters"

# The HNSW indexes created by sql/vector_indexes_v1.sql (one per space); embed-runs drops and re-creates
# them around a large backfill. tests/test_migrations.py checks this list against the file.
HNSW_INDEX_NAMES = ("joint_embeddings_vector_hnsw", "branch_embeddings_config_hnsw", "branch_embeddings_env_hnsw",
                    "branch_embeddings_outcome_hnsw")
