"""The selective as-of tail (issue 14, revision 0014): embed-runs builds as-of prefix graphs, and a search as
of an early date walks the smallest one covering its date instead of scanning the runs it leaves, with the
same answers where it is exact and none that depend on later runs. Real PostgreSQL with pgvector; the
thresholds are scaled down (``asof_exact_runs`` = 50 over 3,000 runs) so the paths of a million-run history
are taken here."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from test_pipeline import embed_runs_at_once

from metaspace import pipeline
from metaspace.cli import cli
from metaspace.errors import MetaspaceError
from metaspace.sample import write_runs
from metaspace.store import graphs, migrate

EXACT_RUNS = 30
REAL_MIN_MULTIPLE = graphs.PREFIX_MIN_MULTIPLE


@pytest.fixture(autouse=True)
def _prefix_graphs_at_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanics are tested on a few hundred runs: prefix graphs however small the space (the size below
    which they are not built is test_prefix_graphs_only_where_they_pay's)."""
    monkeypatch.setattr(graphs, "PREFIX_MIN_MULTIPLE", 1)


def _create(server_url: str, name: str) -> str:
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE metaspace_test_template").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


@pytest.fixture(scope="module")
def tail_db(server_url: str, sample_template: str) -> Iterator[str]:
    """3,000 sample runs, every space indexed (the session's sample history, copied), prefix graphs down to 50
    runs."""
    from psycopg import sql

    name = f"a_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                      sql.Identifier(sample_template)))
    url = make_conninfo(server_url, dbname=name)
    pipeline.embed_runs(database_url=url, index_min_vectors=0, asof_exact_runs=EXACT_RUNS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _date_leaving(conn: psycopg.Connection, runs: int) -> dt.date:
    """The as-of date that leaves about ``runs`` joint vectors."""
    return conn.execute("SELECT as_of_date FROM historical_db.joint_embeddings ORDER BY as_of_date "
                        "OFFSET %s LIMIT 1", (runs - 1,)).fetchone()[0]


def _index_scans(conn: psycopg.Connection) -> dict[str, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return dict(conn.execute("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
                             "WHERE schemaname = 'historical_db'").fetchall())


def _queries(conn: psycopg.Connection, count: int) -> list[str]:
    return [v for (v,) in conn.execute("SELECT vector::text FROM historical_db.joint_embeddings "
                                       "ORDER BY entity_scope->>'run_id' DESC LIMIT %s", (count,)).fetchall()]


SEARCH = "SELECT run_id, distance FROM historical_db.search_runs_v3(%s::vector, 10, 'joint', %s, exact => %s)"


def test_embed_runs_builds_prefix_graphs_at_dates_leaving_a_third_of_the_level_above(tail_db: str) -> None:
    with psycopg.connect(tail_db) as conn:
        prefixes = graphs.present_prefix(conn)
        total = conn.execute("SELECT count(*) FROM historical_db.joint_embeddings").fetchone()[0]
        assert set(prefixes) == {("joint", "vector"), ("env", "halfvec"), ("outcome", "halfvec")}
        joint = prefixes[("joint", "vector")]
        assert [p.name for p in joint] == [f"asof_joint_vector_{level}" for level in range(1, len(joint) + 1)]
        runs = [conn.execute("SELECT count(*) FROM historical_db.joint_embeddings WHERE as_of_date <= %s",
                             (p.as_of,)).fetchone()[0] for p in joint]
        definition = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'asof_joint_vector_1'"
                                  ).fetchone()[0]
    assert "USING hnsw (vector vector_l2_ops)" in definition and "WHERE (as_of_date <= '" in definition
    targets = [total / 3 ** level for level in range(1, len(joint) + 1)]
    assert len(joint) == 4 and runs == sorted(runs, reverse=True)  # 1,000, 333, 111, 37 of 3,000
    assert all(target <= count < target + 5 for target, count in zip(targets, runs)), (runs, targets)
    assert EXACT_RUNS <= runs[-1] < 3 * EXACT_RUNS


def test_a_selective_as_of_search_walks_the_smallest_prefix_graph_covering_its_date(tail_db: str) -> None:
    """The defect of issue 14: below T = sqrt(5.3 k N) (at least 1,000 runs) nearest_runs_v2 scanned every run
    known as of the date, wherever they lay; with prefix graphs it walks the one holding the date."""
    with psycopg.connect(tail_db, autocommit=True) as conn:
        level = {p.level: p for p in graphs.present_prefix(conn)[("joint", "vector")]}
        day = _date_leaving(conn, 80)  # between the 37-run and the 111-run graphs
        assert level[4].as_of < day <= level[3].as_of
        q = _queries(conn, 1)[0]
        before = _index_scans(conn)
        rows = conn.execute(SEARCH, (q, day, False)).fetchall()
        after = _index_scans(conn)
    used = {name for name, scans in after.items() if scans > before.get(name, 0)}
    assert "asof_joint_vector_3" in used, used
    assert not used & {"joint_embeddings_vector_hnsw", "asof_joint_vector_1", "asof_joint_vector_2"}, used
    assert len(rows) == 10 and all(r[1] is not None for r in rows)


def test_a_halfvec_space_walks_its_halfvec_prefix_graph(tail_db: str) -> None:
    with psycopg.connect(tail_db, autocommit=True) as conn:
        assert [p.name for p in graphs.present_prefix(conn)[("env", "halfvec")]][2] == "asof_env_halfvec_3"
        day = _date_leaving(conn, 80)
        q = conn.execute("SELECT vector::text FROM historical_db.branch_embeddings WHERE branch = 'env' "
                         "ORDER BY run_id LIMIT 1").fetchone()[0]
        before = _index_scans(conn)
        rows = conn.execute("SELECT run_id, distance FROM historical_db.search_runs_v3(%s::vector, 10, 'env', %s)",
                            (q, day)).fetchall()
        used = {name for name, scans in _index_scans(conn).items() if scans > before.get(name, 0)}
    assert "asof_env_halfvec_3" in used and "branch_embeddings_env_halfvec_hnsw" not in used, used
    assert len(rows) == 10 and [r[1] for r in rows] == sorted(r[1] for r in rows)


def test_below_the_smallest_prefix_graph_the_answer_is_the_exact_one(tail_db: str) -> None:
    with psycopg.connect(tail_db, autocommit=True) as conn:
        day = _date_leaving(conn, EXACT_RUNS - 10)
        for q in _queries(conn, 5):
            before = _index_scans(conn)
            answer = conn.execute(SEARCH, (q, day, False)).fetchall()
            walked = {name for name, scans in _index_scans(conn).items()
                      if scans > before.get(name, 0) and ("hnsw" in name or name.startswith("asof_"))}
            assert answer == conn.execute(SEARCH, (q, day, True)).fetchall() and walked == set()


def test_walked_answers_find_the_exact_neighbours(tail_db: str) -> None:
    with psycopg.connect(tail_db, autocommit=True) as conn:
        for runs in (80, 300, 900):
            day = _date_leaving(conn, runs)
            found = total = 0
            for q in _queries(conn, 10):
                walked = conn.execute(SEARCH, (q, day, False)).fetchall()
                exact = conn.execute(SEARCH, (q, day, True)).fetchall()
                kth = exact[-1][1] + 1e-9
                assert all(r[1] is not None for r in walked) and len(walked) == 10
                found += min(10, sum(1 for r in walked if r[1] <= kth))
                total += 10
            assert found / total >= 0.9, runs


def test_as_of_answers_do_not_depend_on_runs_dated_after_the_date(tail_db: str, sample_history: list[dict],
                                                                   tmp_path) -> None:
    """Later runs never enter a prefix graph dated before them, so the walk as of an early date is the same
    walk, on the same graph, with or without them."""
    with psycopg.connect(tail_db, autocommit=True) as conn:
        day = _date_leaving(conn, 80)
        queries = _queries(conn, 5)
        before = [conn.execute(SEARCH, (q, day, False)).fetchall() for q in queries]
        prefixes = graphs.present_prefix(conn)
    later = [dict(run, run_id=f"LATER_{run['run_id']}") for run in sample_history[-60:] if run["as_of_date"] > day.isoformat()]
    assert later
    pipeline.import_runs([str(write_runs(later, tmp_path / "later.jsonl.gz"))], database_url=tail_db)
    pipeline.embed_runs(database_url=tail_db)
    with psycopg.connect(tail_db, autocommit=True) as conn:
        assert graphs.present_prefix(conn) == prefixes  # a few later runs: no level drifted, nothing rebuilt
        after = [conn.execute(SEARCH, (q, day, False)).fetchall() for q in queries]
        conn.execute("DELETE FROM historical_db.joint_embeddings WHERE entity_scope->>'run_id' LIKE 'LATER!_%%' "
                     "ESCAPE '!'")
    assert after == before


def test_prefix_graphs_are_rebuilt_once_the_history_has_grown_past_their_plan() -> None:
    day = dt.date(2020, 1, 1)
    history = [(day + dt.timedelta(days=i), 10) for i in range(300)]  # 3,000 runs, 10 a day
    plan = graphs.plan_prefix(history, "joint", "vector", 30)  # a third, a ninth, ... down to 30 runs
    assert [p.runs for p in plan] == [1000, 340, 120, 40] and not graphs.prefix_stale(plan, plan, history)
    grown = history + [(day + dt.timedelta(days=300 + i), 10) for i in range(150)]  # 1.5x, all later
    assert not graphs.prefix_stale(plan, graphs.plan_prefix(grown, "joint", "vector", 30), grown)
    doubled = history + [(day + dt.timedelta(days=300 + i), 10) for i in range(300)]  # 2x > sqrt(3)x
    assert graphs.prefix_stale(plan, graphs.plan_prefix(doubled, "joint", "vector", 30), doubled)
    backfill = [(d, count * 3) for d, count in history[:100]] + history[100:]  # old runs added: level 1 grows
    assert graphs.prefix_stale(plan, graphs.plan_prefix(backfill, "joint", "vector", 30), backfill)
    assert graphs.plan_prefix(history, "joint", "vector", 2000) == []  # a level would hold 1,000 < 2,000 runs: none


def test_prefix_graphs_only_where_they_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a space of 20,000 vectors (the demo's) got prefix graphs at 10,000 and 3,333 runs: 3 s of the
    demo's 20, where the rule before them had no as-of tail at 100,000 runs (docs/benchmarks.md)."""
    monkeypatch.setattr(graphs, "PREFIX_MIN_MULTIPLE", REAL_MIN_MULTIPLE)
    day = dt.date(2020, 1, 1)
    demo = [(day + dt.timedelta(days=i), 20) for i in range(1000)]  # 20,000 runs
    assert graphs.plan_prefix(demo, "env", "halfvec", graphs.DEFAULT_ASOF_EXACT_RUNS) == []
    large = [(day + dt.timedelta(days=i), 100) for i in range(1000)]  # 100,000 runs
    assert [p.runs for p in graphs.plan_prefix(large, "joint", "vector", graphs.DEFAULT_ASOF_EXACT_RUNS)] == [
        33400, 11200, 3800]
    old = graphs.plan_prefix(large, "env", "halfvec", graphs.DEFAULT_ASOF_EXACT_RUNS)
    assert graphs.prefix_stale(old, graphs.plan_prefix(demo, "env", "halfvec", 2000), demo)  # dropped if shrunk


def test_prefix_graphs_follow_the_space_graph_kind_and_go_with_it(db_url: str, sample_history: list[dict],
                                                                  tmp_path) -> None:
    path = write_runs(sample_history[:600], tmp_path / "runs.jsonl.gz")
    pipeline.import_runs([str(path)], database_url=db_url)
    result = CliRunner().invoke(cli, ["--database-url", db_url, "embed-runs", "--index-min-vectors", "0",
                                      "--indexed-spaces", "joint", "--asof-exact-runs", "60"])
    assert result.exit_code == 0, result.output
    assert "as-of prefix graph(s) built: joint as of" in result.output
    with psycopg.connect(db_url) as conn:
        assert graphs.read_settings(conn).asof_exact_runs == 60
    with psycopg.connect(db_url) as conn:
        assert [p.name for p in graphs.present_prefix(conn)[("joint", "vector")]] == ["asof_joint_vector_1",
                                                                                      "asof_joint_vector_2"]
    pipeline.embed_runs(database_url=db_url, graph_type="halfvec")
    with psycopg.connect(db_url) as conn:
        assert set(graphs.present_prefix(conn)) == {("joint", "halfvec")}
    pipeline.embed_runs(database_url=db_url, indexed_spaces="env")
    with psycopg.connect(db_url) as conn:
        assert set(graphs.present_prefix(conn)) == {("env", "halfvec")}


def test_0014_downgrades_to_the_old_path_rule_and_back_without_losing_a_row(db_url: str, sample_history: list[dict],
                                                                             tmp_path) -> None:
    path = write_runs(sample_history[:600], tmp_path / "runs.jsonl.gz")
    pipeline.import_runs([str(path)], database_url=db_url)
    pipeline.embed_runs(database_url=db_url, index_min_vectors=0, indexed_spaces="joint")
    body = ("SELECT pg_get_functiondef('historical_db.nearest_runs_v2(vector, integer, text, integer, date, text[], "
            "text[], jsonb, boolean)'::regprocedure)")
    counts = "SELECT (SELECT count(*) FROM historical_db.runs), (SELECT count(*) FROM historical_db.joint_embeddings)"
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows_before = conn.execute(counts).fetchone()
        assert "asof_exact_runs" in conn.execute(body).fetchone()[0]
        graphs.save_settings(conn, graphs.IndexSettings(asof_exact_runs=60))
    with pytest.raises(MetaspaceError, match="asof_exact_runs"):
        migrate.downgrade(db_url, "0013_suggest_v4")
    migrate.downgrade(db_url, "0013_suggest_v4", allow_data_loss=True)
    with psycopg.connect(db_url, autocommit=True) as conn:
        old = conn.execute(body).fetchone()[0]
        assert "asof_exact_runs" not in old and "sqrt(5.3 * k" in old
        assert conn.execute(counts).fetchone() == rows_before
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO historical_db.settings (name, value) VALUES ('asof_exact_runs', '100')")
    migrate.upgrade(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert "asof_exact_runs" in conn.execute(body).fetchone()[0]
        assert conn.execute(counts).fetchone() == rows_before
        assert graphs.read_settings(conn).asof_exact_runs is None


def test_0014_downgrade_drops_the_prefix_graphs_and_no_row(db_url: str, sample_history: list[dict],
                                                            tmp_path) -> None:
    """At 0013 nothing plans, rebuilds or drops prefix graphs, yet every insert would still feed them."""
    path = write_runs(sample_history[:600], tmp_path / "runs.jsonl.gz")
    pipeline.import_runs([str(path)], database_url=db_url)
    pipeline.embed_runs(database_url=db_url, index_min_vectors=0, asof_exact_runs=60)
    prefix_graphs = ("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = 'historical_db' AND c.relname ~ '^asof_' ORDER BY 1")
    counts = ("SELECT (SELECT count(*) FROM historical_db.runs), "
              "(SELECT count(*) FROM historical_db.joint_embeddings), "
              "(SELECT count(*) FROM historical_db.branch_embeddings)")
    with psycopg.connect(db_url) as conn:
        built = [name for (name,) in conn.execute(prefix_graphs).fetchall()]
        rows_before = conn.execute(counts).fetchone()
    assert {name.rsplit("_", 2)[0] for name in built} == {"asof_joint", "asof_env", "asof_outcome"}
    migrate.downgrade(db_url, "0013_suggest_v4", allow_data_loss=True)
    with psycopg.connect(db_url) as conn:
        assert conn.execute(prefix_graphs).fetchall() == []
        assert conn.execute(counts).fetchone() == rows_before
    migrate.upgrade(db_url)
    pipeline.embed_runs(database_url=db_url, asof_exact_runs=60)
    with psycopg.connect(db_url) as conn:
        assert [name for (name,) in conn.execute(prefix_graphs).fetchall()] == built


# Rebuilding the prefix graphs beside writers and searches -------------------------------------------------

WRITER = ("INSERT INTO historical_db.joint_embeddings (joint_type, as_of_date, entity_scope, model_id, run_id) "
          "VALUES ('TEST_WRITER', DATE '2020-01-01', '{}', 'test-writer', %s)")
PREFIX_INDEXES = ("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                  "JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE n.nspname = 'historical_db' AND c.relname ~ '^asof_' ORDER BY 1")


def _joint_prefix_graphs(db_url: str, sample_history: list[dict], tmp_path) -> None:
    """600 runs, a joint graph and its prefix graphs down to 60 runs: asof_joint_vector_1 and _2."""
    pipeline.import_runs([str(write_runs(sample_history[:600], tmp_path / "runs.jsonl.gz"))], database_url=db_url)
    pipeline.embed_runs(database_url=db_url, index_min_vectors=0, indexed_spaces="joint", asof_exact_runs=60)


def _wait_for_lock_wait(observer: psycopg.Connection, outcome: dict, worker: threading.Thread) -> int:
    """The backend pid of the worker's session, once it waits on a lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.is_alive():
        row = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                               (outcome.get("pid", 0),)).fetchone()
        if row and row[0] == "Lock":
            return outcome["pid"]
        time.sleep(0.05)
    raise AssertionError(f"the rebuild never waited for the open writer: {outcome}")


def test_a_prefix_rebuild_lets_writers_in_and_keeps_the_old_copies_until_the_new_are_valid(
        db_url: str, sample_history: list[dict], tmp_path) -> None:
    """The defect found in review: the rebuild dropped the old copies, then built the new ones with a plain
    CREATE INDEX, so every writer queued behind it for minutes at a million runs, and early-date searches
    walked the whole graph meanwhile. Built CONCURRENTLY, a writer that arrives during the rebuild gets in
    at once, and the old copies answer until the new ones are valid."""
    _joint_prefix_graphs(db_url, sample_history, tmp_path)
    settings = graphs.IndexSettings(("joint",), 0, None, 20)  # a third level: the set is stale, rebuilt
    with psycopg.connect(db_url, autocommit=True) as observer:
        old = graphs.present_prefix(observer)
        assert len(old[("joint", "vector")]) == 2
    outcome: dict[str, object] = {}

    def rebuild() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                outcome["pid"] = conn.info.backend_pid
                outcome["result"] = graphs.sync_prefix_graphs(conn, settings)
        except Exception as error:  # noqa: BLE001 (reported by the test below)
            outcome["error"] = error

    with psycopg.connect(db_url) as open_writer, psycopg.connect(db_url, autocommit=True) as observer, \
            psycopg.connect(db_url) as late_writer:
        open_writer.execute(WRITER, ("test-writer:open",))  # a writer's transaction, open before the rebuild
        rebuilder = threading.Thread(target=rebuild)
        try:
            rebuilder.start()
            pid = _wait_for_lock_wait(observer, outcome, rebuilder)
            observer.execute("SET lock_timeout = '2s'")  # the old code: the catalog read queues behind the DROP
            assert graphs.present_prefix(observer) == old  # still there, still valid
            late_writer.execute("SET lock_timeout = '200ms'")
            late_writer.execute(WRITER, ("test-writer:late",))  # the old code: LockNotAvailable
            late_writer.rollback()
            held = {mode for (mode,) in observer.execute(
                "SELECT mode FROM pg_locks WHERE pid = %s AND granted "
                "AND relation = 'historical_db.joint_embeddings'::regclass", (pid,)).fetchall()}
            assert held == {"ShareUpdateExclusiveLock"}, held  # writers' RowExclusiveLock does not conflict
        finally:
            open_writer.rollback()
            rebuilder.join(120)
    assert not rebuilder.is_alive() and "error" not in outcome, outcome
    built, dropped = outcome["result"]
    assert [p.name for p in built] == ["asof_joint_vector_1", "asof_joint_vector_2", "asof_joint_vector_3"]
    assert dropped == old[("joint", "vector")]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute(PREFIX_INDEXES).fetchall() == [(p.name, True) for p in built]
        assert graphs.present_prefix(conn)[("joint", "vector")] == [
            graphs.PrefixGraph(p.space, p.kind, p.level, p.as_of) for p in built]
        conn.execute("ANALYZE historical_db.joint_embeddings")
        day = built[0].as_of  # the new largest copy's date, under the name nearest_runs_v2 looks for
        q = _queries(conn, 1)[0]
        before = _index_scans(conn)
        rows = conn.execute(SEARCH, (q, day, False)).fetchall()
        used = {name for name, scans in _index_scans(conn).items() if scans > before.get(name, 0)}
        exact = conn.execute(SEARCH, (q, day, True)).fetchall()
    assert "asof_joint_vector_1" in used and "joint_embeddings_vector_hnsw" not in used, used
    assert len(rows) == 10 and len({r[0] for r in rows} & {r[0] for r in exact}) >= 8


def test_an_interrupted_concurrent_build_is_dropped_and_rebuilt_by_the_next_sync(
        db_url: str, sample_history: list[dict], tmp_path) -> None:
    """A CREATE INDEX CONCURRENTLY that is cancelled (or whose session dies) leaves an INVALID index that
    writers keep maintaining and no search can use; the next sync drops it and builds what is missing."""
    from psycopg import sql

    _joint_prefix_graphs(db_url, sample_history, tmp_path)
    settings = graphs.IndexSettings(("joint",), 0, None, 60)
    with psycopg.connect(db_url, autocommit=True) as conn:
        planned = graphs.present_prefix(conn)[("joint", "vector")]
        conn.execute("DROP INDEX historical_db.asof_joint_vector_2")
        with psycopg.connect(db_url) as open_writer:
            open_writer.execute(WRITER, ("test-writer:open",))  # the builds below wait for it, and are cancelled
            conn.execute("SET statement_timeout = '300ms'")
            for name, level in (("asof_joint_vector_2", planned[1]), ("asof_joint_vector_1_new", planned[0])):
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute(sql.SQL(
                        "CREATE INDEX CONCURRENTLY {} ON historical_db.joint_embeddings USING hnsw "
                        "(vector vector_l2_ops) WITH (m = 16, ef_construction = 64) WHERE as_of_date <= {}").format(
                        sql.Identifier(name), sql.Literal(level.as_of)))
            open_writer.rollback()
        conn.execute("RESET statement_timeout")
        assert conn.execute(PREFIX_INDEXES).fetchall() == [("asof_joint_vector_1", True),
                                                           ("asof_joint_vector_1_new", False),
                                                           ("asof_joint_vector_2", False)]
        built, _ = graphs.sync_prefix_graphs(conn, settings)
        assert [p.name for p in built] == ["asof_joint_vector_1", "asof_joint_vector_2"]
        assert conn.execute(PREFIX_INDEXES).fetchall() == [("asof_joint_vector_1", True),
                                                           ("asof_joint_vector_2", True)]
        assert graphs.present_prefix(conn)[("joint", "vector")] == [
            graphs.PrefixGraph(p.space, p.kind, p.level, p.as_of) for p in planned]
        assert graphs.sync_prefix_graphs(conn, settings) == ([], [])  # nothing left to do


def test_inside_a_transaction_the_prefix_graphs_are_rebuilt_in_it(db_url: str, sample_history: list[dict],
                                                                   tmp_path) -> None:
    """CONCURRENTLY cannot run in a transaction block: there the rebuild is the plain one, and rolls back
    with the transaction."""
    _joint_prefix_graphs(db_url, sample_history, tmp_path)
    with psycopg.connect(db_url) as conn:
        old = graphs.present_prefix(conn)
        built, dropped = graphs.sync_prefix_graphs(conn, graphs.IndexSettings(("joint",), 0, None, 20))
        assert len(built) == 3 and dropped == old[("joint", "vector")]
        assert [name for name, valid in conn.execute(PREFIX_INDEXES).fetchall() if valid] == [
            "asof_joint_vector_1", "asof_joint_vector_2", "asof_joint_vector_3"]
        conn.rollback()
        assert graphs.present_prefix(conn) == old


def test_a_failed_concurrent_rebuild_is_deferred_with_a_note_not_an_error(db_url: str, sample_history: list[dict],
                                                                         tmp_path) -> None:
    """Second review: a rebuild that fails (a deadlock with another embed-runs' ANALYZE, a cancel) made
    embed-runs fail after its vectors were written. Now it is a note; the copies searches walk stay, and the
    next sync builds what is missing."""
    _joint_prefix_graphs(db_url, sample_history, tmp_path)
    settings = graphs.IndexSettings(("joint",), 0, None, 60)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP INDEX historical_db.asof_joint_vector_2")
        with psycopg.connect(db_url) as open_writer:
            open_writer.execute(WRITER, ("test-writer:open",))  # the build waits for it and is cancelled
            conn.execute("SET statement_timeout = '300ms'")
            with pytest.raises(graphs.PrefixGraphsDeferred, match="as-of prefix graphs not rebuilt"):
                graphs.sync_prefix_graphs(conn, settings)
            open_writer.rollback()
        conn.execute("RESET statement_timeout")
        assert ("asof_joint_vector_1", True) in conn.execute(PREFIX_INDEXES).fetchall()
        built, _ = graphs.sync_prefix_graphs(conn, settings)  # the lock was released; leftovers go
        assert [p.name for p in built] == ["asof_joint_vector_1", "asof_joint_vector_2"]
        assert conn.execute(PREFIX_INDEXES).fetchall() == [("asof_joint_vector_1", True),
                                                           ("asof_joint_vector_2", True)]


def test_two_embed_runs_at_once_with_prefix_graphs_write_each_vector_once_and_leave_valid_copies(
        db_url: str, sample_history: list[dict], tmp_path) -> None:
    """Two embed-runs racing over new runs, each with graphs and prefix graphs to keep: the writers' lock
    serialises the vectors, the prefix lock the rebuilds; neither fails, nothing is written twice, no invalid
    copy is left, and the copies cover the history as one embed-runs would have left them."""
    _joint_prefix_graphs(db_url, sample_history, tmp_path)
    pipeline.import_runs([str(write_runs(sample_history[600:1500], tmp_path / "more.jsonl.gz"))],
                         database_url=db_url)
    results = embed_runs_at_once(db_url, index_min_vectors=0, indexed_spaces="joint", asof_exact_runs=60,
                                 batch_size=200)
    assert sorted(r.embedded for r in results) == [0, 900]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT run_id) FROM historical_db.joint_embeddings"
                            ).fetchone() == (1500, 1500)
        copies = conn.execute(PREFIX_INDEXES).fetchall()
        assert copies and all(valid for _, valid in copies)
        # whatever the interleaving, a later embed-runs finds nothing to rebuild: the copies fit the history
        built, dropped = graphs.sync_prefix_graphs(conn, graphs.IndexSettings(("joint",), 0, None, 60))
        assert (built, dropped) == ([], [])


def test_a_sync_left_to_another_session_says_so(db_url: str, sample_history: list[dict], tmp_path) -> None:
    """While another session rebuilds the prefix graphs, embed-runs writes its vectors and leaves the
    rebuild to it: before, silently; now with a note saying the copies may lag until the next embed-runs."""
    _joint_prefix_graphs(db_url, sample_history, tmp_path)
    pipeline.import_runs([str(write_runs(sample_history[600:1500], tmp_path / "more.jsonl.gz"))],
                         database_url=db_url)
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (graphs.PREFIX_LOCK_KEY,))
        summary = pipeline.embed_runs(database_url=db_url, index_min_vectors=0, indexed_spaces="joint",
                                      asof_exact_runs=60)
        idle = pipeline.embed_runs(database_url=db_url, index_min_vectors=0, indexed_spaces="joint",
                                   asof_exact_runs=60)  # wrote nothing: nothing for the copies to lag behind
        other.execute("SELECT pg_advisory_unlock(%s)", (graphs.PREFIX_LOCK_KEY,))
    assert summary.embedded == 900
    assert any("another session is rebuilding the as-of prefix graphs" in note for note in summary.notes), \
        summary.notes
    assert idle.embedded == 0 and not any("another session" in note for note in idle.notes), idle.notes
    summary = pipeline.embed_runs(database_url=db_url, index_min_vectors=0, indexed_spaces="joint",
                                  asof_exact_runs=60)  # the next one checks the copies itself
    assert not any("another session" in note for note in summary.notes), summary.notes
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert graphs.sync_prefix_graphs(conn, graphs.IndexSettings(("joint",), 0, None, 60)) == ([], [])
