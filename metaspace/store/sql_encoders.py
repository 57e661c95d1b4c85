"""The fitted state of an encoder version in the form the SQL encoders read (sql/encode_v1.sql).

historical_db.encode_v1 computes inside PostgreSQL the vector the Python encoders give. It reads three
tables, written here when a version is registered (and by revision 0011 for versions registered before):

- ``encoder_branches``: per branch, the number of features and coordinates, the clip, the joint scale and
  the imputation (the mean coordinates of the fit sample; NULL in states that did not keep it);
- ``encoder_features``: per feature spec, in column order: kind, transform, statistics, categories;
- ``encoder_matrices``: the linear maps as pgvector rows, so matrix-vector products run in C (``<#>``):
  ``<branch>.pca`` (when a branch has more than 384 features), ``<branch>.embed`` (384 x k) and ``joint``
  (the joint projection, its embedding and the branch scales folded into one 384 x (k_c + k_e + k_o) map).

Products of float64 matrices are formed here in float64 and stored as float32 rows.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import psycopg

DIM = 384
BRANCHES = ("config", "env", "outcome")
MAX_VECTOR_DIM = 16_000  # pgvector's limit for one vector
# The encoder state format that sql/encode_v1.sql implements: a fact about the SQL, not a second copy of the
# format Python writes (metaspace.encoders.branch.FORMAT_VERSION). A state of another format is not derived,
# and encode_v1 refuses it, rather than SQL encoding it by rules it does not follow; tests/test_sql_encoders.py
# fails when Python's format moves on without a SQL encoder for it.
SQL_ENCODER_FORMAT = 1


def _array(spec: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(spec["data"])
    return np.frombuffer(raw, dtype="<f8").reshape(spec["shape"]).astype(np.float64)


def derive(state: Mapping[str, Any]) -> tuple[list[tuple], list[tuple], list[tuple]] | None:
    """(branches, features, matrices) rows of a state, without the version; None if SQL cannot encode it
    (another format version, or a branch wider than a pgvector row)."""
    if state.get("format_version") != SQL_ENCODER_FORMAT:
        return None
    branches, features, matrices = [], [], []
    coords = []
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
        coords.append(np.full(k, float(state["scales"][branch])))
    scales = np.concatenate(coords)
    components, mean, embedding = _array(state["components"]), _array(state["mean"]), _array(state["embedding"])
    if scales.size:
        joint = embedding @ components
        offset = -(joint @ mean)
        weights = joint * scales
        matrices += [("joint", i, weights[i], float(offset[i])) for i in range(DIM)]
    return branches, features, matrices


def write(conn: psycopg.Connection, version: int, state: Mapping[str, Any]) -> bool:
    """Store a registered version's state for the SQL encoders; False if SQL cannot encode this state."""
    rows = derive(state)
    if rows is None:
        return False
    branches, features, matrices = rows
    with conn.cursor() as cur:
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
