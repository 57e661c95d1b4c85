"""The input forms the docs promise beside JSONL and CSV: Parquet (flat dotted columns and nested structs),
standard input (``-``) for import-runs and for a query FILE, and answers as a pandas DataFrame."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import metaspace
from metaspace import pipeline
from metaspace.cli import cli
from metaspace.encoders.features import flatten
from metaspace.sample import sample_runs
from metaspace.store.connection import connect


def _stored(url: str) -> dict[str, dict]:
    with connect(url) as conn:
        rows = conn.execute("SELECT run_id, as_of_date, config, env, outcome FROM historical_db.runs").fetchall()
    return {r[0]: {"as_of_date": r[1].isoformat(), "config": r[2], "env": r[3], "outcome": r[4]} for r in rows}


def _present(value: dict) -> dict:
    """A branch without its null leaves: a null is a missing value in a run record, and a Parquet struct column
    gives every row every key of the column, null where the row had none."""
    return {k: v for k, v in flatten(value).items() if v is not None}


def _same(stored: dict, run: dict) -> bool:
    return (stored["as_of_date"] == run["as_of_date"]
            and all(_present(stored[branch]) == _present(run[branch]) for branch in ("config", "env", "outcome")))


def test_parquet_with_dotted_columns_imports_the_records_it_flattens(db_url: str, tmp_path: Path) -> None:
    runs = sample_runs(40, seed=21)
    rows = [{k: v for k, v in flatten(r).items() if k.split(".")[0] != "sim" and k != "extra"} for r in runs]
    rows[5]["as_of_date"] = "not a date"
    path = tmp_path / "runs.parquet"
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), path)  # every row's columns
    summary = pipeline.import_runs([str(path)], database_url=db_url)
    assert (summary.inserted, summary.rejected) == (39, 1)
    assert "runs.parquet" in str(summary.rejects[0]) and "6" in str(summary.rejects[0])
    assert "as_of_date" in str(summary.rejects[0])
    stored = _stored(db_url)
    assert all(_same(stored[r["run_id"]], r) for i, r in enumerate(runs) if i != 5)


def test_parquet_with_nested_struct_columns_and_a_date_column_imports(db_url: str, tmp_path: Path) -> None:
    runs = sample_runs(12, seed=22)
    table = pa.Table.from_pylist([{"run_id": r["run_id"], "as_of_date": dt.date.fromisoformat(r["as_of_date"]),
                                   "config": r["config"], "env": r["env"], "outcome": r["outcome"]} for r in runs])
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    summary = pipeline.import_runs([str(path)], database_url=db_url)
    assert summary.inserted == 12 and not summary.rejected
    stored = _stored(db_url)
    assert all(_same(stored[r["run_id"]], r) for r in runs)


def test_import_runs_reads_standard_input(db_url: str) -> None:
    runs = sample_runs(25, seed=23)
    lines = "\n".join(json.dumps(r) for r in runs) + "\n"
    result = CliRunner().invoke(cli, ["--database-url", db_url, "import-runs", "-"], input=lines)
    assert result.exit_code == 0, result.output
    assert set(_stored(db_url)) == {r["run_id"] for r in runs}


@pytest.fixture(scope="module")
def small_db(server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory):
    import uuid

    from conftest import TEMPLATE, _create_database, _drop_database

    name = f"i_{uuid.uuid4().hex[:12]}"
    url = _create_database(server_url, name, template=TEMPLATE)
    runs = sample_runs(600, seed=24)
    pipeline.import_records(((("mem", i, r)) for i, r in enumerate(runs)), database_url=url)
    pipeline.embed_runs(database_url=url)
    yield url, runs
    _drop_database(server_url, name)


def test_a_query_file_can_come_on_standard_input(small_db) -> None:
    url, runs = small_db
    envs = "\n".join(json.dumps(r["env"]) for r in runs[:3]) + "\n"
    result = CliRunner().invoke(cli, ["--database-url", url, "search", "--env", "-", "-k", "4", "--format", "json"],
                                input=envs)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = metaspace.search(env=[r["env"] for r in runs[:3]], k=4, database_url=url)
    assert [a["input"] for a in answers] == ["-:1", "-:2", "-:3"]
    assert [[row["run_id"] for row in a["rows"]] for a in answers] == [[r["run_id"] for r in e] for e in expected]


def test_as_frame_gives_the_same_answer_as_a_data_frame(small_db) -> None:
    url, runs = small_db
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = metaspace.search(run=runs[7]["run_id"], k=5, database_url=url)
        frame = metaspace.search(run=runs[7]["run_id"], k=5, database_url=url, as_frame=True)
        frames = metaspace.search(run=[runs[7]["run_id"], runs[8]["run_id"]], k=5, database_url=url, as_frame=True)
        suggested = metaspace.suggest(runs[9]["env"], k=3, min_runs=1, database_url=url)
        suggested_frame = metaspace.suggest(runs[9]["env"], k=3, min_runs=1, database_url=url, as_frame=True)
    assert isinstance(frame, pd.DataFrame) and frame.to_dict("records") == rows
    assert len(frames) == 2 and frames[0].to_dict("records") == rows
    assert isinstance(suggested_frame, pd.DataFrame) and list(suggested_frame["config_id"]) == [
        s["config_id"] for s in suggested]
