"""The encoders inside PostgreSQL: encode, search and suggest from any SQL client.

Revision ID: 0011_sql_encoders
Revises: 0010_suggest_v2

- ``encoder_branches``, ``encoder_features``, ``encoder_matrices``: the fitted state of each registered
  encoder version in a form SQL reads (statistics per feature, the linear maps as pgvector rows). The
  registry writes them when it registers a version; this revision derives them for the versions
  registered before it, from their stored state (its own frozen copy of the derivation: see ``_derive``).
  Like the state itself they are immutable (a trigger refuses changes).
- ``sql/encode_v1.sql``: ``encode_v1(space, record jsonb, encoder_version)`` and its helpers.
- ``sql/search_record_v1.sql``: ``search_record_v1`` and ``suggest_for_env_v1``, which take JSON.
- ``sql/embed_pending_v1.sql``: ``embed_pending_v1(max_runs)``, the writers' SQL path of embed-runs.

Downgrading drops the functions and the three tables (they are derived from encoder_versions.state).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from alembic import context, op

revision = "0011_sql_encoders"
down_revision = "0010_suggest_v2"
branch_labels = None
depends_on = None

# This revision's own copies of the SQL it installs, as released (alembic/versions/frozen/); the tests check
# them, and the released sql/ files, against these checksums.
FROZEN_SQL = {
    "pin_search_path_v1.sql": "55fc474998ad82de144c1f41a4bcf8dd91ede05cd8c97641b1ff140fb13f893d",
    "encode_v1.sql": "f5d640b0161fc74d399fb5b4468c01d2d93a8023c3eebaaa922d395b377c6de9",
    "search_record_v1.sql": "68d8042f7d159001ed52f1715053e0f5994590599932b52235ab3ad1194ad629",
    "embed_pending_v1.sql": "b8994817e4f7dcded426e9aef58202a2f82549b2da3720038caf1b280acea94f",
}


def _frozen(name: str) -> str:
    return (Path(__file__).parent / "frozen" / f"0011_{name}").read_text(encoding="utf-8")


TABLES = [
    """
    CREATE TABLE historical_db.encoder_branches (
        version     integer NOT NULL REFERENCES historical_db.encoder_versions (version),
        branch      text NOT NULL CHECK (branch IN ('config', 'env', 'outcome')),
        n_features  integer NOT NULL CHECK (n_features >= 0),
        n_coords    integer NOT NULL CHECK (n_coords >= 0 AND n_coords <= 384),
        clip        double precision NOT NULL,
        scale       double precision NOT NULL,
        imputation  double precision[],
        PRIMARY KEY (version, branch)
    )
    """,
    """
    CREATE TABLE historical_db.encoder_features (
        version      integer NOT NULL,
        branch       text NOT NULL,
        position     integer NOT NULL,
        first_column integer NOT NULL,
        key          text NOT NULL,
        list_index   integer,
        field        text NOT NULL,
        kind         text NOT NULL CHECK (kind IN ('numeric', 'boolean', 'category')),
        transform    text CHECK (transform IN ('identity', 'log', 'signed_log', 'asin_sqrt', 'sqrt')),
        shift        double precision,
        center       double precision,
        scale        double precision,
        mean         double precision,
        weight       double precision NOT NULL,
        flag         boolean NOT NULL,
        categories   text[],
        has_missing  boolean NOT NULL,
        PRIMARY KEY (version, branch, position),
        FOREIGN KEY (version, branch) REFERENCES historical_db.encoder_branches (version, branch)
    )
    """,
    "CREATE INDEX encoder_features_key ON historical_db.encoder_features (version, branch, key)",
    """
    CREATE TABLE historical_db.encoder_matrices (
        version  integer NOT NULL REFERENCES historical_db.encoder_versions (version),
        matrix   text NOT NULL,
        row      integer NOT NULL,
        weights  vector NOT NULL,
        bias     double precision NOT NULL,
        PRIMARY KEY (version, matrix, row)
    )
    """,
    """
    CREATE FUNCTION historical_db.encoder_sql_state_immutable() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
    BEGIN
        RAISE EXCEPTION USING MESSAGE = 'the SQL encoder state of a registered version is immutable; '
            || 'fit a new version instead';
    END
    $fn$
    """,
    *[f"CREATE TRIGGER {t}_immutable BEFORE UPDATE OR DELETE ON historical_db.{t} "
      "FOR EACH ROW EXECUTE FUNCTION historical_db.encoder_sql_state_immutable()"
      for t in ("encoder_branches", "encoder_features", "encoder_matrices")],
    """
    DO $grant$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
            GRANT SELECT, INSERT ON historical_db.encoder_branches, historical_db.encoder_features,
                historical_db.encoder_matrices TO metaspace_writer;
            -- as roles_v2.sql grants every function of the schema (a rebuild from sql/ grants this one too)
            GRANT EXECUTE ON FUNCTION historical_db.encoder_sql_state_immutable() TO metaspace_writer;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_reader') THEN
            GRANT SELECT ON historical_db.encoder_branches, historical_db.encoder_features,
                historical_db.encoder_matrices TO metaspace_reader;
            GRANT EXECUTE ON FUNCTION historical_db.encoder_sql_state_immutable() TO metaspace_reader;
        END IF;
    END
    $grant$
    """,
]

# -- the derivation, frozen as released (the live one is metaspace/store/sql_encoders.py) ------------------

DIM = 384
BRANCHES = ("config", "env", "outcome")
MAX_VECTOR_DIM = 16_000


def _array(spec: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(spec["data"]), dtype="<f8").reshape(spec["shape"]).astype(np.float64)


def _derive(state: dict) -> tuple[list[tuple], list[tuple], list[tuple]] | None:
    if state.get("format_version") != 1:
        return None
    branches, features, matrices, scales = [], [], [], []
    imputation = state.get("imputation")
    for branch in BRANCHES:
        enc = state["branches"][branch]
        components, mean, embedding = _array(enc["components"]), _array(enc["mean"]), _array(enc["embedding"])
        k, d = components.shape if components.ndim == 2 else (0, 0)
        if d > MAX_VECTOR_DIM:
            return None
        column = 0
        for position, spec in enumerate(enc["features"]):
            kind = spec["kind"]
            if kind == "category":
                width = len(spec["categories"]) + (2 if spec["has_missing"] else 1)
            else:
                width = 2 if spec["flag"] else 1
            features.append((branch, position, column, spec["key"], spec.get("index"), spec.get("name", spec["key"]),
                             kind, spec.get("transform"), spec.get("shift"), spec.get("center"), spec.get("scale"),
                             spec.get("mean"), float(spec["weight"]), bool(spec.get("flag", False)),
                             list(spec["categories"]) if kind == "category" else None,
                             bool(spec.get("has_missing", False))))
            column += width
        impute = _array(imputation[branch]).tolist() if imputation else None
        branches.append((branch, d, k, float(enc["params"]["clip"]), float(state["scales"][branch]), impute))
        if d > DIM:
            matrices += [(f"{branch}.pca", r, components[r], float(-components[r] @ mean)) for r in range(k)]
        if k:
            matrices += [(f"{branch}.embed", i, embedding[i], 0.0) for i in range(DIM)]
        scales.append(np.full(k, float(state["scales"][branch])))
    scale = np.concatenate(scales)
    components, mean, embedding = _array(state["components"]), _array(state["mean"]), _array(state["embedding"])
    if scale.size:
        joint = embedding @ components
        offset = -(joint @ mean)
        weights = joint * scale
        matrices += [("joint", i, weights[i], float(offset[i])) for i in range(DIM)]
    return branches, features, matrices


def _write(raw, version: int, state: dict) -> bool:
    rows = _derive(state)
    if rows is None:
        return False
    branches, features, matrices = rows
    with raw.cursor() as cur:
        cur.executemany(
            "INSERT INTO historical_db.encoder_branches (version, branch, n_features, n_coords, clip, scale, "
            "imputation) VALUES (%s, %s, %s, %s, %s, %s, %s)", [(version, *row) for row in branches])
        cur.executemany(
            "INSERT INTO historical_db.encoder_features (version, branch, position, first_column, key, list_index, "
            "field, kind, transform, shift, center, scale, mean, weight, flag, categories, has_missing) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(version, *row) for row in features])
        with cur.copy("COPY historical_db.encoder_matrices (version, matrix, row, weights, bias) FROM STDIN") as copy:
            for matrix, row, weights, bias in matrices:
                text = "[" + ",".join(repr(float(w)) for w in weights.astype(np.float32)) + "]"
                copy.write_row((version, matrix, row, text, bias))
    return True


def _derive_registered_versions() -> None:
    if context.is_offline_mode():
        op.execute("-- versions registered before 0011: run `metaspace migrate` online to derive their SQL state")
        return
    raw = op.get_bind().connection.driver_connection
    for version, state in raw.execute("SELECT version, state FROM historical_db.encoder_versions "
                                      "WHERE model_id = 'joint-meta-config-env-v1' ORDER BY version").fetchall():
        _write(raw, version, state)


def upgrade() -> None:
    for statement in TABLES:
        op.execute(statement)
    _derive_registered_versions()
    op.execute(_frozen("pin_search_path_v1.sql"))
    op.execute(_frozen("encode_v1.sql"))
    op.execute(_frozen("search_record_v1.sql"))
    op.execute(_frozen("embed_pending_v1.sql"))


def downgrade() -> None:
    for signature in [
        "embed_pending_v1(integer)", "encode_run_v1(integer, jsonb, jsonb, jsonb)",
        "suggest_for_env_v1(jsonb, integer, date, text, boolean, integer, integer, text[], boolean)",
        "search_record_v1(jsonb, integer, text, date, text[], text[], jsonb, boolean)", "record_as_of_v1(jsonb, date)",
        "encode_v1(text, jsonb, integer)", "encoder_version_v1(integer)",
        "encoder_joint_v1(integer, double precision[], double precision[], double precision[], double precision[], "
        "double precision[], double precision[])",
        "encoder_branch_v1(integer, text, jsonb)", "encoder_blame_v1(integer, text, double precision[])",
        "encoder_matvec_v1(integer, text, double precision[])", "encoder_features_v1(integer, text, jsonb)",
        "encoder_label_v1(jsonb)",
    ]:
        op.execute(f"DROP FUNCTION historical_db.{signature}")
    op.execute("DROP TABLE historical_db.encoder_matrices, historical_db.encoder_features, "
               "historical_db.encoder_branches")
    op.execute("DROP FUNCTION historical_db.encoder_sql_state_immutable()")
