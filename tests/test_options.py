"""Every command-line option has an effect, checked through the database or the Python API rather than the
printed text: search, suggest, embed-runs, map, cluster, migrate, import-runs and sample-runs."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.fitted import load_space
from metaspace.landscape import plots
from metaspace.sample import sample_runs
from metaspace.store import migrate
from metaspace.store.connection import connect
from metaspace.store.graphs import INDEX_NAMES, IndexSettings

PROBE = 23  # the sample run the searches start from


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _ok(*args: str) -> Any:
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    return result


def _answers(result) -> list[dict[str, Any]]:
    """search/suggest --format json: one object per input per line."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sconn(sample_db: str):
    with connect(sample_db, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def probe(sample_history) -> dict:
    return sample_history[PROBE]


@pytest.fixture(scope="module")
def records(sample_history) -> dict[str, dict]:
    return {r["run_id"]: r for r in sample_history}


def _vectors(conn: psycopg.Connection, space: str) -> tuple[list[str], np.ndarray]:
    rows = conn.execute("SELECT run_id, vector FROM historical_db.run_vectors_v1 WHERE space = %s "
                        "AND encoder_version = historical_db.active_encoder_version_v1() ORDER BY run_id",
                        (space,)).fetchall()
    return [r[0] for r in rows], np.stack([r[1].to_numpy() for r in rows])


def _hnsw_scans(conn: psycopg.Connection, space: str) -> int:
    index = INDEX_NAMES[(space, IndexSettings().kind(space))]  # the default layout's graph
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (index,)).fetchone()[0]


def _settled_scans(conn: psycopg.Connection, space: str) -> int:
    """The graph walks counted once earlier commands' server processes have all reported theirs (the
    connections this process keeps are closed first: a server process reports as it exits)."""
    metaspace.close()
    last = _hnsw_scans(conn, space)
    while True:
        time.sleep(0.5)
        now = _hnsw_scans(conn, space)
        if now == last:
            return now
        last = now


def _walks_after(conn: psycopg.Connection, space: str, before: int) -> int:
    """How many graph walks the commands run since ``before`` made. Each command's server process
    reports its statistics as it exits, a moment after the command returns: wait for one walk to show,
    then long enough for any other to show too."""
    metaspace.close()
    deadline = time.monotonic() + 10
    while _hnsw_scans(conn, space) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    return _hnsw_scans(conn, space) - before


# -- search -------------------------------------------------------------------------------------------


def _search(url: str, *args: str) -> list[dict[str, Any]]:
    [answer] = _answers(_ok("--database-url", url, "search", *args, "--format", "json"))
    return answer["rows"]


def test_search_strategy_keeps_only_that_strategys_runs(sample_db, probe) -> None:
    unfiltered = _search(sample_db, "--run", probe["run_id"], "-k", "30")
    one = _search(sample_db, "--run", probe["run_id"], "-k", "30", "--strategy", "CMDTY_TREND")
    two = _search(sample_db, "--run", probe["run_id"], "-k", "30", "--strategy", "CMDTY_TREND",
                  "--strategy", "US_EQ_VOL_TARGET")
    assert len(one) == 30 and {r["strategy_id"] for r in one} == {"CMDTY_TREND"}
    assert {r["strategy_id"] for r in unfiltered} != {"CMDTY_TREND"}
    assert len(two) == 30 and {r["strategy_id"] for r in two} <= {"CMDTY_TREND", "US_EQ_VOL_TARGET"}
    assert two == metaspace.search(run=probe["run_id"], k=30, strategy=["CMDTY_TREND", "US_EQ_VOL_TARGET"],
                                   database_url=sample_db)


def test_search_config_id_keeps_only_that_configs_runs(sample_db, probe) -> None:
    rows = _search(sample_db, "--run", probe["run_id"], "-k", "200", "--config-id", "VOLTGT_V20_TV8",
                   "--config-id", "TREND_L20_D_TV10")
    assert {r["config_id"] for r in rows} == {"VOLTGT_V20_TV8", "TREND_L20_D_TV10"}
    unfiltered = _search(sample_db, "--run", probe["run_id"], "-k", "200")
    assert {r["config_id"] for r in unfiltered} - {"VOLTGT_V20_TV8", "TREND_L20_D_TV10"}


def test_search_scope_keeps_runs_whose_entity_scope_contains_it(sample_db, probe) -> None:
    scoped = _search(sample_db, "--run", probe["run_id"], "-k", "15", "--scope", '{"strategy_id": "EU_EQ_TREND"}')
    assert len(scoped) == 15 and all(r["entity_scope"]["strategy_id"] == "EU_EQ_TREND" for r in scoped)
    assert scoped == _search(sample_db, "--run", probe["run_id"], "-k", "15", "--strategy", "EU_EQ_TREND")
    assert _search(sample_db, "--run", probe["run_id"], "--scope", '{"source": "elsewhere"}') == []
    for bad, message in (("{not json", "--scope is not valid JSON"), ("[1, 2]", "--scope must be a JSON object")):
        result = _cli("--database-url", sample_db, "search", "--run", probe["run_id"], "--scope", bad)
        assert result.exit_code == 1 and message in result.output


def test_search_exact_is_the_brute_force_answer_and_never_walks_the_graph(sample_db, sconn, probe) -> None:
    run_ids, vectors = _vectors(sconn, "outcome")
    query = vectors[run_ids.index(probe["run_id"])].astype(np.float64)
    distances = np.linalg.norm(vectors - query, axis=1)
    before = _settled_scans(sconn, "outcome")
    rows = _search(sample_db, "--run", probe["run_id"], "--space", "outcome", "-k", "40", "--exact")
    others = sorted(d for run_id, d in zip(run_ids, distances) if run_id != probe["run_id"])[:40]
    assert [r["distance"] for r in rows] == pytest.approx(others, abs=1e-5)
    _search(sample_db, "--run", probe["run_id"], "--space", "outcome", "-k", "40")
    assert _walks_after(sconn, "outcome", before) == 1  # the second search's walk, none for --exact


@pytest.mark.parametrize("space", ["config", "env", "outcome", "joint"])
def test_search_space_measures_distances_in_that_space(sample_db, sconn, probe, space) -> None:
    run_ids, vectors = _vectors(sconn, space)
    query = vectors[run_ids.index(probe["run_id"])].astype(np.float64)
    rows = _search(sample_db, "--run", probe["run_id"], "--space", space, "-k", "10", "--exact")
    assert len(rows) == 10
    for row in rows:
        assert row["distance"] == pytest.approx(np.linalg.norm(vectors[run_ids.index(row["run_id"])] - query), abs=1e-5)
    other = "env" if space != "env" else "config"
    assert rows != _search(sample_db, "--run", probe["run_id"], "--space", other, "-k", "10", "--exact")


# -- suggest ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_file(tmp_path_factory, probe) -> str:
    path = tmp_path_factory.mktemp("suggest") / "env.json"
    path.write_text(json.dumps(probe["env"]))
    return str(path)


def _suggest(url: str, env_file: str, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    [answer] = _answers(_ok("--database-url", url, "suggest", "--env", env_file, *args, "--format", "json"))
    return answer["rows"], answer


@pytest.mark.parametrize("neighbours", ["25", "600"])
def test_suggest_neighbours_is_how_many_runs_are_taken_as_evidence(sample_db, env_file, neighbours) -> None:
    rows, _ = _suggest(sample_db, env_file, "--neighbours", neighbours, "--min-runs", "1", "-k", "1000")
    assert sum(r["runs"] for r in rows) == int(neighbours)


def test_suggest_min_runs_drops_configs_seen_in_fewer_environments(sample_db, env_file) -> None:
    every, _ = _suggest(sample_db, env_file, "--neighbours", "150", "--min-runs", "1", "-k", "1000", "--exact")
    kept, _ = _suggest(sample_db, env_file, "--neighbours", "150", "--min-runs", "5", "-k", "1000", "--exact")
    assert any(r["environments"] < 5 for r in every) and kept and all(r["environments"] >= 5 for r in kept)
    assert {r["config_id"] for r in kept} == {r["config_id"] for r in every if r["environments"] >= 5}


def test_suggest_as_of_uses_only_runs_known_by_then(sample_db, env_file, records) -> None:
    rows, answer = _suggest(sample_db, env_file, "--as-of", "2002-12-31", "--min-runs", "1", "-k", "1000")
    assert answer["as_of"] == "2002-12-31"
    assert rows and all(records[r["best_run_id"]]["as_of_date"] <= "2002-12-31" for r in rows)
    known = sum(1 for r in records.values() if r["as_of_date"] <= "2002-12-31")
    assert sum(r["runs"] for r in rows) == min(known, 1000)
    later, _ = _suggest(sample_db, env_file, "--min-runs", "1", "-k", "1000")
    assert any(records[r["best_run_id"]]["as_of_date"] > "2002-12-31" for r in later)


def test_suggest_strategy_takes_evidence_only_from_that_strategy(sample_db, env_file, records) -> None:
    rows, _ = _suggest(sample_db, env_file, "--strategy", "US_EQ_VOL_TARGET", "--min-runs", "1", "-k", "1000")
    assert rows and all(r["config_id"].startswith("VOLTGT_") for r in rows)
    assert {records[r["best_run_id"]]["strategy_id"] for r in rows} == {"US_EQ_VOL_TARGET"}
    assert sum(r["runs"] for r in rows) == 128  # every run of that strategy: fewer than --neighbours (1000)


def test_suggest_exact_is_the_exact_sql_answer_and_never_walks_the_graph(sample_db, sconn, env_file, probe) -> None:
    run_ids, vectors = _vectors(sconn, "env")
    before = _settled_scans(sconn, "env")
    rows, _ = _suggest(sample_db, env_file, "--exact", "-k", "8")
    exact = sconn.execute("SELECT config_id, score FROM historical_db.suggest_configs_v4(%s, 8, exact => true)",
                          (vectors[run_ids.index(probe["run_id"])],)).fetchall()
    assert [(r["config_id"], pytest.approx(r["score"], abs=1e-9)) for r in rows] == [tuple(e) for e in exact]
    _suggest(sample_db, env_file, "-k", "8")
    assert _walks_after(sconn, "env", before) == 1  # the second suggestion's walk, none for --exact


def test_suggest_history_and_horizon_reach_the_ranking(sample_db, env_file) -> None:
    every, _ = _suggest(sample_db, env_file, "--history", "all", "-k", "5", "--exact")
    recent, _ = _suggest(sample_db, env_file, "--history", "300", "-k", "5", "--exact")
    weekly, _ = _suggest(sample_db, env_file, "--history", "all", "--horizon", "7", "-k", "5", "--exact")
    assert all(r["history_blocks"] >= 1 and 0 <= r["local_weight"] <= 1 for r in every)
    blocks = {r["config_id"]: r["history_blocks"] for r in every}
    assert sum(r["history_blocks"] for r in recent) < sum(blocks[r["config_id"]] for r in recent if r["config_id"]
                                                         in blocks) or {r["config_id"] for r in recent} != set(blocks)
    assert any(r["history_blocks"] > blocks[r["config_id"]] for r in weekly if r["config_id"] in blocks)
    for bad in (["--history", "0"], ["--history", "some"], ["--horizon", "0"]):
        result = CliRunner().invoke(cli, ["--database-url", sample_db, "suggest", "--env", env_file, *bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_suggest_lower_is_better_ranks_ascending_and_picks_the_lowest_run(sample_db, env_file, records) -> None:
    lower, _ = _suggest(sample_db, env_file, "--objective", "outcome.turnover", "--lower-is-better", "-k", "10")
    higher, _ = _suggest(sample_db, env_file, "--objective", "outcome.turnover", "-k", "10")
    assert [r["score"] for r in lower] == sorted(r["score"] for r in lower)
    assert [r["score"] for r in higher] == sorted((r["score"] for r in higher), reverse=True)
    assert lower[0]["config_id"] != higher[0]["config_id"]
    for row in lower:
        assert row["best_objective"] == records[row["best_run_id"]]["outcome"]["turnover"] <= row["objective_mean"]


def test_suggest_objective_ranks_by_that_outcome_key_even_nested(sample_db, env_file, records) -> None:
    rows, _ = _suggest(sample_db, env_file, "--objective", "outcome.robustness.worst_third_sharpe", "-k", "6")
    for row in rows:
        assert row["best_objective"] == records[row["best_run_id"]]["outcome"]["robustness"]["worst_third_sharpe"]
    by_sharpe, _ = _suggest(sample_db, env_file, "-k", "6")
    assert [r["config_id"] for r in rows] != [r["config_id"] for r in by_sharpe]


# -- map ----------------------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch) -> list[dict[str, Any]]:
    """What map hands to the PNG painter (coordinates, axes, points, labels), instead of painting."""
    calls: list[dict[str, Any]] = []

    def capture(out, coords, axes, title, points, color, labels) -> None:
        calls.append({"coords": coords, "axes": axes, "points": points, "color": color, "labels": labels})
        Path(out).write_bytes(b"")

    monkeypatch.setattr(plots, "png", capture)
    return calls


def test_map_space_draws_that_spaces_stored_vectors(sample_db, sconn, drawn, tmp_path) -> None:
    _ok("--database-url", sample_db, "map", "--space", "outcome", "--out", str(tmp_path / "m.png"))
    run_ids, vectors = _vectors(sconn, "outcome")
    [call] = drawn
    assert call["points"].run_ids == run_ids and np.array_equal(call["points"].vectors, vectors)


def test_map_method_pca_projects_on_the_two_principal_axes(sample_db, sconn, drawn, tmp_path) -> None:
    from sklearn.decomposition import PCA

    _ok("--database-url", sample_db, "map", "--space", "env", "--method", "pca", "--out", str(tmp_path / "m.png"))
    [call] = drawn
    _, vectors = _vectors(sconn, "env")
    pca = PCA(n_components=2).fit(vectors.astype(np.float64))
    expected = pca.transform(vectors.astype(np.float64))
    signs = np.sign((call["coords"] * expected).sum(axis=0))  # a principal axis has no preferred direction
    assert np.allclose(call["coords"] * signs, expected, atol=1e-6)
    shares = [f"{share:.0%}" for share in pca.explained_variance_ratio_]
    assert call["axes"] == [f"PC1 ({shares[0]} of the spread)", f"PC2 ({shares[1]} of the spread)"]


def test_map_method_umap_without_the_extra_says_which_extra_to_install(sample_db, tmp_path) -> None:
    try:
        import umap  # noqa: F401

        pytest.skip("umap is installed here")
    except ImportError:
        pass
    result = _cli("--database-url", sample_db, "map", "--method", "umap", "--out", str(tmp_path / "m.png"))
    assert result.exit_code == 1 and "pip install 'metaspace[umap]'" in result.output
    assert not (tmp_path / "m.png").exists()


def test_map_as_of_draws_only_runs_known_by_then(sample_db, drawn, records, tmp_path) -> None:
    _ok("--database-url", sample_db, "map", "--as-of", "2001-06-30", "--out", str(tmp_path / "m.png"))
    [call] = drawn
    assert call["points"].run_ids == sorted(r for r, rec in records.items() if rec["as_of_date"] <= "2001-06-30")


def test_map_clustering_colours_by_that_clustering_not_the_latest(sample_db, sconn, drawn, tmp_path) -> None:
    first = metaspace.cluster(space="joint", k=3, database_url=sample_db).clustering_id
    latest = metaspace.cluster(space="joint", k=6, database_url=sample_db).clustering_id

    def labels(clustering_id: int) -> dict[str, int]:
        return dict(sconn.execute("SELECT run_id, label FROM historical_db.run_clusters WHERE clustering_id = %s",
                                  (clustering_id,)).fetchall())

    out = str(tmp_path / "m.png")
    _ok("--database-url", sample_db, "map", "--color", "cluster", "--clustering", str(first), "--out", out)
    _ok("--database-url", sample_db, "map", "--color", "cluster", "--out", out)
    chosen, default = drawn
    assert dict(zip(chosen["points"].run_ids, chosen["labels"])) == labels(first)
    assert dict(zip(default["points"].run_ids, default["labels"])) == labels(latest)
    assert set(chosen["labels"]) == {0, 1, 2}


# -- cluster ------------------------------------------------------------------------------------------


def _cluster(url: str, *args: str) -> dict[str, Any]:
    return json.loads(_ok("--database-url", url, "cluster", *args, "--format", "json").stdout)


def _stored_labels(conn: psycopg.Connection, clustering_id: int) -> tuple[list[str], list[int]]:
    rows = conn.execute("SELECT run_id, label FROM historical_db.run_clusters WHERE clustering_id = %s ORDER BY run_id",
                        (clustering_id,)).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def test_cluster_space_runs_k_means_on_that_spaces_vectors(sample_db, sconn) -> None:
    from sklearn.cluster import KMeans

    body = _cluster(sample_db, "--space", "env", "--k", "4")
    run_ids, vectors = _vectors(sconn, "env")
    stored_ids, labels = _stored_labels(sconn, body["clustering_id"])
    space = sconn.execute("SELECT space FROM historical_db.clusterings WHERE clustering_id = %s",
                          (body["clustering_id"],)).fetchone()[0]
    assert space == body["space"] == "env" and stored_ids == run_ids
    assert labels == KMeans(n_clusters=4, n_init=4, random_state=0).fit(vectors).labels_.tolist()


def test_cluster_same_seed_gives_the_same_labels(sample_db, sconn) -> None:
    from sklearn.cluster import KMeans

    first = _cluster(sample_db, "--space", "outcome", "--k", "5", "--seed", "7")
    again = _cluster(sample_db, "--space", "outcome", "--k", "5", "--seed", "7")
    assert first["clustering_id"] != again["clustering_id"]
    assert _stored_labels(sconn, first["clustering_id"]) == _stored_labels(sconn, again["clustering_id"])
    params = sconn.execute("SELECT params FROM historical_db.clusterings WHERE clustering_id = %s",
                           (first["clustering_id"],)).fetchone()[0]
    assert params["random_state"] == 7
    _, vectors = _vectors(sconn, "outcome")
    expected = KMeans(n_clusters=5, n_init=4, random_state=7).fit(vectors).labels_.tolist()
    assert _stored_labels(sconn, first["clustering_id"])[1] == expected


def test_cluster_objective_summarises_that_outcome_key_per_cluster(sample_db, sconn, records) -> None:
    body = _cluster(sample_db, "--space", "outcome", "--k", "3", "--objective", "outcome.robustness.worst_third_sharpe")
    assert body["objective"] == "outcome.robustness.worst_third_sharpe"
    run_ids, labels = _stored_labels(sconn, body["clustering_id"])
    for summary in body["clusters"]:
        values = [records[r]["outcome"]["robustness"]["worst_third_sharpe"]
                  for r, label in zip(run_ids, labels) if label == summary["label"]]
        assert summary["size"] == len(values)
        assert summary["objective_mean"] == pytest.approx(np.mean(values), rel=1e-9)
        assert summary["objective_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)


# -- embed-runs ---------------------------------------------------------------------------------------


@pytest.fixture
def imported(db_url: str, sample_history) -> str:
    """A database holding 300 sample runs, none embedded."""
    pipeline.import_records((("sample", i, r) for i, r in enumerate(sample_history[:300])), database_url=db_url)
    return db_url


def _embedded(url: str, version: int | None = None) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT entity_scope->>'run_id' FROM historical_db.joint_embeddings "
            "WHERE %(v)s::int IS NULL OR encoder_version = %(v)s", {"v": version}).fetchall()}


def _snapshot(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '' ORDER BY t::text), '')) "
                                    f"FROM historical_db.{table} t").fetchone()
                for table in ("runs", "encoder_versions", "joint_embeddings", "branch_embeddings",
                              "embedding_quarantine")}


def _embed(url: str, *args: str) -> dict[str, Any]:
    return json.loads(_ok("--database-url", url, "embed-runs", *args, "--format", "json").stdout)


def test_embed_runs_limit_embeds_exactly_n_and_leaves_the_rest_pending(imported) -> None:
    assert _embed(imported, "--limit", "40")["embedded"] == 40
    assert len(_embedded(imported)) == 40
    with psycopg.connect(imported) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.branch_embeddings").fetchone()[0] == 120
    assert _embed(imported, "--dry-run")["pending"] == 260


def test_embed_runs_dry_run_changes_nothing(imported, sample_history) -> None:
    before = _snapshot(imported)
    assert _embed(imported, "--dry-run")["version"] is None
    assert _snapshot(imported) == before
    pipeline.embed_runs(database_url=imported, limit=100)
    before = _snapshot(imported)
    dry = _embed(imported, "--dry-run")
    assert (dry["dry_run"], dry["pending"], dry["embedded"]) == (True, 200, 0)
    _embed(imported, "--dry-run", "--rebuild")
    assert _snapshot(imported) == before


def test_embed_runs_since_embeds_only_runs_dated_on_or_after_it(imported, sample_history) -> None:
    _embed(imported, "--since", "2010-01-01")
    assert _embedded(imported) == {r["run_id"] for r in sample_history[:300] if r["as_of_date"] >= "2010-01-01"}


def test_embed_runs_strategy_embeds_only_those_strategies_runs(imported, sample_history) -> None:
    chosen = {"US_EQ_TREND", "FX_G10_VOL_TARGET"}
    _embed(imported, "--strategy", "US_EQ_TREND", "--strategy", "FX_G10_VOL_TARGET")
    assert _embedded(imported) == {r["run_id"] for r in sample_history[:300] if r["strategy_id"] in chosen}


def test_embed_runs_batch_size_commits_each_batch_on_its_own(imported) -> None:
    assert _embed(imported, "--batch-size", "70")["embedded"] == 300
    with psycopg.connect(imported) as conn:
        transactions = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM historical_db.joint_embeddings").fetchone()[0]
    assert transactions == 5  # 70 + 70 + 70 + 70 + 20


@pytest.mark.parametrize("size", ["0", "-5"])
def test_embed_runs_batch_size_below_one_is_refused_naming_the_option(imported, size) -> None:
    result = _cli("--database-url", imported, "embed-runs", "--batch-size", size)
    assert result.exit_code != 0 and "--batch-size" in result.output
    assert _embedded(imported) == set()


@pytest.mark.parametrize("flag", ["--refit", "--rebuild"])
def test_embed_runs_refit_and_rebuild_switch_every_run_to_a_new_version(imported, sample_history, flag) -> None:
    _embed(imported)
    pipeline.import_records((("more", i, r) for i, r in enumerate(sample_history[300:350])), database_url=imported)
    summary = _embed(imported, flag)
    assert (summary["version"], summary["fitted"], summary["switched_from"]) == (2, True, 1)
    assert _embedded(imported, 2) == {r["run_id"] for r in sample_history[:350]} and not _embedded(imported, 1)
    with connect(imported) as conn:
        assert conn.execute("SELECT version, fitted_on_runs FROM historical_db.encoder_versions "
                            "WHERE is_active").fetchone() == (2, 350)


def test_embed_runs_schema_overrides_the_fit(imported, tmp_path, sample_history) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"env": {"realized_vol": {"ignore": True}}}))
    _embed(imported, "--schema", str(schema))
    with connect(imported) as conn:
        env = load_space(conn, 1).branches_["env"]
    assert "realized_vol" not in env.feature_keys() and "realized_vol" in env.ignored_keys_
    calm, wild = sample_history[0]["env"], dict(sample_history[0]["env"], realized_vol=3.0)
    assert np.array_equal(*env.transform([calm, wild]))
    rebuilt = _embed(imported, "--rebuild")  # without the overrides, realized_vol counts again
    with connect(imported) as conn:
        env = load_space(conn, rebuilt["version"]).branches_["env"]
    assert "realized_vol" in env.feature_keys()


# -- migrate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrently", [True, False])
def test_migrate_concurrently_builds_the_indexes_concurrently(empty_db, concurrently) -> None:
    migrate.upgrade(empty_db, "0003_runs_and_encoder_registry")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.ddl_log (statement text)")
        conn.execute("CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN INSERT INTO public.ddl_log VALUES (current_query()); END $$")
        conn.execute("CREATE EVENT TRIGGER log_ddl ON ddl_command_end WHEN TAG IN ('CREATE INDEX') "
                     "EXECUTE FUNCTION public.log_ddl()")
    _ok("--database-url", empty_db, "migrate", *(["--concurrently"] if concurrently else []))
    with psycopg.connect(empty_db) as conn:
        logged = [r[0] for r in conn.execute("SELECT statement FROM public.ddl_log").fetchall()]
    hnsw = [s for s in logged if "_hnsw" in s]
    assert len(hnsw) == 4 and all(("CREATE INDEX CONCURRENTLY" in s) == concurrently for s in hnsw)
    status = migrate.status(empty_db)
    assert status.up_to_date and status.invalid_indexes == []


def test_migrate_allow_data_loss_lets_a_downgrade_drop_stored_runs(db_url, sample_history) -> None:
    pipeline.import_records([("one", 1, sample_history[0])], database_url=db_url)
    refused = _cli("--database-url", db_url, "migrate", "--downgrade", "base")
    assert refused.exit_code == 1 and "historical_db.runs holds 1 rows" in refused.output
    assert migrate.status(db_url).up_to_date
    _ok("--database-url", db_url, "migrate", "--downgrade", "base", "--allow-data-loss")
    assert migrate.status(db_url).current is None


def _exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT coalesce(to_regclass(%s)::oid, to_regproc(%s)::oid) IS NOT NULL",
                            (name, name)).fetchone()[0]


def test_migrate_to_stops_at_that_revision(empty_db) -> None:
    _ok("--database-url", empty_db, "migrate", "--to", "0005_search_functions")
    assert migrate.status(empty_db).current == "0005_search_functions"
    assert _exists(empty_db, "historical_db.search_runs_v1") and not _exists(empty_db, "historical_db.clusterings")
    _ok("--database-url", empty_db, "migrate")
    assert _exists(empty_db, "historical_db.search_runs_v2")


def test_migrate_sql_prints_the_upgrade_up_to_to_and_runs_nothing(empty_db) -> None:
    script = _ok("--database-url", empty_db, "migrate", "--sql", "--to", "0003_runs_and_encoder_registry").stdout
    assert migrate.status(empty_db).current is None and not _exists(empty_db, "historical_db.runs")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(script)
    assert migrate.status(empty_db).current == "0003_runs_and_encoder_registry"
    assert _exists(empty_db, "historical_db.runs") and not _exists(empty_db, "historical_db.search_runs_v1")


# -- import-runs and sample-runs ----------------------------------------------------------------------


def test_import_runs_rejects_writes_each_rejected_record_as_a_json_line(db_url, sample_history, tmp_path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(sample_history[0]), "{not json",
                               json.dumps({"run_id": "NO_DATE"}), json.dumps(sample_history[1])]) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    _ok("--database-url", db_url, "import-runs", str(path), "--rejects", str(rejects))
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["source"], r["line"], r["run_id"], r["field"]) for r in written] == [
        (str(path), 2, None, "(line)"), (str(path), 3, "NO_DATE", "as_of_date")]
    assert all(r["reason"] for r in written)
    with psycopg.connect(db_url) as conn:
        stored = {r[0] for r in conn.execute("SELECT run_id FROM historical_db.runs").fetchall()}
    assert stored == {sample_history[0]["run_id"], sample_history[1]["run_id"]}


def test_import_runs_batch_size_commits_each_batch_on_its_own(db_url, sample_history, tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_history[:250]))
    _ok("--database-url", db_url, "import-runs", str(path), "--batch-size", "60")
    with psycopg.connect(db_url) as conn:
        count, transactions = conn.execute(
            "SELECT count(*), count(DISTINCT xmin::text) FROM historical_db.runs").fetchone()
    assert (count, transactions) == (250, 5)  # 60 + 60 + 60 + 60 + 10


def test_sample_runs_n_seed_and_out_write_that_history(tmp_path) -> None:
    plain, packed, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl"
    _ok("sample-runs", "--n", "40", "--seed", "4", "--out", str(plain))
    _ok("sample-runs", "--n", "40", "--seed", "4", "--out", str(packed))
    _ok("sample-runs", "--n", "40", "--seed", "5", "--out", str(other))
    written = [json.loads(line) for line in plain.read_text().splitlines()]
    assert written == sample_runs(40, seed=4)
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and gzip.decompress(packed.read_bytes()).decode() == plain.read_text()
    assert [json.loads(line) for line in other.read_text().splitlines()] != written
