"""From nested branch objects to named leaves, and the portable form of numeric arrays."""

from __future__ import annotations

import base64
import decimal
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NUMBER_TYPES = (int, float)
SCALAR_TYPES = frozenset({int, float, bool, type(None)})
MAX_DEPTH = 100  # objects nested deeper are kept whole, as one opaque leaf


def flatten(branch: Mapping[str, Any] | None) -> dict[str, Any]:
    """Nested keys become dotted names; leaves (numbers, booleans, strings, nulls, lists) are kept as they are.

    An object nested more than MAX_DEPTH levels deep stays whole as the value of its dotted name, so that
    no record can exhaust the interpreter's stack. A branch that is not an object raises TypeError."""
    out: dict[str, Any] = {}
    if branch is None:
        return out
    if not isinstance(branch, Mapping):
        raise TypeError(f"expected an object, got {type(branch).__name__}")
    _flatten_into(out, branch, "", 0)
    return out


def _flatten_into(out: dict[str, Any], branch: Mapping[str, Any], prefix: str, depth: int) -> None:
    for key, value in branch.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < MAX_DEPTH:
            _flatten_into(out, value, name + ".", depth + 1)
        else:
            out[name] = value


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
    return json.dumps(_as_stored(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _as_stored(value: Any) -> Any:
    """Numbers as PostgreSQL's jsonb gives them back: a whole float of 1e16 or more (which Python writes with an
    exponent) comes back as an integer, so the fingerprint of a stored state is the one it had when fitted."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e16:
        return int(decimal.Decimal(repr(value)))  # the digits written, as jsonb keeps them
    if isinstance(value, dict):
        return {key: _as_stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_stored(item) for item in value]
    return value


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
