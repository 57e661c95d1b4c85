"""Behaviour clusters (``metaspace cluster``): k-means over a space's stored vectors, written back with the
encoder version and parameters that produced them."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from metaspace.errors import MetaspaceError
from metaspace.keys import optional_objective
from metaspace.queries import active_version, check_space
from metaspace.store import clusters as cluster_store
from metaspace.store.clusters import Points
from metaspace.store.connection import connection

AUTO_K = range(2, 13)
SILHOUETTE_SAMPLE = 5_000


@dataclass
class ClusterSummary:
    label: int
    size: int
    objective_mean: float | None
    objective_std: float | None
    representative_configs: list[str]
    dominant_strategies: list[dict[str, Any]]


@dataclass
class ClusterResult:
    clustering_id: int
    space: str
    version: int
    k: int
    method: str
    quality: dict[str, Any]
    clusters: list[ClusterSummary] = field(default_factory=list)
    objective: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_k(vectors: np.ndarray, seed: int = 0) -> tuple[int, dict[int, float]]:
    """--auto: the k in 2..12 with the highest silhouette score (on a sample of at most 5,000 runs).

    Silhouette compares each run's distance to its own cluster with its distance to the next one; it is
    highest when clusters are compact and apart, and does not grow just because k grows (as inertia does).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(len(vectors), SILHOUETTE_SAMPLE), replace=False)]
    scores = {}
    for k in AUTO_K:
        if k >= len(sample):
            break
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels))
    if not scores:
        raise MetaspaceError("too few runs to choose k: give --k")
    return max(scores, key=scores.get), scores


def cluster(*, space: str = "joint", k: int | None = None, auto: bool = False, objective: str | None = None,
            seed: int = 0, database_url: str | None = None) -> ClusterResult:
    """k-means over the stored vectors of a space; labels stored with the encoder version and parameters.

    ``objective`` (an outcome key) is summarised per cluster; by default the only numeric outcome key, else the
    one named sharpe, if there is one."""
    from sklearn.cluster import KMeans

    check_space(space)
    if (k is None) == (not auto):
        raise MetaspaceError("give --k N or --auto")
    with connection(database_url, autocommit=True) as conn:
        key = optional_objective(conn, objective)
        points = cluster_store.points(conn, space, active_version(conn), key.path if key else None, None)
        if k is not None and not 1 <= k <= len(points.run_ids):
            raise MetaspaceError(f"--k {k}: must be between 1 and the number of embedded runs ({len(points.run_ids)})")
        quality: dict[str, Any] = {}
        if auto:
            k, scores = choose_k(points.vectors, seed)
            quality["silhouette_by_k"] = scores
        model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(points.vectors)
        distances = np.linalg.norm(points.vectors - model.cluster_centers_[model.labels_], axis=1)
        quality["inertia"] = float(model.inertia_)
        params = {"n_init": 4, "random_state": seed, "algorithm": "lloyd", "auto": auto,
                  "criterion": "silhouette, k in 2..12, sample 5000" if auto else None}
        with conn.transaction():
            clustering_id = cluster_store.save_clustering(
                conn, space, points.version, k, "kmeans", params, quality, points.run_ids, model.labels_, distances)
    result = ClusterResult(clustering_id, space, points.version, k, "kmeans", quality,
                           objective=key.name if key else None, notes=[key.note] if key and key.note else [])
    result.clusters = _summaries(points, model.labels_, distances, k)
    return result


def _summaries(points: Points, labels: np.ndarray, distances: np.ndarray, k: int) -> list[ClusterSummary]:
    out = []
    for label in range(k):
        members = np.flatnonzero(labels == label)
        values = points.objective[members]
        values = values[np.isfinite(values)]
        closest = members[np.argsort(distances[members])]
        configs = list(dict.fromkeys(points.config_ids[i] for i in closest if points.config_ids[i]))[:3]
        strategies = Counter(points.strategies[i] for i in members if points.strategies[i])
        out.append(ClusterSummary(
            label, int(len(members)),
            float(values.mean()) if len(values) else None,
            float(values.std(ddof=1)) if len(values) > 1 else None,
            configs,
            [{"strategy_id": s, "share": round(c / len(members), 3)} for s, c in strategies.most_common(3)],
        ))
    return out
