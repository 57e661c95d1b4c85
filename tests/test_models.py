"""metaspace.models: the SQLAlchemy mapping agrees with the migrations, the ORM form of the nearest-neighbour
query uses the HNSW index, and the function wrappers give the answers of SQL and of the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import sqlalchemy.exc
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from pgvector.sqlalchemy import VECTOR
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Connection, Engine, bindparam, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

import metaspace
from metaspace import models
from metaspace.cli import cli
from metaspace.names import DIMENSION, JOINT_TYPE, SCHEMA


def _include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    return name == SCHEMA if type_ == "schema" else True


def _compare_type(context, inspected_column, metadata_column, inspected_type, metadata_type) -> bool | None:
    """pgvector's type: different when the reflected type is not a vector of the same dimension."""
    if isinstance(metadata_type, VECTOR):
        return not (isinstance(inspected_type, VECTOR) and inspected_type.dim == metadata_type.dim)
    return None


def _index_definition_differences(conn: Connection) -> list[tuple[str, str, str, str]]:
    """Alembic compares an index's columns, expressions and uniqueness, not its method, operator class,
    WITH or WHERE. For those, PostgreSQL itself compares: each model index is built under another name
    (in a transaction rolled back) and its ``pg_get_indexdef`` set against the migrated one's."""
    definitions = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :schema"
    migrated = dict(conn.execute(text(definitions), {"schema": SCHEMA}).all())
    differences = []
    with conn.begin_nested() as probe:
        for table in models.metadata.tables.values():
            for index in table.indexes:
                if index.name not in migrated:
                    continue  # compare_metadata reports it
                ddl = str(CreateIndex(index).compile(dialect=conn.dialect))
                conn.execute(text(ddl.replace(f" {index.name} ON ", f" probe_{index.name} ON ", 1)))
        built = dict(conn.execute(text(definitions), {"schema": SCHEMA}).all())
        probe.rollback()
    for name, definition in migrated.items():
        from_model = built.get(f"probe_{name}", definition).replace(f" probe_{name} ON ", f" {name} ON ", 1)
        if from_model != definition:
            differences.append(("modify_index", name, from_model, definition))
    return differences


def _differences(url: str) -> list[Any]:
    """What separates models.metadata from the database: Alembic's autogenerate comparison of the historical_db
    schema (tables, columns, types, nullability, indexes, unique constraints, foreign keys), plus index
    definitions in full."""
    engine = models.engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_schemas": True, "include_name": _include_name, "compare_type": _compare_type,
                "compare_server_default": False,
            })
            return compare_metadata(context, models.metadata) + _index_definition_differences(conn)
    finally:
        engine.dispose()


def _execute(url: str, statements: str) -> None:
    engine = models.engine(url)
    with engine.begin() as conn:
        for statement in statements.split(";"):
            conn.execute(text(statement))
    engine.dispose()


def test_the_models_match_the_schema_the_migrations_build(db_url: str) -> None:
    assert _differences(db_url) == []


def test_metaspace_and_its_cli_start_without_the_models() -> None:
    probe = ("import sys, metaspace; plain = 'sqlalchemy' in sys.modules; import metaspace.cli; "
             "print(plain, 'metaspace.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_view_is_mapped_read_only_outside_the_compared_metadata() -> None:
    assert f"{SCHEMA}.run_vectors_v1" not in models.metadata.tables
    assert models.RunVector.__table__.metadata is models.views
    assert models.RunVector.__table__.info["is_view"]


@pytest.mark.parametrize(("change", "expected"), [
    ("ALTER TABLE historical_db.runs ADD COLUMN notes text", "add_column"),
    ("ALTER TABLE historical_db.runs ALTER COLUMN config_id SET NOT NULL", "modify_nullable"),
    ("DROP VIEW historical_db.run_vectors_v1; DROP VIEW historical_db.branch_embeddings; "
     "ALTER TABLE historical_db.branch_entities ALTER COLUMN vector TYPE vector(12) USING NULL", "modify_type"),
    ("DROP INDEX historical_db.run_entities_env", "remove_index"),
    ("DROP INDEX historical_db.joint_embeddings_vector_hnsw; CREATE INDEX joint_embeddings_vector_hnsw "
     "ON historical_db.joint_embeddings USING hnsw (vector vector_l2_ops) WITH (m = 32)", "modify_index"),
    ("DROP INDEX historical_db.joint_embeddings_version_date; CREATE INDEX joint_embeddings_version_date "
     "ON historical_db.joint_embeddings (encoder_version, as_of_date)", "modify_index"),
    ("CREATE TABLE historical_db.run_notes (run_id text)", "add_table"),
])
def test_the_comparison_fails_when_a_migration_changes_what_the_models_do_not(
        db_url: str, change: str, expected: str) -> None:
    _execute(db_url, change)
    differences = _differences(db_url)
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in differences}
    assert differences, f"{change!r} went unnoticed"
    # Alembic names the change from the model's side: a column in the database only is one "to remove".
    assert kinds == {{"add_column": "remove_column", "add_table": "remove_table",
                      "remove_index": "add_index"}.get(expected, expected)}, differences


class Explain(Executable, ClauseElement):
    """``EXPLAIN`` of a statement, executed with the same parameters the statement itself is run with."""

    inherit_cache = False

    def __init__(self, statement: Executable) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN " + compiler.process(element.statement, **kw)


@pytest.fixture(scope="module")
def sample_engine(sample_db: str) -> Iterator[Engine]:
    engine = models.engine(sample_db)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE historical_db.joint_embeddings, historical_db.branch_entities, "
                          "historical_db.run_entities"))
    yield engine
    engine.dispose()


def _stored_vectors(session: Session, space: str, n: int) -> list[tuple[str, np.ndarray]]:
    rows = session.execute(
        select(models.RunVector.run_id, models.RunVector.vector)
        .where(models.RunVector.space == space).order_by(models.RunVector.run_id).limit(n)
    ).all()
    return [(run_id, np.asarray(vector, dtype=np.float32)) for run_id, vector in rows]


def test_the_orm_nearest_neighbour_query_uses_the_hnsw_index_and_finds_the_exact_answer(
        sample_engine: Engine) -> None:
    with Session(sample_engine) as session:
        (_, a), (_, b) = _stored_vectors(session, "joint", 2)
        q = (a + b) / 2
        session.execute(text("SET LOCAL hnsw.ef_search = 200"))
        stmt = (select(models.JointEmbedding)
                .where(models.JointEmbedding.joint_type == JOINT_TYPE)
                .order_by(models.JointEmbedding.vector.l2_distance(q))
                .limit(10))
        plan = "\n".join(session.execute(Explain(stmt)).scalars())
        found = session.execute(stmt).scalars().all()
        exact = session.execute(
            text("SELECT run_id, distance FROM historical_db.search_runs(:q, 10, 'joint', exact => true)")
            .bindparams(bindparam("q", type_=VECTOR(DIMENSION))), {"q": q}
        ).all()

    assert "joint_embeddings_vector_hnsw" in plan, plan
    assert len(found) == len(exact) == 10
    distances = [float(np.linalg.norm(np.asarray(row.vector) - q)) for row in found]
    assert distances == pytest.approx([d for _, d in exact], rel=1e-5)
    tenth = exact[-1].distance
    # Runs at exactly the tenth distance are a tie either answer may break its own way.
    assert ({row.entity_scope["run_id"] for row, d in zip(found, distances) if d < tenth * (1 - 1e-6)}
            == {run_id for run_id, d in exact if d < tenth * (1 - 1e-6)})


def test_search_runs_through_the_orm_with_keywords_matches_the_sql_call(sample_engine: Engine) -> None:
    as_of = dt.date(2018, 6, 30)
    with Session(sample_engine) as session:
        (_, q), = _stored_vectors(session, "env", 1)
        hits = models.search_runs(q, k=7, space="env", as_of=as_of)
        orm = session.execute(select(hits).order_by(hits.c.distance, hits.c.run_id)).all()
        raw = session.execute(
            text("SELECT * FROM historical_db.search_runs(:q, k => 7, space => 'env', as_of => :as_of) "
                 "ORDER BY distance, run_id")
            .bindparams(bindparam("q", type_=VECTOR(DIMENSION))), {"q": q, "as_of": as_of}
        ).all()

        as_text = session.execute(select(models.search_runs(q, k=7, space="env", as_of="2018-06-30"))).all()

    assert len(orm) == 7
    assert [tuple(row) for row in as_text] == [tuple(row) for row in orm]
    assert [tuple(row) for row in orm] == [tuple(row) for row in raw]
    assert all(row.as_of_date <= as_of for row in orm)
    assert isinstance(orm[0].distance, float) and isinstance(orm[0].entity_scope, dict)


def test_search_and_neighbours_through_the_orm_give_the_cli_answer(sample_engine: Engine, sample_db: str) -> None:
    with Session(sample_engine) as session:
        (run_id, q), = _stored_vectors(session, "joint", 1)
        hits = models.search_runs(q, k=11, space="joint")
        searched = [r for r in session.execute(select(hits.c.run_id).order_by(hits.c.distance)).scalars()
                    if r != run_id]
        near = models.neighbours(run_id, k=10)
        neighbours = session.execute(select(near.c.run_id)).scalars().all()
    result = CliRunner().invoke(cli, ["search", "--database-url", sample_db, "--run", run_id, "--format", "json"])
    assert result.exit_code == 0, result.output
    from_cli = [row["run_id"] for row in json.loads(result.stdout.splitlines()[0])["rows"]]

    assert len(from_cli) == 10
    assert neighbours == from_cli
    assert searched == from_cli


def test_suggest_configs_through_the_orm_matches_the_sql_call(sample_engine: Engine) -> None:
    with Session(sample_engine) as session:
        (run_id, _), = _stored_vectors(session, "env", 1)
        env = (select(models.RunVector.vector)
               .where(models.RunVector.space == "env", models.RunVector.run_id == run_id).scalar_subquery())
        suggestions = models.suggest_configs(env, k=3, objective="max_drawdown", higher_is_better=False)
        orm = session.execute(select(suggestions.c.config_id, suggestions.c.score)).all()
        raw = session.execute(text(
            "SELECT config_id, score FROM historical_db.suggest_configs("
            "(SELECT vector FROM historical_db.run_vectors_v1 WHERE space = 'env' AND run_id = :run), "
            "k => 3, objective => 'max_drawdown', higher_is_better => false)"), {"run": run_id}).all()

    assert orm and [tuple(row) for row in orm] == [tuple(row) for row in raw]


def test_engine_takes_the_urls_metaspace_takes(db_url: str) -> None:
    params = conninfo_to_dict(db_url)
    dbname = params.pop("dbname")
    query = urlencode(params)
    for url in (db_url, f"postgresql:///{dbname}?{query}", f"postgresql+psycopg:///{dbname}?{query}"):
        engine = models.engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == dbname, url
        assert engine.dialect.driver == "psycopg"
        engine.dispose()


@pytest.mark.parametrize("v", ["v2", "v3"])
def test_the_versioned_functions_through_the_orm_answer_like_the_cli(sample_engine: Engine, sample_db: str,
                                                                     sample_history: list[dict], v: str) -> None:
    search_runs, neighbours, suggest_configs = (getattr(models, f"{name}_{v}") for name in
                                                ("search_runs", "neighbours", "suggest_configs"))
    run = sample_history[4]
    with Session(sample_engine) as session:
        version = session.execute(text("SELECT historical_db.active_encoder_version_v1()")).scalar()
        near = neighbours(run["run_id"], k=5, space="env", encoder_version=version)
        orm = [row.run_id for row in session.execute(select(near.c.run_id))]
        env = (select(models.RunVector.vector)
               .where(models.RunVector.space == "env", models.RunVector.run_id == run["run_id"],
                      models.RunVector.encoder_version == version).scalar_subquery())
        hits = search_runs(env, k=3, space="env", encoder_version=version, exact=True)
        assert session.execute(select(hits.c.run_id)).scalars().first() == run["run_id"]
        suggestions = suggest_configs(env, k=3, encoder_version=version)
        assert session.execute(select(suggestions.c.config_id, suggestions.c.environments)).all()
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="is active now"):
            session.execute(select(search_runs(env, k=3, encoder_version=version + 1).c.run_id)).all()
    cli_rows = metaspace.search(run=run["run_id"], k=5, space="env", database_url=sample_db)
    assert orm == [row["run_id"] for row in cli_rows]


def test_suggest_configs_v4_through_the_orm_answers_like_metaspace_suggest(sample_engine: Engine, sample_db: str,
                                                                            sample_history: list[dict]) -> None:
    run = sample_history[4]
    with Session(sample_engine) as session:
        version = session.execute(text("SELECT historical_db.active_encoder_version_v1()")).scalar()
        env = (select(models.RunVector.vector)
               .where(models.RunVector.space == "env", models.RunVector.run_id == run["run_id"],
                      models.RunVector.encoder_version == version).scalar_subquery())
        rows = models.suggest_configs_v4(env, k=4, as_of=run["as_of_date"], encoder_version=version, exact=True)
        orm = session.execute(select(rows.c.config_id, rows.c.history_blocks, rows.c.local_weight)).all()
    assert orm and all(blocks >= 0 and 0 <= weight <= 1 for _, blocks, weight in orm)
    answer = metaspace.suggest(env=run["env"], k=4, as_of=run["as_of_date"], exact=True, database_url=sample_db)
    assert [row[0] for row in orm] == [row["config_id"] for row in answer]


def test_search_record_and_suggest_for_env_through_the_orm_match_the_sql_call(sample_engine: Engine,
                                                                              sample_history: list[dict]) -> None:
    run = sample_history[9]
    with Session(sample_engine) as session:
        found = session.execute(select(models.search_record({"env": run["env"]}, k=5, space="env"))).all()
        raw = session.execute(text("SELECT * FROM historical_db.search_record(CAST(:r AS jsonb), 5, 'env')"),
                              {"r": json.dumps({"env": run["env"]})}).all()
        suggested = session.execute(select(models.suggest_for_env(run["env"], k=3))).all()
        direct = session.execute(text("SELECT * FROM historical_db.suggest_for_env(CAST(:e AS jsonb), 3)"),
                                 {"e": json.dumps(run["env"])}).all()
    assert len(found) == 5 and [tuple(r) for r in found] == [tuple(r) for r in raw]
    assert suggested and [tuple(r) for r in suggested] == [tuple(r) for r in direct]

