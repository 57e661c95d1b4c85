"""``metaspace db start`` warms the HNSW graphs: after a restart their blocks are in shared buffers before
the first search, which a plain start does not do."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import metaspace
from metaspace.cli import cli
from metaspace.sample import sample_runs, write_runs
from metaspace.store import embedded

INDEX = "historical_db.joint_embeddings_vector_hnsw"
CACHED_BLOCKS = """
SELECT count(*) FROM pg_buffercache
WHERE relfilenode = pg_relation_filenode(%s)
  AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _cached_blocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        return conn.execute(CACHED_BLOCKS, (INDEX,)).fetchone()[0]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METASPACE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("METASPACE_DATABASE_URL", raising=False)
    yield tmp_path
    embedded.stop()


def test_db_start_reads_the_hnsw_graphs_into_shared_buffers_after_a_restart(home: Path) -> None:
    url = embedded.start()
    runs = home / "runs.jsonl"
    write_runs(sample_runs(300, seed=3), runs)
    metaspace.migrate(database_url=url)
    metaspace.import_runs([str(runs)], database_url=url)
    metaspace.embed_runs(database_url=url, index_min_vectors=0)  # a graph at this size too

    embedded.stop()
    assert _cached_blocks(embedded.start()) == 0  # a plain start: the graph is read only as searches walk it

    embedded.stop()
    started = CliRunner().invoke(cli, ["db", "start"], catch_exceptions=False)
    assert started.exit_code == 0, started.output
    assert started.stdout.strip() == CliRunner().invoke(cli, ["db", "url"]).stdout.strip()
    assert f"warmed {INDEX}" in started.stderr
    with psycopg.connect(url) as conn:
        size = conn.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int", (INDEX,)).fetchone()[0]
    assert _cached_blocks(url) == size


def test_db_start_says_so_when_there_is_nothing_to_warm(home: Path) -> None:
    started = CliRunner().invoke(cli, ["db", "start"], catch_exceptions=False)
    assert started.exit_code == 0, started.output
    assert "no HNSW index in this database yet" in started.stderr
