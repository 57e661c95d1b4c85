"""A numeric branch encoder: one branch of a run record (config, env or outcome) to a point in R^384.

Fit learns a feature schema from history (see docs/encoders.md); transform is vectorised per feature.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metaspace.encoders.features import (
    SCALAR_TYPES,
    decode_array,
    encode_array,
    flatten,
    is_missing,
    is_number,
    orthonormal_embedding,
)
from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.names import BRANCH_MODELS

DIM = 384
FORMAT_VERSION = 1
OTHER = "__other__"
MISSING = "__missing__"
TRANSFORMS = ("identity", "log", "signed_log", "asin_sqrt", "sqrt")
ONE_HOT_SCALE = 1 / math.sqrt(2)  # two different categories are 1 apart


class EncodingError(InvalidRecordError):
    """A value cannot be encoded: names the run and the key."""


class SchemaDriftWarning(UserWarning):
    """Keys unseen at fit time were ignored."""


class EncoderFormatError(MetaspaceError, ValueError):
    """A stored encoder state was written by encoders of another format version."""


def check_format_version(state: Mapping[str, Any], what: str) -> None:
    """Refuse a state of another format version: this code would not reproduce its registered vectors."""
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise EncoderFormatError(
            f"{what} state is of format {version!r}, and this metaspace reads format {FORMAT_VERSION} only: "
            f"it would not reproduce the vectors registered with that state. Fit a new encoder version with "
            f"`metaspace embed-runs --rebuild`, or read the old one with the metaspace release that wrote it."
        )


def _robust_scale(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    center = float(np.median(finite))
    if not math.isfinite(center):  # the two middle values' mean overflowed
        center = float(np.percentile(finite, 50, method="lower"))
    q25, q75 = np.percentile(finite, [25, 75])
    scale = float(q75 - q25) / 1.349
    if scale <= 1e-12:
        scale = float(np.std(finite))
    if scale <= 1e-12:
        scale = 1.0
    if not math.isfinite(scale):  # values near the float64 limit: their spread overflows
        scale = float(np.max(np.abs(finite)))
    return center, scale


def _finite(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def _choose_transform(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if finite.size < 2 or np.ptp(finite) == 0:
        return "identity"
    lo, hi = np.percentile(finite, [1, 99])
    if finite.min() >= 0 and finite.max() <= 1:
        return "asin_sqrt"
    if finite.min() > 0 and hi / max(lo, 1e-300) >= 30:
        return "log"
    q25, q75 = np.percentile(finite, [25, 75])
    if (hi - lo) > 20 * max(q75 - q25, 1e-12):
        return "signed_log"
    return "identity"


def _apply(transform: str, x: np.ndarray, shift: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        if transform == "log":
            return np.log(np.maximum(x, 1e-300))
        if transform == "signed_log":
            return np.sign(x) * np.log1p(np.abs(x) / shift)
        if transform == "asin_sqrt":
            return np.arcsin(np.sqrt(np.clip(x, 0.0, 1.0)))
        if transform == "sqrt":
            return np.sqrt(np.clip(x, 0.0, 1.0))
    if transform != "identity":
        raise ValueError(f"unknown transform {transform!r}: use one of {', '.join(TRANSFORMS)}")
    return x


def _simplex_groups(numeric: dict[str, np.ndarray]) -> list[list[str]]:
    """Sibling keys whose values are proportions summing to one: a distribution such as a regime mix."""
    by_parent: dict[str, list[str]] = {}
    for key in numeric:
        parent = key.rpartition(".")[0]
        by_parent.setdefault(parent, []).append(key)
    groups = []
    for keys in by_parent.values():
        if len(keys) < 2:
            continue
        block = np.column_stack([numeric[k] for k in keys])
        present = np.isfinite(block).all(axis=1)
        if present.sum() < 2:
            continue
        rows = block[present]
        if rows.min() < 0 or rows.max() > 1:
            continue
        if np.mean(np.abs(rows.sum(axis=1) - 1) <= 0.02) >= 0.95:
            groups.append(sorted(keys))
    return groups


class BranchEncoder:
    """Encode one branch of run records into R^384 (float32), scikit-learn style.

    Parameters are only stored here; ``fit`` learns the schema. ``overrides`` maps a dotted key to
    ``{"ignore": true}``, ``{"transform": "log"}``, ``{"kind": "category"}`` and/or ``{"weight": 2.0}``.
    """

    def __init__(
        self,
        branch: str,
        model_id: str | None = None,
        *,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        min_category_count: int = 5,
        min_category_fraction: float = 0.001,
        clip: float = 5.0,
        max_list_length: int = 16,
        seed: int = 0,
    ):
        self.branch = branch
        self.model_id = model_id or BRANCH_MODELS[branch]
        self.overrides = overrides
        self.min_category_count = min_category_count
        self.min_category_fraction = min_category_fraction
        self.clip = clip
        self.max_list_length = max_list_length
        self.seed = seed

    # -- fit -------------------------------------------------------------------------------------

    def fit(self, records: Sequence[Mapping[str, Any] | None]) -> BranchEncoder:
        """Learn the schema from a history. A value that cannot be encoded (an integer beyond float64, a
        branch that is not an object) counts as missing here; transform reports it as an EncodingError."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fit([_flatten_or_empty(r) for r in records])

    def _fit(self, flats: list[dict[str, Any]]) -> BranchEncoder:
        n = len(flats)
        overrides = dict(self.overrides or {})
        kinds, lists = self._kinds(flats, overrides)
        numeric_values: dict[str, np.ndarray] = {}
        for key, kind in kinds.items():
            if kind == "numeric":
                numeric_values[key] = self._numeric_column(flats, key, None, strict=False)
            elif kind == "list":
                for i in range(lists[key]):
                    numeric_values[f"{key}[{i}]"] = self._numeric_column(flats, key, i, strict=False)
        groups = [g for g in _simplex_groups(numeric_values) if not any("transform" in overrides.get(k, {}) for k in g)]
        in_group = {k: g for g in groups for k in g}
        group_scale = {}
        for group in groups:
            block = np.sqrt(np.clip(np.column_stack([numeric_values[k] for k in group]), 0, 1))
            total_var = float(np.nansum(np.nanvar(block, axis=0)))
            group_scale[tuple(group)] = math.sqrt(total_var) if total_var > 1e-12 else 1.0

        specs: list[dict[str, Any]] = []
        for key in sorted(kinds):
            kind = kinds[key]
            weight = float(overrides.get(key, {}).get("weight", 1.0))
            if kind == "category":
                specs.append(self._fit_category(flats, key, weight, n))
            elif kind == "boolean":
                col = self._numeric_column(flats, key, None, strict=False)
                col[(col < 0) | (col > 1)] = np.nan  # a number given for a flag says nothing about its mean
                mean = float(np.nanmean(col)) if np.isfinite(col).any() else 0.5
                specs.append({"key": key, "kind": "boolean", "mean": mean, "weight": weight,
                              "flag": bool(np.isnan(col).any())})
            else:
                names = [key] if kind == "numeric" else [f"{key}[{i}]" for i in range(lists[key])]
                for index, name in enumerate(names):
                    values = numeric_values[name]
                    pinned = overrides.get(key, {}).get("transform")
                    spec = {"key": key, "index": None if kind == "numeric" else index, "name": name,
                            "kind": "numeric", "weight": weight, "flag": bool(np.isnan(values).any())}
                    if name in in_group and not pinned:
                        group = in_group[name]
                        transformed = np.sqrt(np.clip(values, 0, 1))
                        spec.update(transform="sqrt", shift=1.0, group=".".join(group[0].split(".")[:-1]),
                                    center=float(np.nanmean(transformed)) if np.isfinite(values).any() else 0.0,
                                    scale=group_scale[tuple(group)])
                    else:
                        transform = pinned or _choose_transform(values)
                        if transform not in TRANSFORMS:
                            raise ValueError(f"schema override for {key!r}: unknown transform {transform!r}")
                        finite = np.abs(values[np.isfinite(values)])
                        shift = float(np.median(finite)) if finite.size and np.median(finite) > 0 else 1.0
                        if not math.isfinite(shift):  # the two middle values' mean overflowed
                            shift = float(np.percentile(finite, 50, method="lower")) or 1.0
                        center, scale = _robust_scale(_apply(transform, values, shift))
                        spec.update(transform=transform, shift=shift, center=center, scale=scale)
                    specs.append(spec)
        self.features_ = specs
        self.n_fit_records_ = n
        seen = {key for flat in flats for key in flat}
        self.ignored_keys_ = sorted((seen | {k for k, o in overrides.items() if o.get("ignore")}) - set(kinds))
        X = self._features(flats, None, errors=None)
        self._fit_projection(X)
        return self

    def _kinds(self, flats: list[dict[str, Any]], overrides: dict) -> tuple[dict[str, str], dict[str, int]]:
        seen: dict[str, Counter] = {}
        lengths: dict[str, int] = {}
        for flat in flats:
            for key, value in flat.items():
                counter = seen.setdefault(key, Counter())
                if value is None:
                    counter["null"] += 1
                elif isinstance(value, bool):
                    counter["bool"] += 1
                elif is_number(value):
                    counter["number"] += 1
                elif isinstance(value, str):
                    counter["str"] += 1
                elif isinstance(value, (list, tuple)):
                    counter["list"] += 1
                    lengths[key] = max(lengths.get(key, 0), len(value))
                else:
                    counter["other"] += 1
        kinds: dict[str, str] = {}
        for key, counter in seen.items():
            override = overrides.get(key, {})
            if override.get("ignore"):
                continue
            if override.get("kind"):
                kinds[key] = override["kind"]
            elif counter["list"] and not (counter["str"] or counter["other"]):
                kinds[key] = "list"
            elif counter["str"] or counter["other"]:
                kinds[key] = "category"
            elif counter["number"]:
                kinds[key] = "numeric"
            elif counter["bool"]:
                kinds[key] = "boolean"
        for key, kind in kinds.items():
            if kind not in ("numeric", "boolean", "category", "list"):
                raise ValueError(f"schema override for {key!r}: unknown kind {kind!r}")
        lists = {k: min(lengths.get(k, 0), self.max_list_length) for k, kind in kinds.items() if kind == "list"}
        kinds = {k: v for k, v in kinds.items() if v != "list" or lists[k] > 0}
        return kinds, lists

    def _fit_category(self, flats: list[dict[str, Any]], key: str, weight: float, n: int) -> dict[str, Any]:
        counts = Counter(_category(flat.get(key)) for flat in flats)
        has_missing = counts.pop(None, 0) > 0
        floor = max(self.min_category_count, self.min_category_fraction * n)
        kept = sorted(value for value, count in counts.items() if count >= floor)
        return {"key": key, "kind": "category", "categories": kept, "has_missing": has_missing, "weight": weight}

    def _fit_projection(self, X: np.ndarray) -> None:
        d = X.shape[1]
        if d <= DIM:
            self.mean_ = np.zeros(d)
            self.components_ = np.eye(d)
            self.explained_variance_ratio_ = 1.0
        else:
            self.mean_ = X.mean(axis=0)
            cov = np.cov(X - self.mean_, rowvar=False)
            eigenvalues, eigenvectors = np.linalg.eigh(cov)
            order = np.argsort(eigenvalues)[::-1][:DIM]
            signs = np.sign(eigenvectors[np.argmax(np.abs(eigenvectors[:, order]), axis=0), order])
            self.components_ = (eigenvectors[:, order] * signs).T
            total = float(eigenvalues.clip(min=0).sum())
            self.explained_variance_ratio_ = float(eigenvalues[order].clip(min=0).sum() / total) if total else 1.0
        k = self.components_.shape[0]
        self.embedding_ = orthonormal_embedding(DIM, k, self.seed)
        coords = self._coordinates(X)
        typical = float(math.sqrt(2 * coords.var(axis=0).sum())) if len(coords) > 1 else 0.0
        self.typical_distance_ = _finite(typical, 0.0)

    def _fit_coordinates(self, records: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
        """Coordinates of the history as fit sees it: unencodable values are missing, not errors."""
        return self._coordinates(self._features([_flatten_or_empty(r) for r in records], None, errors=None))

    # -- transform -------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "features_"):
            raise RuntimeError(f"{self.model_id} is not fitted: call fit(records) first")

    def transform(self, records: Sequence[Mapping[str, Any] | None], run_ids: Sequence[str] | None = None) -> np.ndarray:
        """Vectors of shape (n, 384), float32. Raises EncodingError naming the run and key of a bad value."""
        vectors, errors = self.transform_with_errors(records, run_ids)
        if errors:
            first = min(errors)
            raise errors[first]
        return vectors

    def transform_with_errors(
        self, records: Sequence[Mapping[str, Any] | None], run_ids: Sequence[str] | None = None
    ) -> tuple[np.ndarray, dict[int, EncodingError]]:
        """Vectors for every record, and the errors of those that could not be encoded (their rows are zero)."""
        X, coords, errors, ids = self._encode_rows(records, run_ids)
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite row becomes an EncodingError
            vectors = (coords @ self.embedding_.T).astype(np.float32)
        self._refuse_non_finite(vectors, X, ids, errors)
        if errors:
            vectors[list(errors)] = 0.0
        return vectors, errors

    def _encode_rows(
        self, records: Sequence[Mapping[str, Any] | None], run_ids: Sequence[str] | None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, EncodingError], list[str]]:
        """Features X and coordinates of every record (rows of records with an error zeroed), the errors, the ids."""
        self._check_fitted()
        ids = list(run_ids) if run_ids is not None else [f"#{i}" for i in range(len(records))]
        errors: dict[int, EncodingError] = {}
        try:
            flats = [flatten(r) for r in records]
        except TypeError:
            flats = []
            for i, record in enumerate(records):
                try:
                    flats.append(flatten(record))
                except TypeError as exc:
                    flats.append({})
                    errors[i] = EncodingError(ids[i], self.branch, str(exc))
        X = self._features(flats, ids, errors)
        self._count_drift(flats)
        coords = self._coordinates(X)
        if errors:
            coords[list(errors)] = 0.0
        return X, coords, errors, ids

    def _refuse_non_finite(self, out: np.ndarray, X: np.ndarray, ids: list[str], errors: dict) -> None:
        """A record whose output is not finite (a value too large for the float32 vector) is an error naming
        its largest feature; the pgvector column could not hold its vector."""
        bad = ~np.isfinite(out).all(axis=1)
        if not bad.any():
            return
        for i in np.flatnonzero(bad):
            if int(i) not in errors:
                errors[int(i)] = EncodingError(ids[i], f"{self.branch}.{self.blame(X[i])}",
                                               "the value is too large to encode: its vector would not be finite")

    def blame(self, features: np.ndarray) -> str:
        """The field (dotted key) of the largest feature of one row of features."""
        magnitude = np.where(np.isfinite(features), np.abs(features), np.inf)
        return self._column_fields()[int(np.argmax(magnitude))]

    def _column_fields(self) -> list[str]:
        fields: list[str] = []
        for spec in self.features_:
            if spec["kind"] == "category":
                fields += [spec["key"]] * (len(spec["categories"]) + (2 if spec["has_missing"] else 1))
            else:
                fields += [spec.get("name", spec["key"])] * (2 if spec["flag"] else 1)
        return fields

    def fit_transform(self, records: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
        return self.fit(records).transform(records)

    def _coordinates(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] <= DIM:
            return X
        return (X - self.mean_) @ self.components_.T

    def feature_keys(self, *, always_present: bool = False) -> list[str]:
        """The record keys (dotted) this encoder reads, as learned at fit time; with ``always_present``,
        only those no fitted record lacked (a conditional parameter is expected to be absent sometimes)."""
        self._check_fitted()
        return sorted({spec["key"] for spec in self.features_
                       if not (always_present and (spec.get("flag") or spec.get("has_missing")))})

    def _count_drift(self, flats: list[dict[str, Any]]) -> None:
        known = set(self.feature_keys()) | set(self.ignored_keys_)
        unknown = Counter(key for flat in flats for key in flat.keys() - known)
        self.last_unknown_keys_ = dict(unknown)
        if unknown:
            shown = ", ".join(f"{_shorten(k)} ({c})" for k, c in unknown.most_common(5))
            warnings.warn(
                f"{self.model_id}: ignored {sum(unknown.values())} value(s) of {len(unknown)} key(s) unseen at fit "
                f"time: {shown}", SchemaDriftWarning, stacklevel=3,
            )

    def get_feature_names_out(self) -> list[str]:
        self._check_fitted()
        names: list[str] = []
        for spec in self.features_:
            if spec["kind"] == "category":
                names += [f"{spec['key']}={c}" for c in spec["categories"]] + [f"{spec['key']}={OTHER}"]
                if spec["has_missing"]:
                    names.append(f"{spec['key']}={MISSING}")
            else:
                names.append(spec.get("name", spec["key"]))
                if spec["flag"]:
                    names.append(f"{spec.get('name', spec['key'])}__missing")
        return names

    def _features(self, flats: list[dict[str, Any]], ids: list[str] | None, errors: dict | None) -> np.ndarray:
        columns: list[np.ndarray] = []
        for spec in self.features_:
            if spec["kind"] == "category":
                columns.extend(self._category_columns(flats, spec))
                continue
            raw = self._numeric_column(flats, spec["key"], spec.get("index"), strict=errors is not None,
                                       ids=ids, errors=errors, boolean=spec["kind"] == "boolean")
            missing = np.isnan(raw)
            if spec["kind"] == "boolean":
                values = np.where(missing, spec["mean"], raw) * spec["weight"]
            else:
                with np.errstate(over="ignore"):  # a value near the float64 limit: clipped just below
                    z = (_apply(spec["transform"], raw, spec["shift"]) - spec["center"]) / spec["scale"]
                values = np.clip(np.where(missing, 0.0, z), -self.clip, self.clip) * spec["weight"]
            columns.append(values)
            if spec["flag"]:
                columns.append(missing.astype(np.float64) * spec["weight"])
        if not columns:
            return np.zeros((len(flats), 0))
        return np.column_stack(columns)

    def _category_columns(self, flats: list[dict[str, Any]], spec: dict[str, Any]) -> list[np.ndarray]:
        categories = spec["categories"]
        lookup = {c: i for i, c in enumerate(categories)}
        other = len(categories)
        missing = other + 1
        width = other + (2 if spec["has_missing"] else 1)
        codes = np.fromiter(
            (missing if (c := _category(flat.get(spec["key"]))) is None else lookup.get(c, other) for flat in flats),
            dtype=np.int64, count=len(flats),
        )
        block = np.zeros((len(flats), width + 1))
        block[np.arange(len(flats)), codes] = ONE_HOT_SCALE * spec["weight"]
        return list(block[:, :width].T)

    def _numeric_column(
        self, flats: list[dict[str, Any]], key: str, index: int | None, *, strict: bool,
        ids: list[str] | None = None, errors: dict | None = None, boolean: bool = False,
    ) -> np.ndarray:
        if index is None:
            values = [flat.get(key) for flat in flats]
        else:
            values = [_list_item(flat.get(key), index) for flat in flats]
        column = None
        if set(map(type, values)) <= SCALAR_TYPES:
            try:
                column = np.array(values, dtype=np.float64)
            except OverflowError:  # an integer beyond float64: sorted out one by one below
                column = None
        if column is None:
            column = np.full(len(values), np.nan)
            for i, value in enumerate(values):
                if is_missing(value):
                    continue
                reason = None
                if is_number(value) or isinstance(value, bool):
                    try:
                        column[i] = float(value)
                    except OverflowError:
                        reason = f"{_describe(value)} is beyond the range of a float64 number"
                else:
                    reason = f"expected {'true/false' if boolean else 'a number'}, got {_describe(value)}"
                if reason and strict and errors is not None and i not in errors:
                    field = key if index is None else f"{key}[{index}]"
                    errors[i] = EncodingError(ids[i], f"{self.branch}.{field}", reason)
        column[~np.isfinite(column)] = np.nan
        return column

    # -- state -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "branch": self.branch,
            "model_id": self.model_id,
            "format_version": FORMAT_VERSION,
            "params": {"overrides": self.overrides, "min_category_count": self.min_category_count,
                       "min_category_fraction": self.min_category_fraction, "clip": self.clip,
                       "max_list_length": self.max_list_length, "seed": self.seed},
            "features": self.features_,
            "ignored_keys": self.ignored_keys_,
            "n_fit_records": self.n_fit_records_,
            "mean": encode_array(self.mean_),
            "components": encode_array(self.components_),
            "embedding": encode_array(self.embedding_),
            "explained_variance_ratio": self.explained_variance_ratio_,
            "typical_distance": self.typical_distance_,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> BranchEncoder:
        check_format_version(state, f"the {state.get('model_id', 'branch encoder')}")
        encoder = cls(state["branch"], state["model_id"], **state["params"])
        encoder.features_ = [dict(spec) for spec in state["features"]]
        encoder.ignored_keys_ = list(state["ignored_keys"])
        encoder.n_fit_records_ = state["n_fit_records"]
        encoder.mean_ = decode_array(state["mean"])
        encoder.components_ = decode_array(state["components"])
        encoder.embedding_ = decode_array(state["embedding"])
        encoder.explained_variance_ratio_ = state["explained_variance_ratio"]
        encoder.typical_distance_ = state["typical_distance"]
        return encoder


def _category(value: Any) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):  # only past flatten's depth limit
        return "<object>"
    try:
        return repr(value)
    except (ValueError, RecursionError):  # an integer past str()'s digit limit, a list nested too deep
        return f"<{type(value).__name__}>"


def _flatten_or_empty(record: Any) -> dict[str, Any]:
    try:
        return flatten(record)
    except TypeError:
        return {}


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _list_item(value: Any, index: int) -> Any:
    if isinstance(value, (list, tuple)):
        return value[index] if index < len(value) else None
    return value if index == 0 else None


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
        return f"an integer of {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
