"""From nested branch objects to named leaves, and the portable form of numeric arrays."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NUMBER_TYPES = (int, float)
SCALAR_TYPES = frozenset({int, float, bool, type(None)})


def flatten(branch: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Nested keys become dotted names; leaves (numbers, booleans, strings, nulls, lists) are kept as they are."""
    out: dict[str, Any] = {}
    if not branch:
        return out
    for key, value in branch.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def is_number(value: Any) -> bool:
    return type(value) in (int, float) or (isinstance(value, NUMBER_TYPES) and not isinstance(value, bool))


def is_missing(value: Any) -> bool:
    return value is None or (type(value) is float and not math.isfinite(value))


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A numeric array as JSON: little-endian float64 bytes in base64, with the shape."""
    data = np.ascontiguousarray(array, dtype="<f8")
    return {"dtype": "<f8", "shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(spec: Mapping[str, Any]) -> np.ndarray:
    if spec.get("dtype") != "<f8":
        raise ValueError(f"unsupported array dtype {spec.get('dtype')!r} in encoder state")
    raw = base64.b64decode(spec["data"])
    return np.frombuffer(raw, dtype="<f8").reshape(spec["shape"]).astype(np.float64)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(state: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a state (without its own fingerprint)."""
    body = {k: v for k, v in state.items() if k != "fingerprint"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def orthonormal_embedding(dim: int, k: int, seed: int) -> np.ndarray:
    """A (dim, k) matrix with orthonormal columns: an isometric embedding of R^k into R^dim."""
    if k == 0:
        return np.zeros((dim, 0))
    gaussian = np.random.default_rng(seed).standard_normal((dim, k))
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r))
