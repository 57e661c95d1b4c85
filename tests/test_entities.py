"""Entities, not copies (issue 25, revision 0019): each distinct config, env and outcome record's vector is stored
once (historical_db.branch_entities), runs reference them (historical_db.run_entities), the branch graphs are
built over the distinct vectors, and a search expands the entities it finds to their runs with every filter.

The history of a sweep: 300 environments, each tried with 40 configs (benchmarks/bench_duplicates.py), loaded
by the default path. On the layout before (one vector per run and branch, the env graph over copies) the
default path found 0.94 of the exact answer at k = 10 and 0.90 at k = 1,000, and 8 of 200 env queries never
found their own environment."""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.store import migrate
from metaspace.store.connection import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_duplicates  # noqa: E402  (the benchmark's own history and recall, one definition of each)

ENVS, CONFIGS = 300, 40
BEFORE = "0018_suggest_v7"


@pytest.fixture(scope="module")
def sweep_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import TEMPLATE, _create_database, _drop_database

    path = metaspace.write_runs(bench_duplicates.history(ENVS, CONFIGS, seed=1),
                                tmp_path_factory.mktemp("sweep") / "runs.jsonl")
    name = f"e_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    metaspace.import_runs([str(path)], database_url=url)
    metaspace.embed_runs(database_url=url)
    yield url
    metaspace.close()
    _drop_database(server_url, name)


def _recall(url: str, count: int = 60) -> dict[str, dict[int, dict]]:
    grid = bench_duplicates.sweep_configs(CONFIGS)
    with psycopg.connect(url, autocommit=True) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        queries = bench_duplicates.pick_queries(conn, ENVS, CONFIGS, count, seed=3)
        return {space: bench_duplicates.recall(conn, space, queries[space], grid) for space in ("env", "config")}


def test_each_distinct_record_is_stored_once_and_every_run_reads_its_vectors(sweep_db: str) -> None:
    with psycopg.connect(sweep_db) as conn:
        entities = dict(conn.execute("SELECT branch, count(*) FROM historical_db.branch_entities GROUP BY 1"))
        outcomes = conn.execute("SELECT count(DISTINCT outcome) FROM historical_db.runs").fetchone()[0]
        assert entities == {"env": ENVS, "config": CONFIGS, "outcome": outcomes}
        assert conn.execute("SELECT count(*), count(DISTINCT run_id) FROM historical_db.branch_embeddings "
                            "WHERE branch = 'env'").fetchone() == (ENVS * CONFIGS, ENVS * CONFIGS)
        # first_seen is the earliest as_of_date of an entity's runs
        assert conn.execute("""
            SELECT count(*), count(*) FILTER (WHERE e.first_seen = b.earliest)
            FROM historical_db.branch_entities e
            JOIN (SELECT entity_id, min(as_of_date) AS earliest FROM historical_db.branch_embeddings
                  GROUP BY entity_id) b USING (entity_id)""").fetchone() == (sum(entities.values()),) * 2


def test_the_default_path_finds_every_environment_and_config(sweep_db: str) -> None:
    """At 12,000 runs every branch space has its graph (a branch space is counted by the runs it serves), over
    300 environments and 40 configs instead of 12,000 copies of them: it finds what the exact scan finds."""
    with psycopg.connect(sweep_db) as conn:
        assert {name for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'branch_entities_%hnsw'")} == {
            f"branch_entities_{b}_halfvec_hnsw" for b in ("config", "env", "outcome")}
    for space, by_k in _recall(sweep_db).items():
        for k, measured in by_k.items():
            assert measured["mean"] >= 0.99 and measured["missing_own"] == 0, (space, k, measured)


def test_a_graph_over_the_distinct_vectors_finds_every_environment_and_config(sweep_db: str) -> None:
    pipeline.embed_runs(database_url=sweep_db, index_min_vectors=0)  # a graph for every space, whatever its size
    with psycopg.connect(sweep_db, autocommit=True) as conn:
        graphs = {name for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'branch_entities_%hnsw'")}
        assert graphs == {f"branch_entities_{b}_halfvec_hnsw" for b in ("config", "env", "outcome")}
        conn.execute("SELECT pg_stat_force_next_flush()")
        before = _scans(conn, "branch_entities_env_halfvec_hnsw")
    for space, by_k in _recall(sweep_db).items():
        for k, measured in by_k.items():
            assert measured["mean"] >= 0.99 and measured["missing_own"] == 0, (space, k, measured)
    with psycopg.connect(sweep_db, autocommit=True) as conn:
        assert _scans(conn, "branch_entities_env_halfvec_hnsw") > before  # the walk, not the exact scan
    metaspace.embed_runs(database_url=sweep_db, index_min_vectors=None)


def _scans(conn: psycopg.Connection, index: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (index,)).fetchone()
    return row[0] if row else 0


def test_distinct_answers_environments_with_their_runs_and_dates(sweep_db: str) -> None:
    with psycopg.connect(sweep_db) as conn:
        run, day = conn.execute("SELECT run_id, as_of_date FROM historical_db.runs WHERE run_id = 'DUP_0000150_007'"
                                ).fetchone()
        env = conn.execute("SELECT env FROM historical_db.runs WHERE run_id = %s", (run,)).fetchone()[0]
    rows = metaspace.search(run=run, space="env", distinct=True, k=5, database_url=sweep_db)
    assert len(rows) == 5 and len({r["entity_id"] for r in rows}) == 5
    assert rows[0]["distance"] == 0 and rows[0]["record"] == env and rows[0]["first_date"] == day.isoformat()
    assert all(r["runs"] == CONFIGS and r["first_date"] == r["last_date"] for r in rows)
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)
    # the same as the exact answer's first distinct environments
    exact = metaspace.search(run=run, space="env", distinct=True, k=5, exact=True, database_url=sweep_db)
    assert [r["entity_id"] for r in rows] == [r["entity_id"] for r in exact]
    # a filter counts only the runs it keeps
    seventh = bench_duplicates.sweep_configs(CONFIGS)[7].config_id
    one = metaspace.search(run=run, space="env", distinct=True, k=3, config_id=seventh, database_url=sweep_db)
    assert [r["runs"] for r in one] == [1, 1, 1]
    result = CliRunner().invoke(cli, ["--database-url", sweep_db, "search", "--run", run, "--space", "env",
                                      "--distinct", "-k", "3"])
    assert result.exit_code == 0, result.output
    assert "entity_id" in result.output and str(rows[2]["entity_id"]) in result.output
    joint = CliRunner().invoke(cli, ["--database-url", sweep_db, "search", "--run", run, "--distinct"])
    assert joint.exit_code == 1 and "--space env" in joint.output and "Traceback" not in joint.output


def test_a_distinct_answer_names_its_first_run_by_date_whatever_the_sessions_datestyle(sweep_db: str) -> None:
    """Each config entity's first run is its earliest (then lowest run_id), read in any DateStyle: a date compared
    as text in a day-first style (31/12/1999 after 01/06/2000) would name another run."""
    with psycopg.connect(sweep_db) as conn:
        query = conn.execute("SELECT vector FROM historical_db.branch_embeddings WHERE run_id = 'DUP_0000150_007' "
                             "AND branch = 'config'").fetchone()[0]
        answers = []
        for style in ("ISO, MDY", "SQL, DMY"):
            conn.execute(f"SET DateStyle = '{style}'")
            answers.append(conn.execute("SELECT entity_id, first_run, runs FROM historical_db.search_distinct("
                                        "%s, 5, 'config', exact => true)", (query,)).fetchall())
        conn.execute("SET DateStyle = 'ISO, MDY'")
        first = {entity: conn.execute(
            "SELECT r.run_id FROM historical_db.run_entities r WHERE r.config_entity = %s "
            "ORDER BY r.as_of_date, r.run_id LIMIT 1", (entity,)).fetchone()[0] for entity, _, _ in answers[0]}
    assert answers[0] == answers[1] and len(answers[0]) == 5
    assert all(run == first[entity] for entity, run, _ in answers[0])


def test_as_of_a_date_no_entity_or_run_dated_after_it_is_answered(sweep_db: str) -> None:
    with connect(sweep_db) as conn:
        days = [d for (d,) in conn.execute("SELECT DISTINCT as_of_date FROM historical_db.runs ORDER BY 1")]
        query = conn.execute("SELECT vector FROM historical_db.branch_embeddings WHERE run_id = 'DUP_0000299_000' "
                             "AND branch = 'env'").fetchone()[0]
    for day in (days[3], days[len(days) // 2], days[-2]):
        for exact in (False, True):
            distinct = metaspace.search(vector=np.asarray(query.to_numpy()), space="env", distinct=True, k=8,
                                        as_of=day, exact=exact, database_url=sweep_db)
            assert distinct and all(dt.date.fromisoformat(r["last_date"]) <= day for r in distinct)
            runs = metaspace.search(vector=np.asarray(query.to_numpy()), space="env", k=100, as_of=day, exact=exact,
                                    database_url=sweep_db)
            assert len(runs) == 100 and all(dt.date.fromisoformat(r["as_of_date"]) <= day for r in runs)


@pytest.mark.parametrize("space", ["env", "config"])
def test_branch_search_is_the_brute_force_answer_over_runs_whatever_the_filter(sweep_db: str, space: str) -> None:
    """The exact path tests the filters only on the runs of the entities nearest the query, taking more while
    fewer than k runs match: it must still give exactly the k nearest matching runs, ties ordered by run_id."""
    grid = bench_duplicates.sweep_configs(CONFIGS)
    with connect(sweep_db) as conn:
        days = [d for (d,) in conn.execute("SELECT DISTINCT as_of_date FROM historical_db.runs ORDER BY 1")]
        query = conn.execute("SELECT vector FROM historical_db.branch_embeddings WHERE run_id = 'DUP_0000123_017' "
                             "AND branch = %s", (space,)).fetchone()[0]
        cases = [(10, None, None), (1000, None, None), (10, days[len(days) // 3], None),
                 (25, None, [grid[5].config_id]), (7, days[-5], [grid[1].config_id, grid[30].config_id])]
        for k, as_of, configs in cases:
            truth = [tuple(r) for r in conn.execute(
                """SELECT run_id, vector <-> %(q)s FROM historical_db.branch_embeddings
                   WHERE branch = %(space)s AND (%(as_of)s::date IS NULL OR as_of_date <= %(as_of)s)
                     AND (%(configs)s::text[] IS NULL OR config_id = ANY (%(configs)s))
                   ORDER BY 2, 1 LIMIT %(k)s""", {"q": query, "space": space, "as_of": as_of, "configs": configs,
                                                  "k": k})]
            for exact in (True, False):
                got = [tuple(r) for r in conn.execute(
                    "SELECT run_id, distance FROM historical_db.search_runs(%s, k => %s, space => %s, as_of => %s, "
                    "config_ids => %s, exact => %s)", (query, k, space, as_of, configs, exact))]
                assert [r for r, _ in got] == [r for r, _ in truth], (space, k, as_of, configs, exact)
                assert np.allclose([d for _, d in got], [d for _, d in truth], rtol=0, atol=1e-6)


def _store(url: str, run_id: str, env: dict, entered: threading.Event | None = None,
           release: threading.Event | None = None) -> None:
    """store_run for a new run in environment ``env``, with an existing run's vectors; optionally holding its
    transaction open (after the write) until ``release``."""
    with psycopg.connect(url) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        version, fingerprint = conn.execute(
            "SELECT version, fingerprint FROM historical_db.encoder_versions WHERE is_active").fetchone()
        vectors = [conn.execute("SELECT vector FROM historical_db.run_vectors_v1 WHERE run_id = 'DUP_0000000_000' "
                                "AND space = %s", (space,)).fetchone()[0] for space in ("joint", "config", "env",
                                                                                        "outcome")]
        record = {"run_id": run_id, "as_of_date": "2030-01-02", "strategy_id": "S", "config_id": "C",
                  "config": {"a": 1}, "env": env, "outcome": {"sharpe": 1.0}}
        conn.execute("SELECT historical_db.store_run(%s, %s, %s, %s, %s, %s, %s, %s)",
                     (Jsonb(record), hashlib.sha256(run_id.encode()).hexdigest(), version, fingerprint, *vectors))
        if entered is not None:
            entered.set()
            assert release.wait(30)
        conn.commit()


def test_concurrent_writers_of_one_new_environment_meet_in_one_entity(db_url: str, tmp_path: Path) -> None:
    pipeline.import_runs([str(metaspace.write_runs(bench_duplicates.history(4, 3, seed=2), tmp_path / "r.jsonl"))],
                         database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    env = {"realized_vol": 0.123, "regime": "new"}
    entered, release, errors = threading.Event(), threading.Event(), []

    def first() -> None:
        try:
            _store(db_url, "NEW_A", env, entered, release)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def second() -> None:
        try:
            _store(db_url, "NEW_B", env)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    a = threading.Thread(target=first)
    a.start()
    assert entered.wait(30)
    b = threading.Thread(target=second)
    b.start()
    b.join(2)
    assert b.is_alive()  # waits for the first writer's entity, neither duplicating it nor failing
    release.set()
    a.join(30)
    b.join(30)
    assert errors == []
    with psycopg.connect(db_url) as conn:
        refs = conn.execute("SELECT run_id, env_entity FROM historical_db.run_entities WHERE run_id LIKE 'NEW_%' "
                            "ORDER BY 1").fetchall()
        assert len(refs) == 2 and refs[0][1] == refs[1][1]
        assert conn.execute("SELECT count(*) FROM historical_db.branch_entities e JOIN historical_db.runs r "
                            "ON historical_db.entity_key_v1(r.env) = e.record_key WHERE r.run_id = 'NEW_A' "
                            "AND e.branch = 'env'").fetchone()[0] == 1


REATTACH = """
    EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
    SELECT historical_db.attach_entities_v2(min(r.encoder_version), array_agg(r.run_id ORDER BY r.run_id),
                                            array_agg(c.vector ORDER BY r.run_id), array_agg(e.vector ORDER BY r.run_id),
                                            array_agg(o.vector ORDER BY r.run_id))
    FROM historical_db.run_entities r
    JOIN historical_db.branch_entities c ON c.entity_id = r.config_entity
    JOIN historical_db.branch_entities e ON e.entity_id = r.env_entity
    JOIN historical_db.branch_entities o ON o.entity_id = r.outcome_entity"""


FIRST_SEEN_SCANS = "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'branch_entities_first_seen'"


def _reattach(url: str) -> tuple[int, int]:
    """One attach_entities_v2 call for every run again, in a new session (a session keeps the function's plans):
    the pages it touches (its own statements included) and its scans of the index on first_seen."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")  # (counted once the statement before is done)
        before = conn.execute(FIRST_SEEN_SCANS).fetchone()[0]
        with conn.transaction(force_rollback=True):
            [explained] = conn.execute(REATTACH).fetchone()
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        scans = conn.execute(FIRST_SEEN_SCANS).fetchone()[0] - before
    return explained[0]["Plan"]["Shared Hit Blocks"] + explained[0]["Plan"]["Shared Read Blocks"], scans


@pytest.mark.one_node(reason="the pages are counted by the coordinator's EXPLAIN, which on Citus leaves out the "
                             "shards' work")
def test_attaching_entities_reads_by_key_before_the_table_has_statistics(db_url: str, tmp_path: Path) -> None:
    """A new database's first embed-runs writes before autovacuum has analysed branch_entities (under load, 20
    minutes passed). Without statistics the planner took the index on (encoder_version, branch, first_seen) for
    the step that moves first_seen back, reading for each record every entity of its branch seen later, and kept
    that plan for the session: batch after batch slowed, to over 10 minutes for 5,000 runs at 120,000. The
    columns' statistics are held off here (statistics target 0), then given, and the same call compared."""
    columns = ("first_seen", "branch", "record_key")
    with psycopg.connect(db_url, autocommit=True) as conn:
        for column in columns:
            conn.execute(f"ALTER TABLE historical_db.branch_entities ALTER COLUMN {column} SET STATISTICS 0")
    pipeline.import_runs([str(metaspace.write_runs(bench_duplicates.history(40, 20, seed=5), tmp_path / "r.jsonl"))],
                         database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    metaspace.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'historical_db' AND "
                            "tablename = 'branch_entities' AND attname = ANY (%s)", (list(columns),)).fetchone()[0] == 0
    without, first_seen_scans = _reattach(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for column in columns:
            conn.execute(f"ALTER TABLE historical_db.branch_entities ALTER COLUMN {column} SET STATISTICS -1")
        conn.execute("ANALYZE historical_db.branch_entities")
    with_statistics, _ = _reattach(db_url)
    assert first_seen_scans == 0 and without < 2 * with_statistics, (first_seen_scans, without, with_statistics)


def test_an_entity_no_run_references_is_removed_by_whoever_orphaned_it(db_url: str, tmp_path: Path) -> None:
    runs = list(bench_duplicates.history(3, 2, seed=4))
    pipeline.import_runs([str(metaspace.write_runs(runs, tmp_path / "r.jsonl"))], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)

    def envs() -> int:
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT count(*) FROM historical_db.branch_entities WHERE branch = 'env'").fetchone()[0]

    assert envs() == 3
    # import-runs: both runs of environment 0 change their env: its entity goes with the last one that used it
    changed = [dict(r, env=dict(r["env"], shock=1.0)) for r in runs[:2]]
    pipeline.import_runs([str(metaspace.write_runs(changed, tmp_path / "c.jsonl"))], database_url=db_url)
    assert envs() == 2
    pipeline.embed_runs(database_url=db_url)
    assert envs() == 3
    # runs deleted by another program: embed-runs sweeps what they leave, and says so
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM historical_db.runs WHERE run_id = ANY(%s)", ([r["run_id"] for r in runs[2:4]],))
    assert envs() == 3
    summary = pipeline.embed_runs(database_url=db_url)
    assert envs() == 2
    assert any("no run references" in note for note in summary.notes), summary.notes


def _orphaned_environment(db_url: str, tmp_path: Path) -> tuple[str, int, list]:
    """A history whose environments have one run each; the first run's references removed, so that its
    environment's entity is an orphan. Returns that run, the orphan's id and the run's four vectors."""
    runs = list(bench_duplicates.history(3, 1, seed=5))
    pipeline.import_runs([str(metaspace.write_runs(runs, tmp_path / "r.jsonl"))], database_url=db_url)
    pipeline.embed_runs(database_url=db_url)
    run_id = runs[0]["run_id"]
    with connect(db_url) as conn:
        vectors = [conn.execute("SELECT vector FROM historical_db.run_vectors_v1 WHERE run_id = %s AND space = %s",
                                (run_id, space)).fetchone()[0] for space in ("config", "env", "outcome")]
        orphan = conn.execute("SELECT env_entity FROM historical_db.run_entities WHERE run_id = %s",
                              (run_id,)).fetchone()[0]
        conn.execute("DELETE FROM historical_db.run_entities WHERE run_id = %s", (run_id,))
        conn.commit()
    return run_id, orphan, vectors


def test_an_entity_removed_as_an_orphan_while_runs_attach_to_it_is_written_again(db_url: str,
                                                                                 tmp_path: Path) -> None:
    """Another session removes an orphan entity, and commits, between a writer's lookup of it and its reference
    (simulated: a trigger after the writer's second step has another session, through dblink, remove it). The
    run must not be left without its env vector."""
    run_id, orphan, vectors = _orphaned_environment(db_url, tmp_path)
    with connect(db_url) as conn:
        try:
            conn.execute("CREATE EXTENSION dblink")
        except psycopg.Error as error:
            pytest.skip(f"dblink is not available on this server ({error.sqlstate}): no second session to simulate")
        conn.execute("CREATE TABLE public.victim (id bigint)")
        conn.execute("INSERT INTO public.victim VALUES (%s)", (orphan,))
        conn.execute("CREATE TABLE public.target (url text)")
        conn.execute("INSERT INTO public.target VALUES (%s)", (db_url,))
        conn.execute("""CREATE FUNCTION public.steal() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM public.victim) THEN
                    PERFORM public.dblink_exec((SELECT url FROM public.target),
                        'DELETE FROM historical_db.branch_entities WHERE entity_id IN (SELECT id FROM public.victim);'
                        || ' DELETE FROM public.victim');
                END IF;
                RETURN NULL;
            END $$""")
        conn.execute("CREATE TRIGGER steal AFTER UPDATE ON historical_db.branch_entities "
                     "FOR EACH STATEMENT EXECUTE FUNCTION public.steal()")
        conn.commit()
        version = conn.execute("SELECT historical_db.active_encoder_version_v1()").fetchone()[0]
        attached = conn.execute("SELECT historical_db.attach_entities_v1(%s, %s, %s, %s, %s)",
                                (version, [run_id], *[[v] for v in vectors])).fetchone()[0]
        conn.commit()
        assert attached == 1
        assert conn.execute("SELECT count(*) FROM public.victim").fetchone()[0] == 0  # it was removed
        env_entity, vector = conn.execute(
            "SELECT r.env_entity, e.vector FROM historical_db.run_entities r "
            "LEFT JOIN historical_db.branch_entities e ON e.entity_id = r.env_entity WHERE r.run_id = %s",
            (run_id,)).fetchone()
        assert env_entity is not None and env_entity != orphan
        assert np.array_equal(vector.to_numpy(), vectors[1].to_numpy())


def test_an_orphan_sweep_leaves_an_entity_a_writer_is_referencing(db_url: str, tmp_path: Path) -> None:
    """A writer references an orphan (uncommitted) while embed-runs sweeps orphans: the sweep neither waits
    for it nor fails, and the entity stays."""
    run_id, orphan, _ = _orphaned_environment(db_url, tmp_path)
    with connect(db_url) as writer:
        other = list(bench_duplicates.history(3, 1, seed=5))[1]["run_id"]
        writer.execute("UPDATE historical_db.run_entities SET env_entity = %s WHERE run_id = %s", (orphan, other))
        swept: dict[str, object] = {}

        def sweep() -> None:
            try:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    swept["dropped"] = conn.execute("SELECT historical_db.drop_orphans_v1(ARRAY[%s]::bigint[])",
                                                    (orphan,)).fetchone()[0]
            except psycopg.Error as error:
                swept["error"] = error

        thread = threading.Thread(target=sweep)
        thread.start()
        thread.join(10)
        writer.commit()
        thread.join(30)
    assert swept == {"dropped": 0}
    with connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM historical_db.branch_entities WHERE entity_id = %s",
                            (orphan,)).fetchone()[0] == 1


# -- the migration from one vector per run and branch ------------------------------------------------------------

def _old_layout(url: str) -> None:
    """At revision 0018: 40 runs in 8 environments and 5 configs, their branch vectors copied per run as the
    writers of 0018 wrote them; one copy of environment 3 written by another encoder (1e-6 away)."""
    rng = np.random.default_rng(7)
    env_vectors = rng.standard_normal((8, 384)).astype(np.float32)
    config_vectors = rng.standard_normal((5, 384)).astype(np.float32)
    with psycopg.connect(url) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        conn.execute("INSERT INTO historical_db.encoder_versions (version, model_id, state, fingerprint, "
                     "fitted_on_runs, is_active) VALUES (1, 'joint-meta-config-env-v1', '{}', %s, 40, true)",
                     ("f" * 64,))
        for i in range(40):
            e, c = i // 5, i % 5
            run = f"R{i:03d}"
            day = dt.date(2020, 1, 1) + dt.timedelta(days=7 * e + (i * 3) % 5)
            conn.execute("INSERT INTO historical_db.runs (run_id, config_id, strategy_id, as_of_date, config, env, "
                         "outcome, record_sha256) VALUES (%s, %s, 'S', %s, %s, %s, %s, %s)",
                         (run, f"C{c}", day, Jsonb({"c": c}), Jsonb({"e": e}), Jsonb({"o": i}), "0" * 64))
            env = env_vectors[e] + (np.float32(1e-6) if run == "R017" else np.float32(0))
            for branch, vector in (("config", config_vectors[c]), ("env", env),
                                   ("outcome", rng.standard_normal(384).astype(np.float32))):
                conn.execute("INSERT INTO historical_db.branch_embeddings (run_id, branch, encoder_version, model_id, "
                             "as_of_date, strategy_id, config_id, vector) VALUES (%s, %s, 1, %s, %s, 'S', %s, %s)",
                             (run, branch, f"num-{branch}-core-v1", day, f"C{c}", vector))


def _branch_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT run_id, branch, encoder_version, model_id, as_of_date, strategy_id, config_id, "
                            "vector::text FROM historical_db.branch_embeddings ORDER BY 1, 2").fetchall()


def test_a_command_on_the_embedded_default_leaves_a_large_entities_migration_to_metaspace_migrate(
        empty_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first command upgrades the embedded default itself only when that is quick; revision 0019 copies every
    run's branch vectors, so on a large history it names `metaspace migrate` and the time to expect."""
    migrate.upgrade(empty_db, BEFORE)
    _old_layout(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("ANALYZE historical_db.branch_embeddings")
    monkeypatch.setattr(migrate, "QUICK_SECONDS", 0.001)  # 120 branch rows stand for a large history
    with pytest.raises(migrate.SchemaBehindError, match="metaspace migrate"):
        migrate.upgrade_embedded(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert migrate.current(conn) == BEFORE
    monkeypatch.undo()
    assert "upgraded" in migrate.upgrade_embedded(empty_db)


@pytest.mark.parametrize("concurrently", [False, True])
def test_the_migration_moves_no_vector_and_downgrades_to_the_same_rows(empty_db: str, concurrently: bool) -> None:
    migrate.upgrade(empty_db, BEFORE)
    _old_layout(empty_db)
    before = _branch_rows(empty_db)
    assert len(before) == 120

    migrate.upgrade(empty_db, concurrently=concurrently)
    assert _branch_rows(empty_db) == before  # every run reads exactly the vector it had
    with psycopg.connect(empty_db) as conn:
        counts = dict(conn.execute("SELECT branch, count(*) FROM historical_db.branch_entities GROUP BY 1"))
        assert counts == {"config": 5, "env": 8 + 1, "outcome": 40}  # environment 3's other copy is its own
        assert conn.execute("SELECT to_regclass('historical_db.branch_entities_0019_changed')").fetchone()[0] is None
        wrong = conn.execute("""
            SELECT count(*) FROM historical_db.branch_entities e
            WHERE e.first_seen <> (SELECT min(b.as_of_date) FROM historical_db.branch_embeddings b
                                   WHERE b.entity_id = e.entity_id)""").fetchone()[0]
        assert wrong == 0
        # every function the revision creates pins its search_path, whichever path copied (--concurrently
        # commits in batches, which ended the transaction the first pin was set in)
        unpinned = [name for name, config in conn.execute(
            "SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'historical_db' AND p.prorettype <> 'trigger'::regtype")
            if not any(c.startswith("search_path=pg_catalog,") for c in config or [])]
        assert unpinned == []

    migrate.downgrade(empty_db, BEFORE)
    assert _branch_rows(empty_db) == before
    with psycopg.connect(empty_db) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'historical_db.branch_embeddings'::regclass"
                            ).fetchone()[0]
    assert kind == "r"
    migrate.upgrade(empty_db)
    assert _branch_rows(empty_db) == before
