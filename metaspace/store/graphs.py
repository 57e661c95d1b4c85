"""Which spaces have an HNSW graph, and of which kind: the team's choice (``historical_db.settings``,
revision 0012), the threshold below which the exact scan answers instead, and the graphs built or dropped
to match.

A graph pays only where queries are asked of a space holding many vectors: its build costs about
0.1 ms a vector on 2 cores and it takes ~1-2 KB a vector of memory, while below ``DEFAULT_MIN_VECTORS``
the exact scan answers a k = 10 search in about 10-30 ms (docs/benchmarks.md, "Where a graph pays"). So:

- a space gets a graph when it is among the indexed spaces and holds at least ``index_min_vectors``;
- the indexed spaces are the team's choice (``embed-runs --indexed-spaces``); without one, all four while the
  joint table holds fewer than ``LARGE_SCALE`` vectors (``DEFAULT_SPACES``), then joint, config and env
  (``LARGE_SCALE_SPACES``), the ones ``search`` and ``suggest`` ask by default. A branch space's graph is over
  its distinct vectors (``historical_db.branch_entities``, revision 0019: one per distinct config, env or
  outcome record), and config, a few dozen or thousand of them, has its graph like the others (over copies, a
  graph cut configs off from the walk, and config was left out). A branch space is counted by the runs its
  vectors serve, not by its distinct vectors: its graph is small and quick to build (5,000 environments, a few
  seconds), and where the history is large its exact scan is not cheap (at 5,000 environments x 40 configs,
  9-12 ms a search against 1.2 ms for the walk, which found every run the exact scan found:
  docs/benchmarks.md, "Entities, not copies");
- the graph's kind (``--graph-type``): by default a halfvec graph (0.57x the size, recall within 0.005 of
  float32 at 100,000 runs up to ef_search 100) for config, env and outcome, and a float32 one for joint, the space the plain
  ``ORDER BY vector <-> :q`` form of the design card asks; ``halfvec`` or ``vector`` makes all four alike.

A space without a graph still answers, by exact search (``nearest_runs_v2`` finds no graph and scans); a
search in a space that is not indexed says so.

**As-of prefix graphs** (issue 14, the selective as-of tail). A graph walk filtered to the runs known as of
an early date visits about k / share nodes, so at 1,000,000 runs a date leaving 0.3-2% of them took
30-55 ms at p95 where an unfiltered walk takes a few. Each space with a graph therefore also gets partial
copies of it, ``asof_<space>_<kind>_<level>`` (``WHERE as_of_date <= D``): level 1 at the date leaving a
third of the space's vectors, each next level at the date leaving a third of the one before, down to
``asof_exact_runs`` (default ``DEFAULT_ASOF_EXACT_RUNS``); the dates are read from the space's as-of dates
when they are built. The planner walks the smallest copy covering a query's date, where at least about a
third of the rows match; below the smallest copy ``nearest_runs_v2`` (sql/nearest_runs_asof_v1.sql) scans
exactly. They cost about half the space's graph in memory and build time (1/3 + 1/9 + ...). Level 1 was at
half of the vectors until issue 25's storage: the graph itself serves the dates leaving a third or more, as each
copy serves those leaving a third of its own runs or more, and a copy at half cost a quarter of the graph again
for no walk that needed it.

Runs added later stay correct with them: a run dated after a copy's date is not in it, and a query's date
decides which copy it may use (a run dated between a query's date and its copy's date is a node the walk
may pass, never an answer: the walk's answer may shift within its recall, as any walk's). Runs arriving in date order leave the copies as they are while the space
grows; a backfill of old runs makes them bigger. Either way their shares drift from the plan, and
``sync_prefix_graphs`` (every embed-runs) rebuilds a space's copies once a level holds more than sqrt(3)
times more or fewer runs than the plan for today's history, or the plan has another number of levels
(so the rebuilds of a growing history cost a bounded multiple of the last one).

A rebuild on a connection in autocommit builds the new copies ``CREATE INDEX CONCURRENTLY`` under staged
names (``..._new``), swaps the names in one short transaction, then drops the old copies ``DROP INDEX
CONCURRENTLY``: writers are never blocked, and searches walk the old copies until the new ones are valid.
A build that was interrupted leaves an INVALID index, which the next sync drops (with any staged or
retired name) before it plans. CONCURRENTLY waits for every transaction that could see the table, so the
caller must not hold a lock that such a transaction waits for (embed-runs releases the writers' lock
first); two syncs never run at once (an advisory lock, tried, never waited for). Inside a transaction the
rebuild is the plain one: drop, then CREATE INDEX.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from metaspace.errors import MetaspaceError
from metaspace.names import SCHEMA, SPACES
from metaspace.store.sqlfiles import statements

DEFAULT_MIN_VECTORS = 10_000
DEFAULT_ASOF_EXACT_RUNS = 2_000
PREFIX_STEP = 3  # each prefix graph holds a third of the runs of the one above it
# Prefix graphs only where they pay: a space of fewer than this many times asof_exact_runs vectors (100,000 at
# the default) gets none. At 100,000 runs the rule before them had no as-of tail (docs/benchmarks.md, "As-of
# selectivity at 100,000 runs"); below it they only cost builds (3 s of the demo's 20 at 20,000 runs).
PREFIX_MIN_MULTIPLE = 50
LARGE_SCALE = 1_000_000
LARGE_SCALE_SPACES = ("joint", "config", "env")
DEFAULT_SPACES = ("joint", "config", "env", "outcome")
GRAPH_TYPES = ("vector", "halfvec")
# The graphs of sql/vector_indexes_v3.sql (float32) and v4 (halfvec), one per space, in the files' order: the
# joint one over joint_embeddings, the branch ones over branch_entities. (This module imports nothing heavy,
# since a search by stored run reads the note below.)
INDEX_FILES = {"vector": "vector_indexes_v3.sql", "halfvec": "vector_indexes_v4.sql"}
INDEX_NAMES = {
    ("joint", "vector"): "joint_embeddings_vector_hnsw",
    **{(branch, "vector"): f"branch_entities_{branch}_hnsw" for branch in SPACES[1:]},
    ("joint", "halfvec"): "joint_embeddings_halfvec_hnsw",
    **{(branch, "halfvec"): f"branch_entities_{branch}_halfvec_hnsw" for branch in SPACES[1:]},
}
Graph = tuple[str, str]  # (space, kind)


@dataclass(frozen=True)
class IndexSettings:
    """The stored choice; None means the default rule."""

    indexed_spaces: tuple[str, ...] | None = None
    index_min_vectors: int | None = None
    graph_type: str | None = None
    asof_exact_runs: int | None = None

    @property
    def exact_runs(self) -> int:
        return DEFAULT_ASOF_EXACT_RUNS if self.asof_exact_runs is None else self.asof_exact_runs

    @property
    def min_vectors(self) -> int:
        return DEFAULT_MIN_VECTORS if self.index_min_vectors is None else self.index_min_vectors

    def spaces(self, joint_vectors: float) -> tuple[str, ...]:
        """The spaces to index, for a joint table of ``joint_vectors`` vectors."""
        if self.indexed_spaces is not None:
            return self.indexed_spaces
        return LARGE_SCALE_SPACES if joint_vectors >= LARGE_SCALE else DEFAULT_SPACES

    def kind(self, space: str) -> str:
        if self.graph_type is not None:
            return self.graph_type
        return "vector" if space == "joint" else "halfvec"

    def describe(self) -> str:
        spaces = ", ".join(self.indexed_spaces) if self.indexed_spaces is not None else (
            f"{', '.join(DEFAULT_SPACES)} below {LARGE_SCALE:,} joint vectors, then {', '.join(LARGE_SCALE_SPACES)}")
        kind = self.graph_type or "halfvec, float32 for joint"
        prefix = "" if self.asof_exact_runs is None else f"; as-of prefix graphs down to {self.exact_runs:,} runs"
        return (f"indexed spaces: {spaces or 'none'}; a graph from {self.min_vectors:,} vectors; graphs: {kind}"
                f"{prefix}")


def parse_spaces(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """``joint,env`` (or a list) -> ('joint', 'env'); ``all`` -> all four; ``none`` -> (); ``default`` -> None
    (the default rule)."""
    if value is None:
        return None
    items = [part.strip() for part in (value.split(",") if isinstance(value, str) else value) if part.strip()]
    if items == ["default"]:
        return None
    if items == ["all"]:
        return SPACES
    if items == ["none"]:
        return ()
    unknown = [item for item in items if item not in SPACES]
    if unknown or not items:
        raise MetaspaceError(f"indexed spaces (--indexed-spaces): unknown space(s) {', '.join(unknown) or '(none given)'}; "
                             f"use a comma-separated list of {', '.join(SPACES)}, or all, none, default")
    return tuple(space for space in SPACES if space in items)


def parse_graph_type(value: str | None) -> str | None:
    """``halfvec`` or ``vector``; ``default`` (or None) -> None."""
    if value is None or value == "default":
        return None
    if value not in GRAPH_TYPES:
        raise MetaspaceError(f"graph type (--graph-type): unknown {value!r}; use halfvec, vector or default")
    return value


def read_settings(conn: psycopg.Connection) -> IndexSettings:
    stored = dict(conn.execute(f"SELECT name, value FROM {SCHEMA}.settings").fetchall())  # noqa: S608
    spaces = stored.get("indexed_spaces")
    return IndexSettings(tuple(spaces) if spaces is not None else None, stored.get("index_min_vectors"),
                         stored.get("graph_type"), stored.get("asof_exact_runs"))


def save_settings(conn: psycopg.Connection, settings: IndexSettings) -> None:
    """Store the choice (None: forget it, back to the default)."""
    for name, value in (("indexed_spaces", None if settings.indexed_spaces is None else list(settings.indexed_spaces)),
                        ("index_min_vectors", settings.index_min_vectors), ("graph_type", settings.graph_type),
                        ("asof_exact_runs", settings.asof_exact_runs)):
        if value is None:
            conn.execute(f"DELETE FROM {SCHEMA}.settings WHERE name = %s", (name,))  # noqa: S608
        else:
            # (set_at: the inserted row's default, now(); Citus takes only immutable functions in DO UPDATE SET)
            conn.execute(f"INSERT INTO {SCHEMA}.settings (name, value) VALUES (%s, %s) "  # noqa: S608
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                         (name, Jsonb(value)))


def vector_counts(conn: psycopg.Connection) -> dict[str, int]:
    """The size of each space, against the threshold: every vector of the joint table (its graph covers all
    rows), and for each branch the runs its distinct vectors serve (its graph holds the distinct ones)."""
    counts = dict.fromkeys(SPACES, 0)
    counts["joint"] = conn.execute(f"SELECT count(vector) FROM {SCHEMA}.joint_embeddings").fetchone()[0]  # noqa: S608
    counts["config"], counts["env"], counts["outcome"] = conn.execute(
        f"SELECT count(config_entity), count(env_entity), count(outcome_entity) FROM {SCHEMA}.run_entities"  # noqa: S608
    ).fetchone()
    return counts


def wanted(settings: IndexSettings, counts: dict[str, int]) -> set[Graph]:
    """The graphs there should be at these counts."""
    indexed = settings.spaces(counts["joint"])
    return {(space, settings.kind(space)) for space in indexed
            if counts[space] >= settings.min_vectors and counts[space] > 0}


def present(conn: psycopg.Connection) -> set[Graph]:
    names = {name for (name,) in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexname = ANY(%s)",
        (SCHEMA, list(INDEX_NAMES.values()))).fetchall()}
    return {graph for graph, name in INDEX_NAMES.items() if name in names}


def spaces_of(graphs: set[Graph]) -> list[str]:
    return [space for space in SPACES if any(s == space for s, _ in graphs)]


def describe(graphs: set[Graph]) -> str:
    return ", ".join(f"{space} ({kind})" for space in SPACES for s, kind in sorted(graphs) if s == space)


def drop(conn: psycopg.Connection, graphs: set[Graph]) -> None:
    """Drop these graphs, and their as-of prefix graphs."""
    prefixes = present_prefix(conn) if graphs else {}
    for graph in sorted(graphs):
        drop_prefix(conn, prefixes.get(graph, []))
        conn.execute(f"DROP INDEX IF EXISTS {SCHEMA}.{INDEX_NAMES[graph]}")


def build(conn: psycopg.Connection, graphs: set[Graph]) -> set[Graph]:
    """Create those of these graphs that are missing; return the ones built."""
    missing = graphs - present(conn)
    for kind, file in INDEX_FILES.items():
        ddl = dict(zip((INDEX_NAMES[(space, kind)] for space in SPACES), statements(file)))
        for space in SPACES:
            if (space, kind) in missing:
                conn.execute(ddl[INDEX_NAMES[(space, kind)]])
    return missing


def exact_only_note_for(space: str, indexed_spaces: tuple[str, ...] | None, joint_vectors: float,
                        present_indexes: frozenset[str] | set[str]) -> str | None:
    """What a search in ``space`` says when the space is not among the indexed spaces and has no graph: it
    was answered by exact search. From the stored choice, the joint table's size (the planner's estimate)
    and the names of the HNSW indexes present (store/session.py reads them with a question's facts)."""
    if {INDEX_NAMES[(space, "vector")], INDEX_NAMES[(space, "halfvec")]} & set(present_indexes):
        return None
    settings = IndexSettings(indexed_spaces)
    indexed = settings.spaces(joint_vectors or 0)
    if space in indexed:
        return None
    if settings.indexed_spaces is not None:
        why = "the indexed spaces chosen for this database are " + (", ".join(indexed) or "none")
    else:
        why = f"above {LARGE_SCALE:,} runs only {', '.join(LARGE_SCALE_SPACES)} are indexed by default"
    return (f"the {space} space has no HNSW graph ({why}): answered by exact search; "
            f"metaspace embed-runs --indexed-spaces {','.join(sorted({*indexed, space}, key=SPACES.index))} "
            "builds one")


# As-of prefix graphs ---------------------------------------------------------------------------------------

PREFIX_NAME = re.compile(r"^asof_(joint|config|env|outcome)_(vector|halfvec)_([0-9]+)(_new|_old)?$")
STAGED, RETIRED = "_new", "_old"  # a copy being built, a copy replaced and about to be dropped
PREFIX_LOCK_KEY = 0x6D657461_6173  # "meta" "as": one rebuild of prefix graphs at a time
PREFIX_DATE = re.compile(r"(?:as_of_date|first_seen) <= '([0-9]{4}-[0-9]{2}-[0-9]{2})'::date")


@dataclass(frozen=True)
class PrefixGraph:
    """A partial copy of a space's graph over the vectors known as of ``as_of``; ``runs`` of them."""

    space: str
    kind: str
    level: int
    as_of: dt.date
    runs: int = 0

    @property
    def name(self) -> str:
        return f"asof_{self.space}_{self.kind}_{self.level}"


def _prefix_indexes(conn: psycopg.Connection) -> list[tuple[str, str | None, bool]]:
    return conn.execute(
        "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid), i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname LIKE 'asof!_%%' ESCAPE '!'", (SCHEMA,)).fetchall()


def present_prefix(conn: psycopg.Connection) -> dict[Graph, list[PrefixGraph]]:
    """The valid prefix graphs searches walk, by (space, kind), largest first, with the date of each (not a
    staged or retired copy, nor an invalid one: ``prefix_leftovers``)."""
    found: dict[Graph, list[PrefixGraph]] = {}
    for name, predicate, valid in _prefix_indexes(conn):
        named, dated = PREFIX_NAME.match(name), PREFIX_DATE.search(predicate or "")
        if named and dated and valid and not named.group(4):
            space, kind, level = named.group(1), named.group(2), int(named.group(3))
            found.setdefault((space, kind), []).append(
                PrefixGraph(space, kind, level, dt.date.fromisoformat(dated.group(1))))
    return {graph: sorted(levels, key=lambda p: p.level) for graph, levels in found.items()}


def prefix_leftovers(conn: psycopg.Connection) -> list[str]:
    """The ``asof_`` indexes no search may walk: INVALID ones (an interrupted CONCURRENTLY build) and those
    under a staged or retired name (a rebuild interrupted before its swap or its drops)."""
    leftovers = []
    for name, predicate, valid in _prefix_indexes(conn):
        named, dated = PREFIX_NAME.match(name), PREFIX_DATE.search(predicate or "")
        if not (named and dated and valid and not named.group(4)):
            leftovers.append(name)
    return sorted(leftovers)


def as_of_histogram(conn: psycopg.Connection, space: str) -> list[tuple[dt.date, int]]:
    """(as-of date, vectors of that date) of the vectors a space's graph holds, oldest first: the joint
    vectors by their run's date, a branch's entities by the date they were first seen."""
    if space == "joint":
        query = (f"SELECT as_of_date, count(*) FROM {SCHEMA}.joint_embeddings "  # noqa: S608
                 "WHERE vector IS NOT NULL AND as_of_date IS NOT NULL GROUP BY 1 ORDER BY 1")
        return conn.execute(query).fetchall()
    query = (f"SELECT first_seen, count(*) FROM {SCHEMA}.branch_entities "  # noqa: S608
             "WHERE branch = %s GROUP BY 1 ORDER BY 1")
    return conn.execute(query, (space,)).fetchall()


def plan_prefix(histogram: list[tuple[dt.date, int]], space: str, kind: str, exact_runs: int) -> list[PrefixGraph]:
    """The prefix graphs a space should have: none below ``PREFIX_MIN_MULTIPLE`` x ``exact_runs`` vectors, else
    at the dates leaving 1/3, 1/9, 1/27, ... of its vectors, while a level would hold at least ``exact_runs``
    (the smallest then holds between it and three times it).
    A date holding many runs can make two levels one, or leave none short of all of them; those are skipped."""
    cumulative = list(itertools.accumulate(count for _, count in histogram))
    total = cumulative[-1] if cumulative else 0
    if total < PREFIX_MIN_MULTIPLE * exact_runs:
        return []
    levels: list[PrefixGraph] = []
    target = total / PREFIX_STEP
    while target >= max(exact_runs, 1):
        at = bisect.bisect_left(cumulative, target)
        seen = cumulative[at]
        if seen < total and (not levels or seen < levels[-1].runs):
            levels.append(PrefixGraph(space, kind, len(levels) + 1, histogram[at][0], seen))
        target /= PREFIX_STEP
    return levels


def _runs_as_of(histogram: list[tuple[dt.date, int]], day: dt.date) -> int:
    return sum(count for d, count in histogram if d <= day)


def prefix_stale(have: list[PrefixGraph], plan: list[PrefixGraph], histogram: list[tuple[dt.date, int]]) -> bool:
    """Whether a space's prefix graphs have drifted from the plan for today's history: another number of
    levels, or a level holding more than sqrt(3) times more or fewer runs than planned."""
    if len(have) != len(plan):
        return True
    for old, new in zip(have, plan):
        runs = _runs_as_of(histogram, old.as_of)
        if runs == 0 or abs(math.log(runs / new.runs)) > math.log(PREFIX_STEP) / 2:
            return True
    return False


def prefix_ddl(prefix: PrefixGraph, *, concurrently: bool = False, name: str | None = None) -> sql.Composed:
    """CREATE INDEX for one prefix graph: the space's graph (same kind, same parameters) over the vectors
    known as of its date (a branch's entities first seen by then). The date is a literal taken from the
    database's own dates."""
    column = sql.SQL("vector vector_l2_ops" if prefix.kind == "vector" else "(vector::halfvec(384)) halfvec_l2_ops")
    if prefix.space == "joint":
        table, where = sql.SQL("joint_embeddings"), sql.SQL("as_of_date <= {}").format(sql.Literal(prefix.as_of))
    else:
        table = sql.SQL("branch_entities")
        where = sql.SQL("branch = {} AND first_seen <= {}").format(sql.Literal(prefix.space),
                                                                    sql.Literal(prefix.as_of))
    return sql.SQL("CREATE INDEX {concurrently}{name} ON {schema}.{table} USING hnsw ({column}) "
                   "WITH (m = 16, ef_construction = 64) WHERE {where}").format(
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""), name=sql.Identifier(name or prefix.name),
        schema=sql.Identifier(SCHEMA), table=table, column=column, where=where)


def _drop_index(conn: psycopg.Connection, name: str, *, concurrently: bool) -> None:
    conn.execute(sql.SQL("DROP INDEX {}IF EXISTS {}.{}").format(
        sql.SQL("CONCURRENTLY " if concurrently else ""), sql.Identifier(SCHEMA), sql.Identifier(name)))


def drop_prefix(conn: psycopg.Connection, prefixes: list[PrefixGraph], *, concurrently: bool = False) -> None:
    for prefix in prefixes:
        _drop_index(conn, prefix.name, concurrently=concurrently)


def _can_run_concurrently(conn: psycopg.Connection) -> bool:
    """CREATE/DROP INDEX CONCURRENTLY cannot run in a transaction block."""
    return conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _replace_concurrently(conn: psycopg.Connection, old: list[PrefixGraph], plan: list[PrefixGraph]) -> None:
    """Build ``plan`` beside ``old`` without blocking writers; swap the names at once; drop ``old``."""
    for prefix in plan:
        conn.execute(prefix_ddl(prefix, concurrently=True, name=prefix.name + STAGED))
    with conn.transaction():  # ALTER INDEX RENAME: a SHARE UPDATE EXCLUSIVE lock on the index, not the table
        for prefix in old:
            conn.execute(sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
                sql.Identifier(SCHEMA), sql.Identifier(prefix.name), sql.Identifier(prefix.name + RETIRED)))
        for prefix in plan:
            conn.execute(sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
                sql.Identifier(SCHEMA), sql.Identifier(prefix.name + STAGED), sql.Identifier(prefix.name)))
    for prefix in old:
        _drop_index(conn, prefix.name + RETIRED, concurrently=True)


class PrefixGraphsDeferred(MetaspaceError):
    """The prefix graphs were not rebuilt here: the rebuild failed, or another session holds it (the data
    written before it stands); say so, go on."""


class PrefixGraphsBusy(PrefixGraphsDeferred):
    """Another session holds the rebuild of the prefix graphs: left to it."""


BUSY = ("another session is rebuilding the as-of prefix graphs: left to it (it may have planned before the vectors "
        "written here; answers stay right, and the next embed-runs by the tables' owner brings the copies up to "
        "date)")


def _drop_leftovers_if_possible(conn: psycopg.Connection) -> None:
    """A failed CONCURRENTLY build leaves an INVALID copy that every insert still feeds: drop it now if the
    server lets us (else the next sync does)."""
    try:
        for name in prefix_leftovers(conn):
            _drop_index(conn, name, concurrently=True)
    except psycopg.Error:
        pass


def sync_prefix_graphs(conn: psycopg.Connection, settings: IndexSettings) -> tuple[list[PrefixGraph], list[PrefixGraph]]:
    """Give every space that has a graph the prefix graphs of its kind that today's history calls for:
    drop those of spaces without a graph (or of another kind), and rebuild a space's set where it has
    drifted (``prefix_stale``) or lost a copy. Returns (built, dropped). While another session rebuilds them,
    raises PrefixGraphsBusy: that rebuild may have planned before the caller's vectors were written, so
    the copies can lag (answers stay right; an early-date search may walk a larger copy) until the next sync.

    In autocommit, every build and drop is CONCURRENTLY (the module's docstring says how); in a transaction,
    plain, and part of it."""
    concurrently = _can_run_concurrently(conn)
    if concurrently:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (PREFIX_LOCK_KEY,)).fetchone()[0]:
            raise PrefixGraphsBusy(BUSY)
        try:
            return _sync_prefix_graphs(conn, settings, concurrently=True)
        except psycopg.Error as error:  # e.g. a deadlock with another embed-runs' ANALYZE or graph build
            _drop_leftovers_if_possible(conn)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PrefixGraphsDeferred(
                f"as-of prefix graphs not rebuilt ({first}): searches keep the copies they had, and the next "
                "embed-runs rebuilds them") from error
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (PREFIX_LOCK_KEY,))
    if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PREFIX_LOCK_KEY,)).fetchone()[0]:
        raise PrefixGraphsBusy(BUSY)
    return _sync_prefix_graphs(conn, settings, concurrently=False)


def _sync_prefix_graphs(conn: psycopg.Connection, settings: IndexSettings, *,
                        concurrently: bool) -> tuple[list[PrefixGraph], list[PrefixGraph]]:
    for name in prefix_leftovers(conn):
        _drop_index(conn, name, concurrently=concurrently)
    have = present_prefix(conn)
    graphs = present(conn)
    walked = {space: "halfvec" if (space, "halfvec") in graphs else "vector"  # what nearest_runs_v2 walks
              for space in spaces_of(graphs)}
    built: list[PrefixGraph] = []
    dropped: list[PrefixGraph] = []
    for (space, kind), levels in have.items():
        if walked.get(space) != kind:
            drop_prefix(conn, levels, concurrently=concurrently)
            dropped += levels
    for space, kind in walked.items():
        histogram = as_of_histogram(conn, space)
        plan = plan_prefix(histogram, space, kind, settings.exact_runs)
        old = have.get((space, kind), [])
        if [p.level for p in old] == [p.level for p in plan] and not prefix_stale(old, plan, histogram):
            continue
        if concurrently:
            _replace_concurrently(conn, old, plan)
        else:
            drop_prefix(conn, old)
            for prefix in plan:
                conn.execute(prefix_ddl(prefix))
        dropped += old
        built += plan
    return built, dropped


def describe_prefix(prefixes: list[PrefixGraph]) -> str:
    return ", ".join(f"{p.space} as of {p.as_of.isoformat()} ({p.runs:,} runs)" for p in prefixes)
