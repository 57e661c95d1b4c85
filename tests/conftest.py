"""Database fixtures: real PostgreSQL with real pgvector, never a mock.

The server is, in order: ``METASPACE_TEST_DATABASE_URL`` if set; else a testcontainers
``pgvector/pgvector`` container where a Docker engine answers; else metaspace's embedded server in a
temporary ``METASPACE_HOME``. Nothing connects at import time. Each test gets its own database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

PGVECTOR_IMAGE = "pgvector/pgvector:0.8.0-pg17"
# METASPACE_TESTS_ON=citus (with METASPACE_CITUS_URL, a Citus coordinator's database): every test's database
# (db_url, sample_db) is that one, its schema made afresh and distributed by migrate (.ci/citus.sh runs the
# pipeline's, search's, suggest's, evaluate's and the importers' tests so).
CITUS_URL = os.environ.get("METASPACE_CITUS_URL") if os.environ.get("METASPACE_TESTS_ON") == "citus" else None
TEMPLATE = "metaspace_test_template"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On Citus (METASPACE_TESTS_ON=citus), tests marked one_node skip, with their reason."""
    if not CITUS_URL:
        return
    for item in items:
        marker = item.get_closest_marker("one_node")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"one server only: {marker.kwargs['reason']}"))


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A superuser URL on a server with pgvector, for the whole session."""
    configured = os.environ.get("METASPACE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PGVECTOR_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    # Not under pytest's basetemp: pytest keeps only the three newest of those, so a second pytest session on
    # the same machine would delete this session's running server's data directory.
    home = Path(tempfile.mkdtemp(prefix="metaspace-test-home-"))
    previous = os.environ.get("METASPACE_HOME")
    os.environ["METASPACE_HOME"] = str(home)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metaspace.store import embedded

        url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)
        if previous is None:
            os.environ.pop("METASPACE_HOME", None)
        else:
            os.environ["METASPACE_HOME"] = previous


def _create_database(server_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return make_conninfo(server_url, dbname=name)


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    """A database migrated to head once per session; tests copy it."""
    from metaspace.store import migrate

    _drop_database(server_url, TEMPLATE)
    url = _create_database(server_url, TEMPLATE)
    migrate.upgrade(url)
    return url


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    """A new, empty database (no schema, no extension) of this test's own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield _create_database(server_url, name)
    _drop_database(server_url, name)


def _citus_database() -> Iterator[str]:
    """A database of this test's own on the Citus cluster (on every node, the workers registered), migrated to
    head, which distributes its tables; dropped after."""
    from metaspace.store import cluster, migrate

    nodes = cluster.cluster_nodes(CITUS_URL)
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = cluster.prepare_database(CITUS_URL, nodes, name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        cluster.drop_database(CITUS_URL, nodes, name)


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A database of this test's own, migrated to head (on Citus: the cluster's, made afresh)."""
    if CITUS_URL:
        yield from _citus_database()
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield _create_database(server_url, name, template=TEMPLATE)
    _drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    from metaspace.store.connection import connect

    with connect(db_url, autocommit=True) as connection:
        yield connection


SAMPLE_RUNS, SAMPLE_SEED = 3000, 11
SAMPLE_TEMPLATE = "metaspace_sample_template"


@pytest.fixture(scope="module")
def sample_history(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """3,000 runs of the simulated sample history (seeded): strategies really run on regime-switching markets."""
    from metaspace.sample import sample_runs

    return sample_runs(SAMPLE_RUNS, seed=SAMPLE_SEED)


@pytest.fixture(scope="session")
def sample_template(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample history imported and embedded once per session, in a database each module's sample_db copies
    (a copy takes about a second; an import and embed with graphs, about ten)."""
    import metaspace
    from metaspace import pipeline
    from metaspace.sample import sample_runs, write_runs

    path = write_runs(sample_runs(SAMPLE_RUNS, seed=SAMPLE_SEED),
                      tmp_path_factory.mktemp("sample") / "runs.jsonl.gz")
    _drop_database(server_url, SAMPLE_TEMPLATE)
    url = _create_database(server_url, SAMPLE_TEMPLATE, template=TEMPLATE)
    pipeline.import_runs([str(path)], database_url=url)
    # every space indexed by default gets its HNSW graph at this size too (by default a graph waits for 10,000
    # vectors), so the tests of the graph walk have one to walk; the default graph types (float32 joint,
    # halfvec config, env and outcome), the layout the functions walk by default
    pipeline.embed_runs(database_url=url, index_min_vectors=0)
    metaspace.close()  # a database with open sessions cannot be copied
    return SAMPLE_TEMPLATE


def _citus_sample(url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from metaspace import pipeline
    from metaspace.sample import sample_runs, write_runs

    path = write_runs(sample_runs(SAMPLE_RUNS, seed=SAMPLE_SEED), tmp_path_factory.mktemp("sample") / "runs.jsonl.gz")
    pipeline.import_runs([str(path)], database_url=url)
    pipeline.embed_runs(database_url=url, index_min_vectors=0)


@pytest.fixture(scope="module")
def sample_db(server_url: str, sample_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database holding the sample history, imported and embedded (a copy of the session's): shared by a
    module's tests, which may change it without touching another module's."""
    if CITUS_URL:
        for url in _citus_database():
            _citus_sample(url, tmp_path_factory)
            yield url
        return
    name = f"s_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=sample_template)
    yield url
    _drop_database(server_url, name)


def assert_same_answer(got, want, rel: float = 1e-12) -> None:
    """Two answers (rows as tuples or dicts, or one row) that hold the same values, floats within ``rel`` (the
    order in which a sum meets its terms may differ by a plan, in the last bit), everything else exactly."""
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same_answer(got[key], want[key], rel)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same_answer(a, b, rel)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=rel)
    else:
        assert got == want
