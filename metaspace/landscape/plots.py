"""Pictures of a space: PNG through matplotlib, interactive HTML through plotly (optional extra)."""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

import numpy as np

from metaspace.errors import MetaspaceError
from metaspace.store.clusters import Points

MAX_CATEGORIES = 20
HEXBIN_FROM = 3_000


def _numeric(points: Points, color: str) -> np.ndarray | None:
    """The colour values as numbers when the key is numeric (else None: it is drawn as categories)."""
    if color in ("strategy", "cluster"):
        return None
    present = [v for v in points.colors if v is not None]
    if not present or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return None
    return np.array([np.nan if v is None else float(v) for v in points.colors])


def _categories(points: Points, color: str, labels: list[int | None] | None) -> list[str]:
    if color == "cluster":
        return [f"cluster {label}" if label is not None else "unlabelled" for label in (labels or [])]
    raw = points.strategies if color == "strategy" else points.colors
    values = ["(none)" if v is None else str(v) for v in raw]
    common = [name for name, _ in Counter(values).most_common(MAX_CATEGORIES - 1)]
    return [v if v in common else "other" for v in values]


def png(out: str, coords: np.ndarray, axes: list[str], title: str, points: Points, color: str,
        labels: list[int | None] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    n = len(coords)
    fig, ax = plt.subplots(figsize=(11, 7.5), dpi=150, layout="constrained")
    numeric = _numeric(points, color)
    if numeric is None:
        names = _categories(points, color, labels)
        order = sorted(set(names), key=lambda c: (c in ("other", "unlabelled", "(none)"), c))
        tab20 = plt.get_cmap("tab20")
        # tab20 pairs a dark and a light shade of each hue: take the ten dark ones first, so that up to ten
        # categories get ten distinct hues.
        palette = [tab20(i) for i in range(0, 20, 2)] + [tab20(i) for i in range(1, 20, 2)]
        size, alpha = max(2.0, min(12.0, 60_000 / n)), max(0.4, min(0.85, 25_000 / n))
        shuffled = np.random.default_rng(0).permutation(n)  # no category is drawn on top of all the others
        colors = {name: palette[i % len(palette)] for i, name in enumerate(order)}
        ax.scatter(coords[shuffled, 0], coords[shuffled, 1], s=size, alpha=alpha, linewidths=0, rasterized=True,
                   c=[colors[names[i]] for i in shuffled])
        handles = [plt.Line2D([], [], marker="o", linestyle="", markersize=7, color=colors[name],
                              label=f"{name} ({names.count(name):,})") for name in order]
        ax.legend(handles=handles, title=color, loc="center left",
                  bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8, title_fontsize=9)
        if color == "cluster":
            for name in order:
                members = [i for i in range(n) if names[i] == name]
                centre = np.median(coords[members], axis=0)
                ax.annotate(name.removeprefix("cluster "), centre, ha="center", va="center", fontsize=10,
                            weight="bold", bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0})
    else:
        values = numeric
        known = np.isfinite(values)
        if not known.any():
            raise MetaspaceError(f"no stored run has a numeric {color}: choose another --color")
        low, high = np.nanpercentile(values, [2, 98])
        norm = TwoSlopeNorm(vcenter=0.0, vmin=min(low, -1e-9), vmax=max(high, 1e-9)) if low < 0 < high else None
        if n >= HEXBIN_FROM:
            art = ax.hexbin(coords[known, 0], coords[known, 1], C=values[known], reduce_C_function=np.mean,
                            gridsize=70, cmap="RdYlGn", norm=norm, mincnt=3, linewidths=0.1)
            label = f"mean {color} of the runs in each cell"
        else:
            art = ax.scatter(coords[known, 0], coords[known, 1], c=np.clip(values[known], low, high), s=12,
                             cmap="RdYlGn", norm=norm, linewidths=0)
            label = color
        fig.colorbar(art, ax=ax, label=label, shrink=0.85)
    fig.suptitle(title, fontsize=13)
    ax.set_title("each dot is a run; runs close together are alike in this space", fontsize=9, color="0.35")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.grid(alpha=0.25, linewidth=0.5)
    fig.savefig(out)
    plt.close(fig)


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _hover(points: Points, color: str, labels: list[int | None] | None,
           numeric: np.ndarray | None) -> tuple[str, list[list[str]]]:
    """The hover template and each run's row of it: run id, config, strategy and the run's own value of the
    colour key (not its legend's bucket), under the key's name."""
    names = ["run", "config", "strategy"]
    rows = [[run_id, _shown(config_id), _shown(strategy)]
            for run_id, config_id, strategy in zip(points.run_ids, points.config_ids, points.strategies)]
    if color != "strategy":
        names.append(escape(color))
        if numeric is not None:
            values = [f"{v:.4g}" if np.isfinite(v) else "(none)" for v in numeric]
        elif color == "cluster":
            values = ["unlabelled" if label is None else str(label) for label in (labels or [None] * len(rows))]
        else:
            values = [_shown(v) for v in points.colors]
        for row, value in zip(rows, values):
            row.append(value)
    template = "<br>".join(f"{name} %{{customdata[{i}]}}" for i, name in enumerate(names)) + "<extra></extra>"
    return template, rows


def html(out: str, coords: np.ndarray, axes: list[str], title: str, points: Points, color: str,
         labels: list[int | None] | None) -> None:
    """An interactive map that works offline: plotly.js (about 4.8 MB) is written into the page, the accepted
    cost of opening it without a network. Hovering a run shows its id, config, strategy and its value of the
    colour key the map was drawn by."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MetaspaceError("an .html map needs the html extra: pip install 'metaspace[html]'") from None
    numeric = _numeric(points, color)
    template, customdata = _hover(points, color, labels, numeric)
    marker: dict[str, Any] = {"size": 4, "opacity": 0.6}
    traces = []
    if numeric is None:
        names = np.array(_categories(points, color, labels))
        for name in sorted(set(names)):
            idx = np.flatnonzero(names == name)
            traces.append(go.Scattergl(x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=str(name),
                                       customdata=[customdata[i] for i in idx], hovertemplate=template,
                                       marker=marker))
    else:
        marker |= {"color": numeric, "colorscale": "RdYlGn", "colorbar": {"title": color}}
        traces.append(go.Scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", customdata=customdata,
                                   hovertemplate=template, marker=marker))
    fig = go.Figure(traces, layout={"title": title, "xaxis": {"title": axes[0]}, "yaxis": {"title": axes[1]}})
    fig.write_html(out, include_plotlyjs=True)
