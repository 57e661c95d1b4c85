"""The landscape of a space: a 2-D picture (``metaspace map``) and behaviour clusters (``metaspace cluster``).

Both read the stored vectors of the active encoder version; clusters are written back with the version
and parameters that produced them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaspace import landscape_store
from metaspace.db import connection
from metaspace.errors import MetaspaceError
from metaspace.landscape_store import Points
from metaspace.queries import check_space
from metaspace.records import parse_date

AUTO_K = range(2, 13)
SILHOUETTE_SAMPLE = 5_000


def _objective_path(objective: str) -> list[str]:
    path = [part for part in objective.removeprefix("outcome.").split(".") if part]
    if not path:
        raise MetaspaceError(f"objective {objective!r} is not an outcome key (for example outcome.sharpe)")
    return path


# -- map ------------------------------------------------------------------------------------------


def project(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """2-D coordinates and axis labels. PCA axes say how much of the spread they carry."""
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise MetaspaceError("--method umap needs the umap extra: pip install 'metaspace[umap]'") from None
        return umap.UMAP(random_state=seed).fit_transform(vectors), ["UMAP 1", "UMAP 2"]
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred[:: max(1, len(centred) // 50_000)], full_matrices=False)
    share = singular**2 / max((singular**2).sum(), 1e-12)
    coords = centred @ vt[:2].T
    return coords, [f"PC{i + 1} ({share[i]:.0%} of the spread)" for i in range(2)]


@dataclass
class MapResult:
    path: str
    points: int
    space: str
    color: str
    version: int


def map_space(out: str, *, space: str = "joint", color: str = "strategy", as_of: Any = None,
              method: str = "pca", clustering: int | None = None, database_url: str | None = None) -> MapResult:
    """Draw the stored runs of a space in 2-D, coloured by an outcome key, the strategy, or a clustering."""
    check_space(space)
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".html"):
        raise MetaspaceError(f"--out {out!r}: the picture is written as .png or .html")
    as_of = parse_date(as_of, "--as-of")
    with connection(database_url) as conn:
        points = landscape_store.points(conn, space, ["sharpe"], as_of, _color_key(color))
        labels = None
        if color == "cluster":
            labels = landscape_store.labels(conn, points.run_ids, space, points.version, clustering)
    if len(points.run_ids) < 3:
        raise MetaspaceError(f"only {len(points.run_ids)} embedded run(s) in the {space} space: nothing to draw")
    coords, axes = project(points.vectors, method)
    title = f"{space} space, encoder version {points.version}: {len(points.run_ids):,} runs" + (
        f" as of {as_of}" if as_of else "")
    from metaspace import plots

    draw = plots.html if suffix == ".html" else plots.png
    draw(out, coords, axes, title, points, color, labels)
    return MapResult(out, len(points.run_ids), space, color, points.version)


def _color_key(color: str) -> tuple[str, list[str]] | None:
    if color in ("strategy", "cluster"):
        return None
    branch, _, rest = color.partition(".")
    path = [part for part in rest.split(".") if part]
    if branch not in ("config", "env", "outcome") or not path:
        raise MetaspaceError(f"--color {color!r}: use strategy, cluster, or a record key such as outcome.sharpe, "
                             "env.realized_vol or config.rebalance")
    return branch, path


# -- clusters -------------------------------------------------------------------------------------


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


def cluster(*, space: str = "joint", k: int | None = None, auto: bool = False, objective: str = "outcome.sharpe",
            seed: int = 0, database_url: str | None = None) -> ClusterResult:
    """k-means over the stored vectors of a space; labels stored with the encoder version and parameters."""
    from sklearn.cluster import KMeans

    check_space(space)
    if (k is None) == (not auto):
        raise MetaspaceError("give --k N or --auto")
    with connection(database_url, autocommit=True) as conn:
        points = landscape_store.points(conn, space, _objective_path(objective), None)
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
            clustering_id = landscape_store.save_clustering(
                conn, space, points.version, k, "kmeans", params, quality, points.run_ids, model.labels_, distances)
    result = ClusterResult(clustering_id, space, points.version, k, "kmeans", quality)
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
