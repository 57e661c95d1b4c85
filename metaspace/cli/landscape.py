"""``metaspace map``, ``metaspace cluster`` and ``metaspace sample-runs``."""

from __future__ import annotations

import click

from metaspace import landscape, sample
from metaspace.cli.common import database_url, database_url_option, domain_errors, echo_json, echo_table
from metaspace.names import SPACES


@click.command("map")
@database_url_option
@click.option("--space", type=click.Choice(SPACES), default="joint", show_default=True)
@click.option("--color", default="strategy", show_default=True,
              help="strategy, cluster (the latest clustering of the space), or an outcome key such as outcome.sharpe.")
@click.option("--as-of", metavar="DATE", help="Only runs dated on or before DATE.")
@click.option("--method", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
              help="How to flatten 384 dimensions to 2 (umap needs the umap extra).")
@click.option("--clustering", type=int, metavar="ID", help="With --color cluster: this clustering, not the latest.")
@click.option("--out", required=True, metavar="FILE", help="FILE.png (matplotlib) or FILE.html (plotly, html extra).")
@domain_errors
def map_command(space, color, as_of, method, clustering, out) -> None:
    """Draw the stored runs of a space in 2-D: a landscape of what was tried and how it behaved.

    PCA by default (the axes say how much of the spread they carry). Outcome colours are averaged
    per hexagonal cell beyond a few thousand runs, so 100,000 points stay readable.

    \b
    Example:
        metaspace map --out landscape.png
        metaspace map --space env --color outcome.sharpe --as-of 2020-12-31 --out env.png
        metaspace map --color cluster --out clusters.html
    """
    result = landscape.map_space(out=out, space=space, color=color, as_of=as_of, method=method, clustering=clustering,
                                 database_url=database_url())
    click.echo(f"wrote {result.path}: {result.points:,} runs of the {result.space} space "
               f"(encoder version {result.version}), coloured by {result.color}")


@click.command("cluster")
@database_url_option
@click.option("--space", type=click.Choice(SPACES), default="joint", show_default=True)
@click.option("--k", "k", type=click.IntRange(1), help="Number of clusters.")
@click.option("--auto", is_flag=True, help="Choose k in 2..12 by the silhouette score (on up to 5,000 runs).")
@click.option("--objective", metavar="KEY",
              help="Outcome key summarised per cluster (default: the only numeric outcome key, else the one named sharpe, if any).")
@click.option("--seed", default=0, show_default=True, help="k-means seed (same seed, same labels).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@domain_errors
def cluster_command(space, k, auto, objective, seed, fmt) -> None:
    """Group runs that behave alike (k-means over the stored vectors) and summarise each group.

    Labels are stored in historical_db.run_clusters with the clustering's space, encoder version and
    parameters (historical_db.clusterings), so `metaspace map --color cluster` and SQL can use them.

    \b
    Example:
        metaspace cluster --auto
        metaspace cluster --space outcome --k 6 --format json
    """
    result = landscape.cluster(space=space, k=k, auto=auto, objective=objective, seed=seed,
                               database_url=database_url())
    if fmt == "json":
        echo_json(result.as_dict())
        return
    how = "chosen by silhouette" if auto else "given"
    click.echo(f"clustering {result.clustering_id}: {result.k} clusters ({how}) of the {result.space} space, "
               f"encoder version {result.version}")
    for note in result.notes:
        click.echo(note, err=True)
    echo_table([{"cluster": c.label, "runs": c.size, f"{result.objective} mean": c.objective_mean,
                 f"{result.objective} std": c.objective_std, "representative configs": ", ".join(c.representative_configs),
                 "dominant strategies": ", ".join(f"{s['strategy_id']} {s['share']:.0%}" for s in c.dominant_strategies)}
                for c in result.clusters])


@click.command("sample-runs")
@click.option("--n", "n", default=20_000, show_default=True, type=click.IntRange(1), help="How many runs.")
@click.option("--seed", default=7, show_default=True, help="Same seed, same runs.")
@click.option("--out", required=True, metavar="FILE", help="JSONL output (.gz to compress).")
def sample_runs_command(n: int, seed: int, out: str) -> None:
    """Write a realistic sample history: strategies run on simulated markets that switch regimes.

    Trend following, mean reversion and volatility targeting, with their own parameters, run on four
    simulated markets; env from the trailing window, outcome from the forward window. The hidden regimes
    are kept under "sim" (not encoded), so you can check what search and suggest find.

    \b
    Example:
        metaspace sample-runs --n 20000 --out runs.jsonl.gz
        metaspace import-runs runs.jsonl.gz && metaspace embed-runs
    """
    sample.sample_runs(n, seed=seed, out=out)
    click.echo(f"wrote {n:,} runs to {out}")
