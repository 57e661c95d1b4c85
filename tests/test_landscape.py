"""The sample history, clusters, the landscape picture, the demo and the README's coverage of the CLI."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import click
import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from metaspace import landscape
from metaspace.cli import cli
from metaspace.errors import MetaspaceError
from metaspace.records import validate
from metaspace.sample import FORWARD, sample_runs

README = Path(__file__).resolve().parents[1] / "README.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- sample history -------------------------------------------------------------------------------


def test_sample_history_is_seeded_and_every_record_is_valid() -> None:
    first, again, other = sample_runs(300, seed=5), sample_runs(300, seed=5), sample_runs(300, seed=6)
    assert first == again and first != other
    for record in first:
        run = validate(record)
        start = dt.date.fromisoformat(record["test_start"])
        assert run.as_of_date > start and np.busday_count(start, run.as_of_date) == FORWARD - 1
        assert {"realized_vol", "autocorr_1d", "drawdown", "regime_mix", "universe"} <= set(record["env"])
        assert abs(sum(record["env"]["regime_mix"].values()) - 1) < 1e-3
        assert {"sharpe", "cagr", "max_drawdown", "turnover", "hit_rate", "robustness"} <= set(record["outcome"])


def test_which_strategy_works_is_a_fact_of_the_simulated_regimes(sample_history) -> None:
    sharpe = defaultdict(list)
    for run in sample_history:
        sharpe[(run["sim"]["forward_regime"], run["config"]["strategy"])].append(run["outcome"]["sharpe"])
    mean = {key: np.mean(values) for key, values in sharpe.items()}
    assert mean[("mean_reverting", "mean_reversion")] > mean[("trending", "mean_reversion")] + 1.0
    assert mean[("trending", "trend")] > mean[("trending", "mean_reversion")] + 1.0
    assert mean[("calm", "vol_target")] > mean[("stressed", "vol_target")] + 0.5


def test_cli_sample_runs_writes_an_importable_file(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "runs.jsonl.gz"
    result = _cli("sample-runs", "--n", "200", "--seed", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    imported = _cli("--database-url", db_url, "import-runs", str(out), "--format", "json")
    assert imported.exit_code == 0, imported.output
    with psycopg.connect(db_url) as conn:
        stored = dict(conn.execute("SELECT run_id, outcome FROM historical_db.runs").fetchall())
    assert stored == {r["run_id"]: r["outcome"] for r in sample_runs(200, seed=3)}


# -- clusters ---------------------------------------------------------------------------------------


def test_cluster_stores_labels_with_version_and_parameters(sample_db: str, sample_history) -> None:
    result = landscape.cluster(space="outcome", k=4, database_url=sample_db)
    assert result.k == 4 and sum(c.size for c in result.clusters) == len(sample_history)
    with psycopg.connect(sample_db) as conn:
        space, version, k, params = conn.execute(
            "SELECT space, encoder_version, k, params FROM historical_db.clusterings WHERE clustering_id = %s",
            (result.clustering_id,)).fetchone()
        labels = dict(conn.execute("SELECT label, count(*) FROM historical_db.run_clusters WHERE clustering_id = %s "
                                   "GROUP BY label", (result.clustering_id,)).fetchall())
        active = conn.execute("SELECT version FROM historical_db.encoder_versions WHERE is_active").fetchone()[0]
    assert (space, version, k, params["random_state"]) == ("outcome", active, 4, 0)
    assert labels == {c.label: c.size for c in result.clusters}
    again = landscape.cluster(space="outcome", k=4, database_url=sample_db)
    assert [c.size for c in again.clusters] == [c.size for c in result.clusters]


def test_outcome_clusters_separate_good_and_bad_behaviour(sample_db: str, sample_history) -> None:
    result = landscape.cluster(space="outcome", k=3, database_url=sample_db)
    means = sorted(c.objective_mean for c in result.clusters)
    assert means[-1] - means[0] > 1.5  # behaviour clusters differ in Sharpe, not only in hyperparameters
    with psycopg.connect(sample_db) as conn:
        labels = dict(conn.execute("SELECT run_id, label FROM historical_db.run_clusters WHERE clustering_id = %s",
                                   (result.clustering_id,)).fetchall())
    strategy = {r["run_id"]: r["strategy_id"] for r in sample_history}
    config = {r["run_id"]: r["config_id"] for r in sample_history}
    for summary in result.clusters:
        members = [run_id for run_id, label in labels.items() if label == summary.label]
        counts = Counter(strategy[run_id] for run_id in members)
        # the three most common strategies of the cluster, each with its share of the cluster's runs
        assert [s["share"] for s in summary.dominant_strategies] == [
            round(n / len(members), 3) for _, n in counts.most_common(3)]
        assert {s["strategy_id"] for s in summary.dominant_strategies} <= set(counts)
        assert sum(s["share"] for s in summary.dominant_strategies) <= 1 + 1e-9
        assert summary.representative_configs and set(summary.representative_configs) <= {config[m] for m in members}


def test_cluster_auto_picks_k_by_silhouette(sample_db: str) -> None:
    result = _cli("--database-url", sample_db, "cluster", "--space", "config", "--auto", "--format", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    scores = {int(k): v for k, v in body["quality"]["silhouette_by_k"].items()}
    assert body["k"] == max(scores, key=scores.get) and 2 <= body["k"] <= 12
    assert _cli("--database-url", sample_db, "cluster").exit_code == 1


# -- the picture ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("color", ["strategy", "outcome.sharpe", "config.strategy", "env.realized_vol", "cluster"])
def test_map_writes_a_png(sample_db: str, tmp_path: Path, color: str) -> None:
    if color == "cluster":
        landscape.cluster(space="joint", k=5, database_url=sample_db)
    out = tmp_path / "map.png"
    result = _cli("--database-url", sample_db, "map", "--color", color, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 20_000


def test_map_writes_interactive_html_with_the_html_extra(sample_db: str, sample_history, tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    out = tmp_path / "map.html"
    landscape.map_space(out=str(out), color="config.strategy", database_url=sample_db)
    text = out.read_text()
    assert "scattergl" in text.lower() and sample_history[0]["run_id"] in text


def test_map_as_of_draws_only_runs_known_then(sample_db: str, sample_history, tmp_path: Path) -> None:
    result = landscape.map_space(out=str(tmp_path / "early.png"), space="env", as_of="2005-12-31", database_url=sample_db)
    assert result.points == sum(1 for r in sample_history if r["as_of_date"] <= "2005-12-31")


def test_map_refuses_bad_options(sample_db: str, tmp_path: Path) -> None:
    with pytest.raises(MetaspaceError, match=r"\.png or \.html"):
        landscape.map_space(out=str(tmp_path / "x.jpg"), database_url=sample_db)
    with pytest.raises(MetaspaceError, match="--color"):
        landscape.map_space(out=str(tmp_path / "x.png"), color="sharpe", database_url=sample_db)


# -- demo and README ----------------------------------------------------------------------------------


def test_demo_runs_the_tour_on_an_empty_database(db_url: str, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _cli("--database-url", db_url, "demo", "--n", "1500", "--seed", "5", "--out-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    # The tour is a newcomer's first sight of metaspace: what the answers need saying comes as notes in the
    # steps, never as a Python warning with a file name and a line of source.
    assert [str(w.message) for w in caught] == []
    assert "note: encoder version 1 was fitted on runs up to" in result.output
    assert "objective not given" not in result.output
    assert "note: ranked as metaspace suggest answers" in result.output  # the replay's notes, as evaluate prints them
    for part in ("Runs like", "Configs for a stressed environment", "Configs for a calm environment", "landscape"):
        assert part in result.output
    assert (tmp_path / "metaspace-demo-map.png").read_bytes()[:8] == PNG_MAGIC
    # --n and --seed: the history written to --out-dir, imported and embedded, is sample_runs(n, seed)
    history = sample_runs(1500, seed=5)
    written = gzip.decompress((tmp_path / "metaspace-demo-runs.jsonl.gz").read_bytes()).decode().splitlines()
    assert [json.loads(line) for line in written] == history
    with psycopg.connect(db_url) as conn:
        runs = {r[0] for r in conn.execute("SELECT run_id FROM historical_db.runs").fetchall()}
        embedded = conn.execute("SELECT count(*) FROM historical_db.joint_embeddings").fetchone()[0]
    assert runs == {r["run_id"] for r in history} and embedded == 1500
    again = _cli("--database-url", db_url, "demo", "--n", "200", "--out-dir", str(tmp_path))
    assert again.exit_code == 1 and "empty database" in again.output


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        found[f"{prefix}{name}"] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
    return found


def test_every_command_is_in_the_readme_and_its_help_has_an_example() -> None:
    readme = README.read_text()
    for name, command in _commands(cli).items():
        assert re.search(rf"metaspace {re.escape(name)}\b", readme), f"README does not show `metaspace {name}`"
        if isinstance(command, click.Group):
            continue
        help_text = _cli(*name.split(), "--help").output
        assert "Example:" in help_text and f"metaspace {name}" in help_text, name
