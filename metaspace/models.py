"""SQLAlchemy 2.0 mappings of metaspace's tables, the run_vectors_v1 view and the search functions, so that
an application queries the space through its own session and ORM.

The migrations are the only way to build or change the schema (``metaspace migrate``): these mappings
describe what they built, for reading, and are never used to create tables; there is no ``create_all``
here on purpose. ``tests/test_models.py`` compares :data:`metadata` with a database built by the migration
chain (tables, columns, types, nullability, indexes, foreign keys), so a revision that changes a table
fails the tests until this module follows it. Check constraints and server defaults live in the
migrations only. metaspace writes through its own commands and SQL functions (``import-runs``,
``embed-runs``, ``historical_db.store_run``), which keep its rules; the mappings do not.

The plain nearest-neighbour query, which uses the HNSW index::

    q = [...]  # 384 floats, e.g. a run's vector
    stmt = (select(JointEmbedding)
            .where(JointEmbedding.joint_type == JOINT_TYPE)
            .order_by(JointEmbedding.vector.l2_distance(q))
            .limit(10))

and a search function by its stable name (what the CLI answers; docs/sql.md), with PostgreSQL's named
arguments::

    hits = search_runs(q, k=10, space="env", as_of=date(2024, 3, 29))
    session.execute(select(hits.c.run_id, hits.c.distance)).all()

The ``_vN`` wrappers below map the released versions for an application that pins one; the superseded ones
are deprecated (docs/sql.md lists which).

Importing this module imports SQLAlchemy; ``import metaspace`` does not import it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    column,
    create_engine,
    event,
    func,
    literal,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

from metaspace.names import DIMENSION, SCHEMA

__all__ = [
    "BranchEmbedding", "BranchEntity", "Clustering", "EmbeddingQuarantine", "EncoderBranch", "EncoderFeature", "EncoderMatrix",
    "EncoderVersion", "JointEmbedding", "Run", "RunCluster", "RunEntity",
    "RunVector", "Setting", "engine", "metadata", "neighbours", "search_record", "search_runs", "suggest_configs",
    "suggest_for_env", "neighbours_v1", "neighbours_v2", "neighbours_v3", "search_runs_v1",
    "search_runs_v2", "search_runs_v3", "suggest_configs_v1", "suggest_configs_v2", "suggest_configs_v3",
    "suggest_configs_v4", "suggest_configs_v5", "SuggestCalibration", "views",
]

_HNSW = {"postgresql_using": "hnsw", "postgresql_with": {"m": 16, "ef_construction": 64},
         "postgresql_ops": {"vector": "vector_l2_ops"}}


class Base(DeclarativeBase):
    """The tables the migrations create in ``historical_db``."""

    metadata = MetaData(schema=SCHEMA)


metadata = Base.metadata


class JointEmbedding(Base):
    """One joint vector (or, in a converted table, a row of another joint type). ``run_id`` is the run, equal
    to ``entity_scope['run_id']`` where the scope has one (a CHECK); a row whose scope names no run holds
    ``'legacy:' || embedding_id`` unless its writer gave one. It is the column a Citus cluster distributes the
    table by (docs/scaling.md). ``vector_f32`` exists only in tables converted from the float32-bytes form and
    is not mapped."""

    __tablename__ = "joint_embeddings"
    __table_args__ = (
        Index("joint_embeddings_vector_hnsw", "vector", **_HNSW),
        Index("joint_embeddings_one_per_run", "joint_type", "model_id", "run_id", "encoder_version", unique=True,
              postgresql_where=text("encoder_version IS NOT NULL")),
        Index("joint_embeddings_scope_run_id", text("(entity_scope ->> 'run_id')")),  # released lookups by scope
        Index("joint_embeddings_type_date", "joint_type", "as_of_date"),
        Index("joint_embeddings_version_date", "encoder_version", "as_of_date",
              postgresql_where=text("encoder_version IS NOT NULL")),
    )

    embedding_id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    joint_type: Mapped[str] = mapped_column(Text)
    as_of_date: Mapped[dt.date] = mapped_column(Date)
    entity_scope: Mapped[dict[str, Any]] = mapped_column(JSONB)
    model_id: Mapped[str] = mapped_column(Text)
    vector: Mapped[Any | None] = mapped_column(VECTOR(DIMENSION))
    encoder_version: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("encoder_versions.version", ondelete="RESTRICT"))
    run_id: Mapped[str] = mapped_column(Text)


class Run(Base):
    """One run record as imported: config, env and outcome as JSON, with the record's sha256."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("runs_as_of_date", "as_of_date"),
        Index("runs_strategy_id", "strategy_id", "as_of_date"),
        Index("runs_config_as_of", text("coalesce(config_id, run_id)"), "as_of_date"),  # suggest_configs_v4's records
    )

    run_id: Mapped[str] = mapped_column(Text, primary_key=True)
    config_id: Mapped[str | None] = mapped_column(Text)
    strategy_id: Mapped[str | None] = mapped_column(Text)
    as_of_date: Mapped[dt.date] = mapped_column(Date)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    env: Mapped[dict[str, Any]] = mapped_column(JSONB)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONB)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONB)
    record_sha256: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class EncoderVersion(Base):
    """A registered fit of the encoders (immutable: a trigger refuses changes); one per model is active."""

    __tablename__ = "encoder_versions"
    __table_args__ = (
        UniqueConstraint("fingerprint", name="encoder_versions_fingerprint_key"),
        Index("encoder_versions_one_active", "model_id", unique=True, postgresql_where=text("is_active")),
    )

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model_id: Mapped[str] = mapped_column(Text)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB)
    fingerprint: Mapped[str] = mapped_column(Text)
    fitted_on_runs: Mapped[int] = mapped_column(BigInteger)
    is_active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    fit_until: Mapped[dt.date | None] = mapped_column(Date)
    fitted_through: Mapped[dt.date | None] = mapped_column(Date)


class BranchEntity(Base):
    """A distinct config, env or outcome record's vector, once per encoder version (revision 0019): keyed by
    ``record_key`` (``historical_db.entity_key_v1`` of the record), with the vector its first writer computed
    and ``first_seen``, the earliest as_of_date of its runs. embed-runs gives each branch a partial HNSW graph
    over these (``docs/graphs.md``), which the migrations do not build."""

    __tablename__ = "branch_entities"
    __table_args__ = (
        UniqueConstraint("encoder_version", "branch", "record_key", name="branch_entities_key"),
        Index("branch_entities_first_seen", "encoder_version", "branch", "first_seen"),
        {"comment": "each distinct config, env and outcome record's vector, once per encoder version "
                    "(metaspace revision 0019)"},
    )

    entity_id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    encoder_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("encoder_versions.version", ondelete="RESTRICT"))
    first_seen: Mapped[dt.date] = mapped_column(Date)
    branch: Mapped[str] = mapped_column(Text)
    record_key: Mapped[bytes] = mapped_column(LargeBinary)
    vector: Mapped[Any] = mapped_column(VECTOR(DIMENSION))


class RunEntity(Base):
    """A run's config, env and outcome entities for one encoder version, with the run's date, strategy and
    config (the filters a search applies to the runs of the entities it finds)."""

    __tablename__ = "run_entities"
    __table_args__ = (
        PrimaryKeyConstraint("run_id", "encoder_version"),
        *(Index(f"run_entities_{branch}", f"{branch}_entity") for branch in ("config", "env", "outcome")),
        {"comment": "each run's config, env and outcome entities, per encoder version (metaspace revision 0019)"},
    )

    run_id: Mapped[str] = mapped_column(Text, ForeignKey("runs.run_id", ondelete="CASCADE"))
    encoder_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("encoder_versions.version", ondelete="RESTRICT"))
    as_of_date: Mapped[dt.date] = mapped_column(Date)
    strategy_id: Mapped[str | None] = mapped_column(Text)
    config_id: Mapped[str | None] = mapped_column(Text)
    config_entity: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("branch_entities.entity_id"))
    env_entity: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("branch_entities.entity_id"))
    outcome_entity: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("branch_entities.entity_id"))


class Setting(Base):
    """A choice stored for this database: which spaces get an HNSW graph, and from how many vectors."""

    __tablename__ = "settings"
    __table_args__ = {"comment": "metaspace choices: which spaces get an HNSW graph, and from how many vectors "
                                 "(metaspace embed-runs --indexed-spaces, --index-min-vectors)"}

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB)
    set_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class EmbeddingQuarantine(Base):
    """A run that failed encoding with an encoder version, with the field and the reason."""

    __tablename__ = "embedding_quarantine"
    __table_args__ = (PrimaryKeyConstraint("run_id", "encoder_version"),)

    run_id: Mapped[str] = mapped_column(Text, ForeignKey("runs.run_id", ondelete="CASCADE"))
    encoder_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("encoder_versions.version", ondelete="CASCADE"))
    field: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    record_sha256: Mapped[str] = mapped_column(Text)
    quarantined_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Clustering(Base):
    """One ``metaspace cluster`` run: space, encoder version, k, method, parameters and quality."""

    __tablename__ = "clusterings"
    __table_args__ = (Index("clusterings_space_version", "space", "encoder_version", "created_at"),)

    clustering_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    space: Mapped[str] = mapped_column(Text)
    encoder_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("encoder_versions.version", ondelete="CASCADE"))
    k: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    quality: Mapped[dict[str, Any]] = mapped_column(JSONB)
    runs: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class SuggestCalibration(Base):
    """How suggest_configs_v5 weighs the neighbourhood and maps its confidence, fitted on the decisions
    realised by ``fitted_until`` (``metaspace evaluate --save-calibration``)."""

    __tablename__ = "suggest_calibrations"
    __table_args__ = (
        PrimaryKeyConstraint("objective", "higher_is_better", "encoder_version", "fitted_until"),
        {"comment": "suggest_configs_v5's calibrations, one per objective, direction, encoder version and date "
                    "fitted on (metaspace evaluate --save-calibration)"},
    )

    objective: Mapped[str] = mapped_column(Text)
    higher_is_better: Mapped[bool] = mapped_column(Boolean)
    encoder_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("encoder_versions.version", ondelete="CASCADE"))
    fitted_until: Mapped[dt.date] = mapped_column(Date)
    local_scale: Mapped[float] = mapped_column(Double)
    confidence_from: Mapped[list[float]] = mapped_column(ARRAY(Double))
    confidence_to: Mapped[list[float]] = mapped_column(ARRAY(Double))
    decisions: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class RunCluster(Base):
    """A run's label in a clustering, and its distance to the cluster's centre."""

    __tablename__ = "run_clusters"
    __table_args__ = (
        PrimaryKeyConstraint("clustering_id", "run_id"),
        Index("run_clusters_label", "clustering_id", "label"),
    )

    clustering_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("clusterings.clustering_id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(Text, ForeignKey("runs.run_id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    distance: Mapped[float] = mapped_column(Double)


class EncoderBranch(Base):
    """A registered version's branch as the SQL encoders read it (historical_db.encode_v1): sizes, clip, the
    joint scale and the imputation. Derived from the version's state; immutable."""

    __tablename__ = "encoder_branches"
    __table_args__ = (PrimaryKeyConstraint("version", "branch"),)

    version: Mapped[int] = mapped_column(Integer, ForeignKey("encoder_versions.version"))
    branch: Mapped[str] = mapped_column(Text)
    n_features: Mapped[int] = mapped_column(Integer)
    n_coords: Mapped[int] = mapped_column(Integer)
    clip: Mapped[float] = mapped_column(Double)
    scale: Mapped[float] = mapped_column(Double)
    imputation: Mapped[list[float] | None] = mapped_column(ARRAY(Double))


class EncoderFeature(Base):
    """One feature spec of a registered version's branch, in column order, for the SQL encoders."""

    __tablename__ = "encoder_features"
    __table_args__ = (
        PrimaryKeyConstraint("version", "branch", "position"),
        ForeignKeyConstraint(["version", "branch"], ["encoder_branches.version", "encoder_branches.branch"]),
        Index("encoder_features_key", "version", "branch", "key"),
    )

    version: Mapped[int] = mapped_column(Integer)
    branch: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    first_column: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(Text)
    list_index: Mapped[int | None] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    transform: Mapped[str | None] = mapped_column(Text)
    shift: Mapped[float | None] = mapped_column(Double)
    center: Mapped[float | None] = mapped_column(Double)
    scale: Mapped[float | None] = mapped_column(Double)
    mean: Mapped[float | None] = mapped_column(Double)
    weight: Mapped[float] = mapped_column(Double)
    flag: Mapped[bool] = mapped_column(Boolean)
    categories: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    has_missing: Mapped[bool] = mapped_column(Boolean)


class EncoderMatrix(Base):
    """One row of a registered version's linear map (``<branch>.pca``, ``<branch>.embed``, ``joint``) as a
    pgvector row, with its bias: the SQL encoders' matrix-vector products run in pgvector."""

    __tablename__ = "encoder_matrices"
    __table_args__ = (PrimaryKeyConstraint("version", "matrix", "row"),)

    version: Mapped[int] = mapped_column(Integer, ForeignKey("encoder_versions.version"))
    matrix: Mapped[str] = mapped_column(Text)
    row: Mapped[int] = mapped_column(Integer)
    weights: Mapped[Any] = mapped_column(VECTOR())
    bias: Mapped[float] = mapped_column(Double)


class _View(DeclarativeBase):
    """Views: mapped for reading, kept out of :data:`metadata` (never created, never compared as tables)."""

    metadata = MetaData(schema=SCHEMA, info={"is_view": True})


views = _View.metadata


class RunVector(_View):
    """``historical_db.run_vectors_v1`` (read-only): every stored vector by ``space`` (joint, config, env,
    outcome). Filter on one space, and on ``encoder_version``, to use that space's HNSW index."""

    __tablename__ = "run_vectors_v1"
    __table_args__ = {"info": {"is_view": True}}

    space: Mapped[str] = mapped_column(Text, primary_key=True)
    run_id: Mapped[str] = mapped_column(Text, primary_key=True)
    encoder_version: Mapped[int | None] = mapped_column(Integer, primary_key=True)
    config_id: Mapped[str | None] = mapped_column(Text)
    strategy_id: Mapped[str | None] = mapped_column(Text)
    as_of_date: Mapped[dt.date] = mapped_column(Date)
    entity_scope: Mapped[dict[str, Any]] = mapped_column(JSONB)
    vector: Mapped[Any] = mapped_column(VECTOR(DIMENSION))


class BranchEmbedding(_View):
    """``historical_db.branch_embeddings`` (read-only, a view since revision 0019): each run's config, env and
    outcome vectors, one row per run, branch and encoder version, with the ``entity_id`` the vector is stored
    under. To walk a branch's graph, search ``BranchEntity`` (or call ``search_runs``)."""

    __tablename__ = "branch_embeddings"
    __table_args__ = {"info": {"is_view": True}}

    run_id: Mapped[str] = mapped_column(Text, primary_key=True)
    branch: Mapped[str] = mapped_column(Text, primary_key=True)
    encoder_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(Text)
    as_of_date: Mapped[dt.date] = mapped_column(Date)
    strategy_id: Mapped[str | None] = mapped_column(Text)
    config_id: Mapped[str | None] = mapped_column(Text)
    vector: Mapped[Any] = mapped_column(VECTOR(DIMENSION))
    entity_id: Mapped[int] = mapped_column(BigInteger)


# The search functions' parameters (sql/search_v1.sql), in order, with their types.
_SEARCH_PARAMS: dict[str, TypeEngine[Any]] = {
    "k": Integer(), "space": Text(), "as_of": Date(), "strategy_ids": ARRAY(Text()), "config_ids": ARRAY(Text()),
    "scope": JSONB(), "exact": Boolean(),
}
_SUGGEST_PARAMS: dict[str, TypeEngine[Any]] = {
    "env": VECTOR(DIMENSION), "k": Integer(), "as_of": Date(), "objective": Text(), "higher_is_better": Boolean(),
    "neighbours": Integer(), "min_runs": Integer(), "strategy_ids": ARRAY(Text()), "exact": Boolean(),
}
_RUN_MATCH = (("run_id", Text), ("config_id", Text), ("strategy_id", Text), ("as_of_date", Date),
              ("distance", Double), ("entity_scope", JSONB))
_CONFIG_SUGGESTION = (("config_id", Text), ("config", JSONB), ("score", Double), ("weighted_objective", Double),
                      ("runs", Integer), ("mean_distance", Double), ("objective_mean", Double),
                      ("objective_std", Double), ("best_run_id", Text), ("best_objective", Double),
                      ("edge_z", Double), ("deflated_confidence", Double), ("candidates", Integer))


def _call(name: str, params: dict[str, TypeEngine[Any]], columns: tuple[tuple[str, Any], ...],
          arguments: dict[str, Any]) -> TableValuedAlias:
    """``historical_db.<name>(p => :v, ...)`` as a FROM item with typed columns; an argument left None is
    not passed, so the function's own default applies."""
    args = []
    for key, value in arguments.items():
        if value is None:
            continue
        bound = value if isinstance(value, ClauseElement) else literal(value, params[key])
        args.append(literal_column(key).op("=>")(bound))
    fn = getattr(func.historical_db, name)(*args)
    return fn.table_valued(*(column(col, type_) for col, type_ in columns), name=name)


def search_runs_v1(query: Any, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                   strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                   scope: dict[str, Any] | None = None, exact: bool | None = None) -> TableValuedAlias:
    """``historical_db.search_runs_v1``: the k nearest runs to ``query`` (a vector, or a SQL expression
    giving one) in a space, as of a date. Columns: run_id, config_id, strategy_id, as_of_date, distance,
    entity_scope."""
    return _call("search_runs_v1", {"query": VECTOR(DIMENSION)} | _SEARCH_PARAMS, _RUN_MATCH,
                 dict(query=query, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact))


def neighbours_v1(of_run: str, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                  strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                  scope: dict[str, Any] | None = None, exact: bool | None = None) -> TableValuedAlias:
    """``historical_db.neighbours_v1``: the k nearest runs to a stored run, the run itself excluded
    (what ``metaspace search --run`` answers). Columns as :func:`search_runs_v1`."""
    return _call("neighbours_v1", {"of_run": Text()} | _SEARCH_PARAMS, _RUN_MATCH,
                 dict(of_run=of_run, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact))


def suggest_configs_v1(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                       objective: str | None = None, higher_is_better: bool | None = None,
                       neighbours: int | None = None, min_runs: int | None = None,
                       strategy_ids: list[str] | None = None, exact: bool | None = None) -> TableValuedAlias:
    """``historical_db.suggest_configs_v1``: configs that did well in environments near ``env`` (an env
    vector), as of a date. Columns: config_id, config, score, weighted_objective, runs, mean_distance,
    objective_mean, objective_std, best_run_id, best_objective, edge_z, deflated_confidence, candidates."""
    return _call("suggest_configs_v1", _SUGGEST_PARAMS, _CONFIG_SUGGESTION,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact))


def engine(url: str | None = None, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine (psycopg driver) on metaspace's database. ``url`` is what metaspace takes
    everywhere: a libpq URL (``postgresql://me@db/quant``) or key=value DSN (``host=db dbname=quant``), handed
    to libpq unchanged; a SQLAlchemy URL naming its driver (``postgresql+psycopg://...``) is used as is.
    With no URL: ``METASPACE_DATABASE_URL``, else the embedded server. ``kwargs`` go to ``create_engine``."""
    from metaspace.store.connection import resolve_url

    url = resolve_url(url)
    if url.split("://", 1)[0].startswith("postgresql+"):
        return create_engine(url, **kwargs)
    created = create_engine("postgresql+psycopg://", **kwargs)

    @event.listens_for(created, "do_connect")
    def _libpq_conninfo(dialect: Any, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        cargs[:] = [url]

    return created


# Version 2 (sql/search_v2.sql, sql/suggest_v2.sql): the same, plus the encoder version the query vector was
# made with (refused with SQLSTATE 55000 once another version is active), and suggest_configs_v2's ranking.
_VERSIONED = {"encoder_version": Integer()}


def search_runs_v2(query: Any, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                   strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                   scope: dict[str, Any] | None = None, exact: bool | None = None,
                   encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.search_runs_v2``: :func:`search_runs_v1` with ``encoder_version``."""
    return _call("search_runs_v2", {"query": VECTOR(DIMENSION)} | _SEARCH_PARAMS | _VERSIONED, _RUN_MATCH,
                 dict(query=query, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact, encoder_version=encoder_version))


def neighbours_v2(of_run: str, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                  strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                  scope: dict[str, Any] | None = None, exact: bool | None = None,
                  encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.neighbours_v2``: :func:`neighbours_v1` with ``encoder_version``."""
    return _call("neighbours_v2", {"of_run": Text()} | _SEARCH_PARAMS | _VERSIONED, _RUN_MATCH,
                 dict(of_run=of_run, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact, encoder_version=encoder_version))


def suggest_configs_v2(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                       objective: str | None = None, higher_is_better: bool | None = None,
                       neighbours: int | None = None, min_runs: int | None = None,
                       strategy_ids: list[str] | None = None, exact: bool | None = None,
                       eligible_configs: list[str] | None = None,
                       encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.suggest_configs_v2``: version 2's ranking (superseded). Columns as
    :func:`suggest_configs_v1`, plus environments and relative_objective."""
    params = _SUGGEST_PARAMS | {"eligible_configs": ARRAY(Text())} | _VERSIONED
    columns = (*_CONFIG_SUGGESTION, ("environments", Integer), ("relative_objective", Double))
    return _call("suggest_configs_v2", params, columns,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact,
                      eligible_configs=eligible_configs, encoder_version=encoder_version))


# Version 3 (sql/search_v3.sql, sql/suggest_v3.sql, revision 0012): version 2's arguments and columns,
# walking whichever HNSW graph the space has (halfvec, float32) or scanning exactly where it has none.


def search_runs_v3(query: Any, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                   strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                   scope: dict[str, Any] | None = None, exact: bool | None = None,
                   encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.search_runs_v3``: :func:`search_runs_v2` over whichever graph the space has."""
    return _call("search_runs_v3", {"query": VECTOR(DIMENSION)} | _SEARCH_PARAMS | _VERSIONED, _RUN_MATCH,
                 dict(query=query, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact, encoder_version=encoder_version))


def neighbours_v3(of_run: str, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                  strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                  scope: dict[str, Any] | None = None, exact: bool | None = None,
                  encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.neighbours_v3``: :func:`neighbours_v2` over whichever graph the space has."""
    return _call("neighbours_v3", {"of_run": Text()} | _SEARCH_PARAMS | _VERSIONED, _RUN_MATCH,
                 dict(of_run=of_run, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact, encoder_version=encoder_version))


def suggest_configs_v3(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                       objective: str | None = None, higher_is_better: bool | None = None,
                       neighbours: int | None = None, min_runs: int | None = None,
                       strategy_ids: list[str] | None = None, exact: bool | None = None,
                       eligible_configs: list[str] | None = None,
                       encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.suggest_configs_v3``: :func:`suggest_configs_v2` over whichever graph the env space
    has."""
    params = _SUGGEST_PARAMS | {"eligible_configs": ARRAY(Text())} | _VERSIONED
    columns = (*_CONFIG_SUGGESTION, ("environments", Integer), ("relative_objective", Double))
    return _call("suggest_configs_v3", params, columns,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact,
                      eligible_configs=eligible_configs, encoder_version=encoder_version))


def suggest_configs_v4(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                       objective: str | None = None, higher_is_better: bool | None = None,
                       neighbours: int | None = None, min_runs: int | None = None,
                       strategy_ids: list[str] | None = None, exact: bool | None = None,
                       eligible_configs: list[str] | None = None, encoder_version: int | None = None,
                       history: int | None = None, horizon: int | None = None) -> TableValuedAlias:
    """``historical_db.suggest_configs_v4`` (sql/suggest_v4.sql): version 5's ranking before calibration. Columns
    as :func:`suggest_configs_v2`, plus history_objective, history_blocks and local_weight."""
    params = (_SUGGEST_PARAMS | {"eligible_configs": ARRAY(Text())} | _VERSIONED
              | {"history": Integer(), "horizon": Integer()})
    columns = (*_CONFIG_SUGGESTION, ("environments", Integer), ("relative_objective", Double),
               ("history_objective", Double), ("history_blocks", Integer), ("local_weight", Double))
    return _call("suggest_configs_v4", params, columns,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact,
                      eligible_configs=eligible_configs, encoder_version=encoder_version, history=history,
                      horizon=horizon))


def suggest_configs_v5(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                       objective: str | None = None, higher_is_better: bool | None = None,
                       neighbours: int | None = None, min_runs: int | None = None,
                       strategy_ids: list[str] | None = None, exact: bool | None = None,
                       eligible_configs: list[str] | None = None, encoder_version: int | None = None,
                       history: int | None = None, horizon: int | None = None, local_scale: float | None = None,
                       calibrated: bool | None = None) -> TableValuedAlias:
    """``historical_db.suggest_configs_v5`` (sql/suggest_v5.sql): the calibrated ranking, with the stored
    calibration as of the date (version 6 answers the same). Columns as :func:`suggest_configs_v4`, plus the calibration's
    parts (estimated_local_weight, local_scale, record_estimate, record_var, local_var, environment_var,
    raw_confidence, calibrated_until)."""
    params = (_SUGGEST_PARAMS | {"eligible_configs": ARRAY(Text())} | _VERSIONED
              | {"history": Integer(), "horizon": Integer(), "local_scale": Double(), "calibrated": Boolean()})
    columns = (*_CONFIG_SUGGESTION, ("environments", Integer), ("relative_objective", Double),
               ("history_objective", Double), ("history_blocks", Integer), ("local_weight", Double),
               ("estimated_local_weight", Double), ("local_scale", Double), ("record_estimate", Double),
               ("record_var", Double), ("local_var", Double), ("environment_var", Double),
               ("raw_confidence", Double), ("calibrated_until", Date))
    return _call("suggest_configs_v5", params, columns,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact,
                      eligible_configs=eligible_configs, encoder_version=encoder_version, history=history,
                      horizon=horizon, local_scale=local_scale, calibrated=calibrated))


# The stable names (sql/stable_v1.sql, revision 0017): the current versions' arguments and columns, what the
# command line answers. An application that calls these follows metaspace's upgrades.
_SUGGESTION_COLUMNS = (*_CONFIG_SUGGESTION, ("environments", Integer), ("relative_objective", Double),
                       ("history_objective", Double), ("history_blocks", Integer), ("local_weight", Double),
                       ("estimated_local_weight", Double), ("local_scale", Double), ("record_estimate", Double),
                       ("record_var", Double), ("local_var", Double), ("environment_var", Double),
                       ("raw_confidence", Double), ("calibrated_until", Date))
_CURRENT_SUGGEST = (_SUGGEST_PARAMS | {"eligible_configs": ARRAY(Text())} | _VERSIONED
                    | {"history": Integer(), "horizon": Integer(), "local_scale": Double(), "calibrated": Boolean()})


def search_runs(query: Any, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                scope: dict[str, Any] | None = None, exact: bool | None = None,
                encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.search_runs``: the k nearest runs to ``query`` (a vector, or a SQL expression giving one)
    in a space, as of a date. Columns: run_id, config_id, strategy_id, as_of_date, distance, entity_scope."""
    return _call("search_runs", {"query": VECTOR(DIMENSION)} | _SEARCH_PARAMS | _VERSIONED, _RUN_MATCH,
                 dict(query=query, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact, encoder_version=encoder_version))


def neighbours(of_run: str, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
               strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
               scope: dict[str, Any] | None = None, exact: bool | None = None,
               encoder_version: int | None = None) -> TableValuedAlias:
    """``historical_db.neighbours``: the k nearest runs to a stored run, itself excluded (``metaspace search
    --run``). Columns as :func:`search_runs`."""
    return _call("neighbours", {"of_run": Text()} | _SEARCH_PARAMS | _VERSIONED, _RUN_MATCH,
                 dict(of_run=of_run, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact, encoder_version=encoder_version))


def search_record(record: Any, k: int | None = None, space: str | None = None, as_of: dt.date | str | None = None,
                  strategy_ids: list[str] | None = None, config_ids: list[str] | None = None,
                  scope: dict[str, Any] | None = None, exact: bool | None = None) -> TableValuedAlias:
    """``historical_db.search_record``: the k nearest runs to a JSON record (``metaspace search --record``),
    encoded inside the database. Columns as :func:`search_runs`."""
    return _call("search_record", {"record": JSONB()} | _SEARCH_PARAMS, _RUN_MATCH,
                 dict(record=record, k=k, space=space, as_of=as_of, strategy_ids=strategy_ids,
                      config_ids=config_ids, scope=scope, exact=exact))


def suggest_configs(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                    objective: str | None = None, higher_is_better: bool | None = None,
                    neighbours: int | None = None, min_runs: int | None = None,
                    strategy_ids: list[str] | None = None, exact: bool | None = None,
                    eligible_configs: list[str] | None = None, encoder_version: int | None = None,
                    history: int | None = None, horizon: int | None = None, local_scale: float | None = None,
                    calibrated: bool | None = None) -> TableValuedAlias:
    """``historical_db.suggest_configs``: configs that worked in environments like ``env`` (an env vector), as
    of a date, what ``metaspace suggest`` answers. Columns as :func:`suggest_configs_v5`."""
    return _call("suggest_configs", _CURRENT_SUGGEST, _SUGGESTION_COLUMNS,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact,
                      eligible_configs=eligible_configs, encoder_version=encoder_version, history=history,
                      horizon=horizon, local_scale=local_scale, calibrated=calibrated))


def suggest_for_env(env: Any, k: int | None = None, as_of: dt.date | str | None = None,
                    objective: str | None = None, higher_is_better: bool | None = None,
                    neighbours: int | None = None, min_runs: int | None = None,
                    strategy_ids: list[str] | None = None, exact: bool | None = None,
                    history: int | None = None, horizon: int | None = None) -> TableValuedAlias:
    """``historical_db.suggest_for_env``: :func:`suggest_configs` on a JSON env, encoded inside the database."""
    params = {key: value for key, value in _CURRENT_SUGGEST.items()
              if key not in ("eligible_configs", "encoder_version", "local_scale", "calibrated")} | {"env": JSONB()}
    return _call("suggest_for_env", params, _SUGGESTION_COLUMNS,
                 dict(env=env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                      neighbours=neighbours, min_runs=min_runs, strategy_ids=strategy_ids, exact=exact,
                      history=history, horizon=horizon))

