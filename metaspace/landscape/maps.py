"""The 2-D picture of a space (``metaspace map``): PCA or UMAP of the stored vectors, as of a date."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaspace.errors import MetaspaceError
from metaspace.keys import optional_objective, resolve
from metaspace.queries import active_version, check_space
from metaspace.records import parse_date
from metaspace.store import clusters as cluster_store
from metaspace.store.connection import connection


def project(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """2-D coordinates and axis labels. PCA axes say how much of the spread they carry."""
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise MetaspaceError("--method umap needs the umap extra: pip install 'metaspace[umap]'") from None
        return umap.UMAP(random_state=seed).fit_transform(vectors), ["UMAP 1", "UMAP 2"]
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    sample = centred[:: max(1, len(centred) // 50_000)]
    # The principal axes from the 384 x 384 scatter matrix (eigh): the SVD's right singular vectors, at a
    # tenth of its cost for 20,000 runs (an SVD of the runs themselves was 1.5 s of the demo).
    spread, axes = np.linalg.eigh(sample.T @ sample)
    spread, axes = np.clip(spread[::-1], 0, None), axes[:, ::-1]
    axes = axes * np.where(axes[np.abs(axes).argmax(axis=0), range(axes.shape[1])] < 0, -1, 1)  # a fixed sign
    share = spread / max(spread.sum(), 1e-12)
    coords = centred @ axes[:, :2]
    return coords, [f"PC{i + 1} ({share[i]:.0%} of the spread)" for i in range(2)]


@dataclass
class MapResult:
    path: str
    points: int
    space: str
    color: str
    version: int


def map_space(*, out: str, space: str = "joint", color: str = "strategy", as_of: Any = None,
              method: str = "pca", clustering: int | None = None, database_url: str | None = None) -> MapResult:
    """Draw the stored runs of a space in 2-D, coloured by an outcome key, the strategy, or a clustering."""
    check_space(space)
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".html"):
        raise MetaspaceError(f"--out {out!r}: the picture is written as .png or .html")
    as_of = parse_date(as_of, "--as-of")
    with connection(database_url) as conn:
        objective = optional_objective(conn, None, as_of)
        color_key = None if color in ("strategy", "cluster") else resolve(conn, color, numeric=False, option="--color", as_of=as_of)
        points = cluster_store.points(conn, space, active_version(conn), objective.path if objective else None,
                                      as_of, (color_key.branch, list(color_key.path)) if color_key else None)
        labels = None
        if color == "cluster":
            labels = cluster_store.labels(conn, points.run_ids, space, points.version, clustering)
    if len(points.run_ids) < 3:
        raise MetaspaceError(f"only {len(points.run_ids)} embedded run(s) in the {space} space: nothing to draw")
    coords, axes = project(points.vectors, method)
    title = f"{space} space, encoder version {points.version}: {len(points.run_ids):,} runs" + (
        f" as of {as_of}" if as_of else "")
    from metaspace.landscape import plots

    draw = plots.html if suffix == ".html" else plots.png
    draw(out, coords, axes, title, points, color, labels)
    return MapResult(out, len(points.run_ids), space, color, points.version)
