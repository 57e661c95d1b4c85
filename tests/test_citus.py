"""metaspace on a real Citus cluster (the ``citus`` marker): ``METASPACE_CITUS_URL`` names a coordinator's
database with the ``citus`` and ``vector`` extensions and its workers registered, as ``metaspace db cluster
start`` leaves it (``.ci/citus.sh`` starts one from the vendored tarball and runs these). Without the variable
every test here skips, saying so. The tests share the cluster's one database and empty its tables first.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from metaspace.cli.main import cli
from metaspace.store import citus, migrate

pytestmark = pytest.mark.citus

RUN_TABLES = ", ".join(f"historical_db.{name}" for name in citus.DISTRIBUTED)


@pytest.fixture(scope="module")
def citus_url() -> str:
    url = os.environ.get("METASPACE_CITUS_URL")
    if not url:
        pytest.skip("METASPACE_CITUS_URL is not set: start a local cluster with `metaspace db cluster start "
                    "--citus-source TARBALL` and set it to the URL printed (.ci/citus.sh does both)")
    _fresh_schema(url)
    return url


def _fresh_schema(url: str) -> None:
    """The cluster's database with a new schema (and no encoder fitted yet), distributed by migrate."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS historical_db CASCADE")
        conn.execute("DROP TABLE IF EXISTS public.metaspace_schema_version")
    result = CliRunner().invoke(cli, ["--database-url", url, "migrate"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def cluster(citus_url: str) -> str:
    with psycopg.connect(citus_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {RUN_TABLES} CASCADE")
    return citus_url


def _invoke(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--database-url", url, *args])
    assert result.exit_code == 0, result.output
    return result.output


def _sample(tmp_path: Path, n: int, seed: int = 7) -> Path:
    out = tmp_path / f"runs_{n}_{seed}.jsonl"
    result = CliRunner().invoke(cli, ["sample-runs", "--n", str(n), "--seed", str(seed), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_migrate_distributes_the_run_tables_by_run_id_and_copies_the_rest(citus_url: str) -> None:
    with psycopg.connect(citus_url, autocommit=True) as conn:
        layout = citus.layout(conn)
        for name in citus.DISTRIBUTED:
            assert layout[name] == ("distributed", citus.SHARD_COUNT), name
        for name in citus.REFERENCE:
            assert layout[name][0] == "reference", name
        groups = {row[0] for row in conn.execute(
            "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = ANY (%s::regclass[])",
            ([f"historical_db.{name}" for name in citus.DISTRIBUTED],))}
        assert len(groups) == 1  # one shard group: every join between them is on one shard
        for name in citus.DISTRIBUTED:
            # a replica identity (the primary key, holding run_id), so that a shard can move under writes
            identity, key = conn.execute(
                "SELECT c.relreplident, (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
                "WHERE i.indrelid = c.oid AND i.indisprimary) FROM pg_class c WHERE c.oid = %s::regclass",
                (f"historical_db.{name}",)).fetchone()
            assert identity == "d" and key and "run_id" in key, (name, identity, key)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'joint_embeddings_fill_run_id'"
                            ).fetchone()[0] == 0
    # a second migrate finds nothing left to distribute
    assert "Citus:" not in _invoke(citus_url, "migrate")


def test_import_runs_lands_each_run_once_across_the_shards(cluster: str, tmp_path: Path) -> None:
    """Before, every import into a distributed runs table failed: its upsert set updated_at = now() in
    ON CONFLICT DO UPDATE, and Citus takes only immutable functions there."""
    runs = _sample(tmp_path, 600)
    assert "inserted 600" in _invoke(cluster, "import-runs", str(runs))
    assert "unchanged 600" in _invoke(cluster, "import-runs", str(runs))
    changed = tmp_path / "changed.jsonl"
    lines = runs.read_text().splitlines()
    changed.write_text("\n".join(line.replace('"outcome":{', '"outcome":{"note":"rerun",', 1)
                                 for line in lines[:50]) + "\n")
    assert "updated 50" in _invoke(cluster, "import-runs", str(changed))
    with psycopg.connect(cluster, autocommit=True) as conn:
        total, distinct, touched = conn.execute(
            "SELECT count(*), count(DISTINCT run_id), count(*) FILTER (WHERE outcome ? 'note') "
            "FROM historical_db.runs").fetchone()
        nodes = conn.execute(
            "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'historical_db.runs'::regclass "
            "AND shard_size > 0").fetchone()[0]
    assert (total, distinct, touched) == (600, 600, 50)
    assert nodes >= 2  # the runs are spread over the workers, not held on one


def test_shards_moved_while_runs_are_imported_and_embedded_lose_no_run_and_no_vector(cluster: str,
                                                                                  tmp_path: Path) -> None:
    """Rebalancing under writes: onto a worker that holds no shard yet where the cluster has one
    (citus_rebalance_start; .ci/citus.sh adds a third worker for this), else one shard group moved to another
    worker; meanwhile import-runs and embed-runs write. After: every run once, with its one joint vector and its
    entities, and db check clean. Logical replication moves the shards: each table needs its replica identity."""
    _invoke(cluster, "import-runs", str(_sample(tmp_path, 1200, seed=1)))
    later = [_sample(tmp_path, 300, seed=seed) for seed in (2, 3)]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _invoke(cluster, "embed-runs")
            for path in later:
                _invoke(cluster, "import-runs", str(path))
                _invoke(cluster, "embed-runs")
        except BaseException as exc:  # (reported below, in the test's thread)
            errors.append(exc)

    with psycopg.connect(cluster, autocommit=True) as conn:
        workers = conn.execute("SELECT nodename, nodeport FROM pg_dist_node WHERE groupid > 0 AND isactive "
                               "ORDER BY nodeport").fetchall()
        if len(workers) < 2:
            pytest.skip("the cluster has one worker: nothing to move a shard to")
        empty = conn.execute(
            "SELECT count(*) FROM pg_dist_node n WHERE n.groupid > 0 AND n.isactive AND NOT EXISTS "
            "(SELECT 1 FROM citus_shards s WHERE s.nodeport = n.nodeport AND s.table_name = %s::regclass)",
            ("historical_db.runs",)).fetchone()[0]
        writer = threading.Thread(target=write)
        writer.start()
        if empty:
            conn.execute("SELECT citus_rebalance_start(shard_transfer_mode => 'force_logical')")
            conn.execute("SELECT citus_rebalance_wait()")
        else:
            shard, host, port = conn.execute(
                "SELECT shardid, nodename, nodeport FROM citus_shards WHERE table_name = %s::regclass "
                "ORDER BY shard_size DESC, shardid LIMIT 1", ("historical_db.runs",)).fetchone()
            target = next(worker for worker in workers if worker[1] != port)
            conn.execute("SELECT citus_move_shard_placement(%s, %s, %s, %s, %s, 'force_logical')",
                         (shard, host, port, target[0], target[1]))
        writer.join()
        assert not errors, errors
        placed = conn.execute("SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = %s::regclass",
                              ("historical_db.runs",)).fetchone()[0]
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM historical_db.runs), (SELECT count(DISTINCT run_id) FROM historical_db.runs), "
            "(SELECT count(*) FROM historical_db.joint_embeddings), (SELECT count(*) FROM historical_db.run_entities)"
        ).fetchone()
    _invoke(cluster, "embed-runs")  # (whatever a batch under a move left pending: nothing, or embedded now)
    with psycopg.connect(cluster) as conn:
        after = conn.execute("SELECT (SELECT count(*) FROM historical_db.joint_embeddings), "
                             "(SELECT count(*) FROM historical_db.run_entities)").fetchone()
    assert counts[:2] == (1800, 1800)
    assert after == (1800, 1800)
    assert placed == len(workers) if empty else placed >= 2
    result = CliRunner().invoke(cli, ["--database-url", cluster, "db", "check"])
    assert result.exit_code == 0, result.output


SPACES = ("joint", "config", "env", "outcome")


def test_a_downgrade_of_a_distributed_schema_is_refused_and_says_why(citus_url: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", citus_url, "migrate", "--downgrade", "0019_branch_entities"])
    assert result.exit_code == 1 and "distributed by Citus" in result.output and "Traceback" not in result.output
    with psycopg.connect(citus_url) as conn:
        assert conn.execute("SELECT version_num FROM public.metaspace_schema_version").fetchone()[0] == migrate.head()


def _neighbours(url: str, run_id: str, space: str, as_of: str | None, exact: bool, k: int = 10) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT run_id, distance FROM historical_db.neighbours(%s, %s, %s, %s::date, exact => %s)",
                            (run_id, k, space, as_of, exact)).fetchall()


@pytest.fixture(scope="module")
def embedded_pair(citus_url: str, tmp_path_factory: pytest.TempPathFactory, server_url: str, template_url: str):
    """The same 1,500 runs imported and embedded on the cluster (every space with its graph, one per shard) and
    on one node (the suite's server): (cluster URL, one node's URL, the runs' ids)."""
    from conftest import TEMPLATE, _create_database, _drop_database

    runs = _sample(tmp_path_factory.mktemp("citus"), 1500, seed=5)
    _fresh_schema(citus_url)  # (the encoder is fitted on these runs, as on the one node)
    name = "t_citus_pair"
    _drop_database(server_url, name)
    single = _create_database(server_url, name, template=TEMPLATE)
    for url in (citus_url, single):
        _invoke(url, "import-runs", str(runs))
    assert "embedded 1500" in _invoke(citus_url, "embed-runs", "--index-min-vectors", "0")
    assert "embedded 1500" in _invoke(single, "embed-runs")
    with psycopg.connect(citus_url) as conn:
        ids = [run_id for (run_id,) in conn.execute("SELECT run_id FROM historical_db.runs ORDER BY run_id")]
    yield citus_url, single, ids
    _drop_database(server_url, name)


def test_embed_runs_on_the_cluster_writes_one_vector_per_run_and_no_orphan(embedded_pair) -> None:
    """Before, embed-runs failed on Citus: its share lock of the batch's runs spanned shards, and
    attach_entities_v1 read the distributed runs from within its writes of the reference table."""
    cluster, single, ids = embedded_pair
    counts = {}
    for url in (cluster, single):
        with psycopg.connect(url) as conn:
            counts[url] = conn.execute(
                "SELECT (SELECT count(*) FROM historical_db.joint_embeddings), "
                "(SELECT count(DISTINCT run_id) FROM historical_db.joint_embeddings), "
                "(SELECT count(*) FROM historical_db.run_entities), "
                "(SELECT count(*) FROM historical_db.branch_entities)").fetchone()
    assert counts[cluster][:3] == (1500, 1500, 1500)
    assert counts[cluster] == counts[single]  # the same distinct entities as on one node
    result = CliRunner().invoke(cli, ["--database-url", cluster, "db", "check"])
    assert result.exit_code == 0, result.output


def test_exact_search_on_the_cluster_gives_one_nodes_runs_in_its_order(embedded_pair) -> None:
    cluster, single, ids = embedded_pair
    for run_id in ids[::100]:
        for space in SPACES:
            for as_of in (None, "2010-01-01"):
                there = _neighbours(cluster, run_id, space, as_of, exact=True)
                here = _neighbours(single, run_id, space, as_of, exact=True)
                assert [r for r, _ in there] == [r for r, _ in here], (run_id, space, as_of)
                assert all(abs(a - b) <= 1e-6 for (_, a), (_, b) in zip(there, here)), (run_id, space, as_of)


def test_suggest_and_evaluate_on_the_cluster_answer_as_one_node(embedded_pair, tmp_path: Path) -> None:
    """The same suggestions (configs, order, evidence; floats within 1e-12: a sum meets the shards' partial sums in
    the order they arrive) and the same replay of past decisions."""
    import json

    from conftest import assert_same_answer

    import metaspace

    cluster, single, ids = embedded_pair
    with psycopg.connect(single) as conn:
        envs = [env for (env,) in conn.execute("SELECT env FROM historical_db.runs WHERE run_id = ANY (%s) "
                                               "ORDER BY run_id", (ids[::300],))]
    targets = tmp_path / "envs.jsonl"
    targets.write_text("".join(json.dumps(env) + "\n" for env in envs))
    for options in ([], ["--as-of", "2008-06-30"], ["--exact", "--min-runs", "1"]):
        answers = [[json.loads(line) for line in _invoke(url, "suggest", "--env", str(targets), "-k", "5",
                                                          "--format", "json", *options).splitlines()
                     if line.startswith("{")] for url in (cluster, single)]
        assert answers[1] and any(answer["rows"] for answer in answers[1]), answers[1]
        assert_same_answer(answers[0], answers[1])
    replays = [metaspace.evaluate(database_url=url).as_dict() for url in (cluster, single)]
    for replay in replays:
        replay.pop("seconds")
    assert replays[1]["decisions"]
    assert_same_answer(replays[0], replays[1])


def test_suggests_records_on_the_cluster_are_one_nodes_rows(embedded_pair) -> None:
    """recent_records_v2 on Citus (each config's cutoff date by a LIMIT the shards apply to their index walks, then
    the runs from the cutoffs in one join) gives one node's rows (a LATERAL FETCH FIRST n ROWS WITH TIES per
    config): a count that cuts through one date's runs, all of them, none, no count; as of a date; by strategy; an
    objective no run reports; a config with no run, one asked for twice, a NULL one, none at all; more than 64
    candidates (one ranked query)."""
    cluster, single, _ = embedded_pair
    with psycopg.connect(single) as conn:
        configs = [c for (c,) in conn.execute(
            "SELECT coalesce(config_id, run_id) FROM historical_db.runs GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 6")]
        # a count whose last run shares its date with the next: the ties decide what is taken
        tie = conn.execute(
            "SELECT n FROM (SELECT as_of_date, lead(as_of_date) OVER w AS next, row_number() OVER w AS n "
            "FROM historical_db.runs WHERE config_id = ANY (%s) WINDOW w AS (PARTITION BY config_id "
            "ORDER BY as_of_date DESC)) t WHERE as_of_date = next ORDER BY n LIMIT 1", (configs,)).fetchone()
        strategy = conn.execute("SELECT strategy_id FROM historical_db.runs WHERE strategy_id IS NOT NULL "
                                "LIMIT 1").fetchone()[0]
    assert tie, "no config runs twice on one date here: the ties would go untested"
    call = ("SELECT * FROM historical_db.recent_records_v2(%s, %s, %s, %s, %s) "
            "ORDER BY config_id, as_of_date, env_key, value")
    cases = [(tie[0], None, ["sharpe"], None), (1, None, ["sharpe"], None), (3, None, ["sharpe"], None),
             (40, "2008-06-30", ["sharpe"], None), (0, None, ["sharpe"], None), (10**9, None, ["sharpe"], None),
             (None, None, ["sharpe"], None), (2**63 - 1, None, ["sharpe"], None),
             (5, None, ["sharpe"], [strategy]), (5, None, ["no such objective"], None)]
    asked_for = [configs + ["no such config"], configs[:2] + configs[:1] + [None],
                 configs + [f"no such config {i}" for i in range(64)],  # (more than 64: the one ranked query)
                 [], None]
    for asked in asked_for:
        for per_config, as_of, path, strategies in cases:
            rows = []
            for url in (cluster, single):
                with psycopg.connect(url) as conn:
                    rows.append(conn.execute(call, (asked, per_config, as_of, path, strategies)).fetchall())
            case = (asked and len(asked), per_config, as_of, path, strategies)
            assert rows[0] == rows[1], case
            assert bool(rows[1]) == (bool(asked) and per_config != 0 and path == ["sharpe"]), case
    with psycopg.connect(cluster) as conn, pytest.raises(psycopg.errors.InvalidRowCountInLimitClause):
        conn.execute(call, (configs, -1, None, ["sharpe"], None))


def _shards_runs_read(cluster: str) -> int:
    """The rows of the runs' shards read so far, by index or scan, summed over the workers (the statistics of the
    worker backends a finished session's connections ran on, flushed as they end)."""
    with psycopg.connect(cluster, autocommit=True) as conn:
        counts = conn.execute(
            "SELECT result FROM run_command_on_workers($$SELECT coalesce(sum(coalesce(idx_tup_fetch, 0) "
            "+ coalesce(seq_tup_read, 0)), 0) FROM pg_stat_user_tables WHERE schemaname = 'historical_db' "
            "AND relname ~ '^runs_[0-9]+$'$$)").fetchall()
    return sum(int(count) for (count,) in counts)


def test_suggests_records_on_the_cluster_read_each_configs_newest_runs_not_all(embedded_pair) -> None:
    """Before revision 0022 suggest's records on Citus ranked every run of the candidate configs, read on the
    shards (at 1,000,000 runs, 4.6 s a suggest against 0.1 s on one node); now each shard walks its index newest
    first and stops, so one run a config reads far fewer of the shards' rows than those configs hold."""
    import time

    cluster, _, _ = embedded_pair
    with psycopg.connect(cluster) as conn:
        configs, holding = conn.execute(
            "SELECT array_agg(c), sum(n) FROM (SELECT coalesce(config_id, run_id) AS c, count(*) AS n "
            "FROM historical_db.runs GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 8) t").fetchone()
    assert holding >= 300, holding  # enough runs for the difference to show
    time.sleep(1.5)  # (the shards' reads above flushed to the statistics: a backend flushes at most once a second)
    before = _shards_runs_read(cluster)
    with psycopg.connect(cluster) as conn:  # (its connections to the workers end with it, flushing their counts)
        rows = conn.execute("SELECT * FROM historical_db.recent_records_v2(%s, 1, NULL, '{sharpe}', NULL)",
                            (configs,)).fetchall()
    assert {config for _, _, config, _ in rows} == set(configs)
    readings = [-1]
    for _ in range(40):  # (the worker backends end a moment after the coordinator's session, each in its time)
        time.sleep(0.5)
        readings.append(_shards_runs_read(cluster) - before)
        if readings[-1] > 0 and readings[-1] == readings[-2]:
            break
    read = readings[-1]
    assert 0 < read < holding / 3, (readings, holding)


def test_the_shards_graph_walks_find_what_the_exact_scan_finds(embedded_pair) -> None:
    """Each shard walks its own graph (at the default hnsw.ef_search) and the coordinator merges: recall@10
    against the exact scan, per space, at least 0.95."""
    cluster, _, ids = embedded_pair
    with psycopg.connect(cluster) as conn:
        # PRODUCT.md's plain query, with the query vector as a value (Citus plans no subquery there)
        query = conn.execute("SELECT vector::text FROM historical_db.joint_embeddings WHERE run_id = %s",
                             (ids[0],)).fetchone()[0]
        # (bound client-side: a parameter there fails on the workers, Citus #7078, docs/scaling.md; and at 190
        # rows a shard the planner would rather sort them all, so the scan is ruled out on the workers too: a
        # session SET stays on the coordinator, a SET LOCAL goes with each remote transaction in this mode)
        with conn.transaction():
            conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            conn.execute("SET LOCAL enable_seqscan = off")
            explain = "\n".join(row[0] for row in psycopg.ClientCursor(conn).execute(
                "EXPLAIN SELECT run_id FROM historical_db.joint_embeddings ORDER BY vector <-> %s::vector LIMIT 10",
                (query,)))
    assert "joint_embeddings_vector_hnsw" in explain, explain  # each shard walks its own graph
    for space in SPACES:
        recall = []
        for run_id in ids[::50]:
            exact = _neighbours(cluster, run_id, space, None, exact=True)
            walked = _neighbours(cluster, run_id, space, None, exact=False)
            kth = exact[-1][1]  # (recall on runs: a returned run within the exact k-th distance counts)
            recall.append(sum(1 for _, distance in walked if distance <= kth + 1e-9) / len(exact))
        assert sum(recall) / len(recall) >= 0.95, (space, sum(recall) / len(recall))
