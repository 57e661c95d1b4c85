"""The joint model joint-meta-config-env-v1: three branch encoders combined into one point in R^384.

Each branch b gives coordinates c_b (its transformed features, or their top principal components when
it has more than 384) and an isometric image z_b = Q_b c_b in R^384. The joint vector is a linear map of
the concatenation [s_config c_config, s_env c_env, s_outcome c_outcome], with s_b = w_b / t_b and t_b the
branch's typical (root-mean-square) pairwise distance on the fitted history, embedded orthonormally in
R^384 (or reduced by PCA when the three together exceed 384 dimensions). Where they fit,

    d_joint(x, y)^2 = sum_b (w_b / t_b)^2 * d_b(x, y)^2

exactly, so no branch dominates because it has more fields: each contributes w_b^2 on average.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metaspace.encoders.branch import DIM, FORMAT_VERSION, BranchEncoder, EncodingError, check_format_version
from metaspace.encoders.features import (
    decode_array,
    encode_array,
    fingerprint,
    orthonormal_embedding,
)
from metaspace.names import BRANCHES, JOINT_MODEL


@dataclass
class EncodedRuns:
    """The joint and branch vectors of a batch of runs, and the runs that could not be encoded."""

    joint: np.ndarray
    branches: dict[str, np.ndarray]
    errors: dict[int, EncodingError]

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.joint), dtype=bool)
        mask[list(self.errors)] = False
        return mask

    def vectors(self) -> dict[str, np.ndarray]:
        """Every space's vectors by name: joint, config, env, outcome."""
        return {"joint": self.joint, **self.branches}


class MetaSpace:
    """The three branch encoders and the joint model, fitted together on a history of run records."""

    def __init__(
        self,
        *,
        weights: Mapping[str, float] | None = None,
        overrides: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        min_category_count: int = 5,
        clip: float = 5.0,
        seed: int = 0,
    ):
        self.weights = weights
        self.overrides = overrides
        self.min_category_count = min_category_count
        self.clip = clip
        self.seed = seed

    def fit(self, runs: Sequence[Mapping[str, Any]]) -> MetaSpace:
        if len(runs) < 2:
            raise ValueError("fitting needs at least two runs")
        weights = {b: 1.0 for b in BRANCHES} | dict(self.weights or {})
        self.branches_ = {}
        blocks = []
        self.scales_ = {}
        self.imputation_ = {}
        for i, branch in enumerate(BRANCHES):
            encoder = BranchEncoder(
                branch, overrides=(self.overrides or {}).get(branch), min_category_count=self.min_category_count,
                clip=self.clip, seed=self.seed + i,
            )
            records = [run.get(branch) if isinstance(run, Mapping) else None for run in runs]
            encoder.fit(records)
            self.branches_[branch] = encoder
            typical = encoder.typical_distance_
            self.scales_[branch] = float(weights[branch] / typical) if typical > 1e-12 else float(weights[branch])
            coords = encoder._fit_coordinates(records)
            blocks.append(coords * self.scales_[branch])
            self.imputation_[branch] = coords.mean(axis=0)
        self.weights_ = weights
        u = np.hstack(blocks)
        if u.shape[1] <= DIM:
            self.mean_ = np.zeros(u.shape[1])
            self.components_ = np.eye(u.shape[1])
            self.explained_variance_ratio_ = 1.0
        else:
            self.mean_ = u.mean(axis=0)
            _, singular, vt = np.linalg.svd(u - self.mean_, full_matrices=False)
            signs = np.sign(vt[np.arange(DIM), np.argmax(np.abs(vt[:DIM]), axis=1)])
            self.components_ = vt[:DIM] * signs[:, None]
            energy = singular**2
            self.explained_variance_ratio_ = float(energy[:DIM].sum() / energy.sum()) if energy.sum() else 1.0
        self.embedding_ = orthonormal_embedding(DIM, self.components_.shape[0], self.seed + 99)
        self.n_fit_runs_ = len(runs)
        self.fingerprint_ = fingerprint(self._state())
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "branches_"):
            raise RuntimeError(f"{JOINT_MODEL} is not fitted: call fit(runs) first")

    def encode(self, runs: Sequence[Mapping[str, Any]]) -> EncodedRuns:
        """Joint and branch vectors for each run; runs that fail encoding are listed, their rows zero.

        Never raises for a run's content: a value that cannot be encoded is an EncodingError naming the run
        and the field, and the other runs are encoded as if it were not in the batch."""
        self._check_fitted()
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite row becomes an EncodingError
            return self._encode(runs)

    def _encode(self, runs: Sequence[Mapping[str, Any]]) -> EncodedRuns:
        errors: dict[int, EncodingError] = {}
        try:
            ids = [str(run.get("run_id", f"#{i}")) for i, run in enumerate(runs)]
            per_branch = {b: [run.get(b) for run in runs] for b in BRANCHES}
        except (AttributeError, ValueError):  # a run that is not an object; a run_id str() refuses
            ids = [_run_id(run, i) for i, run in enumerate(runs)]
            per_branch = {b: [run.get(b) if isinstance(run, Mapping) else None for run in runs] for b in BRANCHES}
            errors = {i: EncodingError(ids[i], "(record)", f"expected an object, got {type(run).__name__}")
                      for i, run in enumerate(runs) if not isinstance(run, Mapping)}
        branch_vectors, blocks, features = {}, [], {}
        for branch in BRANCHES:
            encoder = self.branches_[branch]
            X, coords, branch_errors, _ = encoder._encode_rows(per_branch[branch], ids)
            vectors = (coords @ encoder.embedding_.T).astype(np.float32)
            encoder._refuse_non_finite(vectors, X, ids, branch_errors)
            if branch_errors:
                coords[list(branch_errors)] = 0.0
            for i, error in branch_errors.items():
                errors.setdefault(i, error)
            branch_vectors[branch] = vectors
            blocks.append(coords * self.scales_[branch])
            features[branch] = X
        joint = self._project(np.hstack(blocks)).astype(np.float32)
        self._refuse_non_finite_joint(joint, blocks, features, ids, errors)
        if errors:
            rows = list(errors)
            joint[rows] = 0.0
            for vectors in branch_vectors.values():
                vectors[rows] = 0.0
        return EncodedRuns(joint, branch_vectors, errors)

    def _refuse_non_finite_joint(self, joint: np.ndarray, blocks: list[np.ndarray], features: dict[str, np.ndarray],
                                 ids: list[str], errors: dict[int, EncodingError]) -> None:
        bad = ~np.isfinite(joint).all(axis=1)
        for i in np.flatnonzero(bad):
            if int(i) in errors:
                continue
            sizes = [np.max(np.abs(block[i]), initial=0.0) for block in blocks]
            branch = BRANCHES[int(np.argmax(np.nan_to_num(sizes, nan=np.inf)))]
            field = self.branches_[branch].blame(features[branch][i])
            errors[int(i)] = EncodingError(ids[i], f"{branch}.{field}",
                                           "the value is too large to encode: its joint vector would not be finite")

    def transform(self, runs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Joint vectors (n, 384) float32; raises EncodingError for the first run that cannot be encoded."""
        encoded = self.encode(runs)
        if encoded.errors:
            raise encoded.errors[min(encoded.errors)]
        return encoded.joint

    def fit_transform(self, runs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.fit(runs).transform(runs)

    def impute(self, branch: str) -> np.ndarray:
        """The branch vector standing in for a branch a query does not give: the mean of the branch vectors
        of the runs this version was fitted on (so it depends on nothing the fit did not see). A state
        registered before it was kept gives the point of a branch with every feature missing."""
        self._check_fitted()
        encoder = self.branches_[branch]
        if self.imputation_ is None:
            vectors, _ = encoder.transform_with_errors([{}], ["(imputed)"])
            return vectors[0]
        return (self.imputation_[branch] @ encoder.embedding_.T).astype(np.float32)

    def combine(self, z_config: np.ndarray, z_env: np.ndarray, z_outcome: np.ndarray) -> np.ndarray:
        """The joint vectors of given branch vectors: a linear map of their concatenation."""
        self._check_fitted()
        blocks = [
            np.asarray(z, dtype=np.float64) @ self.branches_[b].embedding_ * self.scales_[b]
            for b, z in zip(BRANCHES, (z_config, z_env, z_outcome))
        ]
        return self._project(np.hstack(blocks)).astype(np.float32)

    def _project(self, u: np.ndarray) -> np.ndarray:
        return ((u - self.mean_) @ self.components_.T) @ self.embedding_.T

    def get_feature_names_out(self) -> list[str]:
        self._check_fitted()
        return [f"{b}.{name}" for b, enc in self.branches_.items() for name in enc.get_feature_names_out()]

    def summary(self) -> dict[str, Any]:
        """What was learned, for humans: features per branch, variance kept, scales."""
        self._check_fitted()
        return {
            "model_id": JOINT_MODEL,
            "fingerprint": self.fingerprint_,
            "fitted_on_runs": self.n_fit_runs_,
            "branches": {
                b: {"model_id": enc.model_id, "features": len(enc.get_feature_names_out()),
                    "variance_kept": enc.explained_variance_ratio_, "typical_distance": enc.typical_distance_,
                    "scale": self.scales_[b], "weight": self.weights_[b]}
                for b, enc in self.branches_.items()
            },
            "joint_variance_kept": self.explained_variance_ratio_,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "model_id": JOINT_MODEL,
            "format_version": FORMAT_VERSION,
            "params": {"weights": self.weights, "overrides": self.overrides,
                       "min_category_count": self.min_category_count, "clip": self.clip, "seed": self.seed},
            "branches": {b: enc.to_dict() for b, enc in self.branches_.items()},
            "weights": self.weights_,
            "scales": self.scales_,
            "mean": encode_array(self.mean_),
            "components": encode_array(self.components_),
            "embedding": encode_array(self.embedding_),
            "explained_variance_ratio": self.explained_variance_ratio_,
            "n_fit_runs": self.n_fit_runs_,
        } | ({"imputation": {b: encode_array(v) for b, v in self.imputation_.items()}}
             if self.imputation_ is not None else {})

    def to_dict(self) -> dict[str, Any]:
        """The whole fitted state as JSON-able data (arrays as base64), with its sha256 fingerprint."""
        self._check_fitted()
        return copy.deepcopy(self._state()) | {"fingerprint": self.fingerprint_}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MetaSpace:
        if state.get("model_id") != JOINT_MODEL:
            raise ValueError(f"not a {JOINT_MODEL} state: model_id {state.get('model_id')!r}")
        check_format_version(state, f"the {JOINT_MODEL}")
        space = cls(**state["params"])
        # Canonical branch order, whatever order the stored JSON has (jsonb reorders keys): the joint map
        # concatenates the branches in this order.
        space.branches_ = {b: BranchEncoder.from_dict(state["branches"][b]) for b in BRANCHES}
        space.weights_ = dict(state["weights"])
        space.scales_ = dict(state["scales"])
        space.mean_ = decode_array(state["mean"])
        space.components_ = decode_array(state["components"])
        space.embedding_ = decode_array(state["embedding"])
        space.explained_variance_ratio_ = state["explained_variance_ratio"]
        space.n_fit_runs_ = state["n_fit_runs"]
        imputation = state.get("imputation")
        space.imputation_ = {b: decode_array(imputation[b]) for b in BRANCHES} if imputation else None
        space.fingerprint_ = fingerprint(space._state())
        if state.get("fingerprint") and state["fingerprint"] != space.fingerprint_:
            raise ValueError("encoder state does not match its fingerprint: it was changed after registration")
        return space


def _run_id(run: Any, index: int) -> str:
    run_id = run.get("run_id", f"#{index}") if isinstance(run, Mapping) else f"#{index}"
    try:
        return str(run_id)
    except ValueError:
        return f"#{index}"


def typical_distance(vectors: np.ndarray) -> float:
    """Root-mean-square pairwise distance of a set of points (closed form: sqrt(2 * total variance))."""
    return math.sqrt(2 * np.asarray(vectors, dtype=np.float64).var(axis=0).sum())
