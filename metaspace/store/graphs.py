"""Which spaces have an HNSW graph, and of which kind: the team's choice (``historical_db.settings``,
revision 0012), the threshold below which the exact scan answers instead, and the graphs built or dropped
to match.

A graph pays only where queries are asked of a space holding many vectors: its build costs about
0.1 ms a vector on 2 cores and it takes ~1-2 KB a vector of memory, while below ``DEFAULT_MIN_VECTORS``
the exact scan answers a k = 10 search in about 10-30 ms (docs/benchmarks.md, "Where a graph pays"). So:

- a space gets a graph when it is among the indexed spaces and holds at least ``index_min_vectors``;
- the indexed spaces are the team's choice (``embed-runs --indexed-spaces``); without one, all four while
  the joint table holds fewer than ``LARGE_SCALE`` vectors, then joint and env (``LARGE_SCALE_SPACES``),
  the ones ``search`` and ``suggest`` ask by default;
- the graph's kind (``--graph-type``): by default a halfvec graph (0.57x the size, recall within 0.005 of
  float32 at 100,000 runs up to ef_search 100) for config, env and outcome, and a float32 one for joint, the space the plain
  ``ORDER BY vector <-> :q`` form of the design card asks; ``halfvec`` or ``vector`` makes all four alike.

A space without a graph still answers, by exact search (``nearest_runs_v2`` finds no graph and scans); a
search in a space that is not indexed says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from metaspace.errors import MetaspaceError
from metaspace.names import SCHEMA, SPACES
from metaspace.store.sqlfiles import statements

DEFAULT_MIN_VECTORS = 10_000
LARGE_SCALE = 1_000_000
LARGE_SCALE_SPACES = ("joint", "env")
GRAPH_TYPES = ("vector", "halfvec")
# The graphs of sql/vector_indexes_v1.sql (float32) and v2 (halfvec), one per space, in the files' order.
# (store/vectors.py names the v1 ones too; this module imports nothing heavy, since a search by stored run
# reads the note below.)
INDEX_FILES = {"vector": "vector_indexes_v1.sql", "halfvec": "vector_indexes_v2.sql"}
INDEX_NAMES = {
    ("joint", "vector"): "joint_embeddings_vector_hnsw",
    **{(branch, "vector"): f"branch_embeddings_{branch}_hnsw" for branch in SPACES[1:]},
    ("joint", "halfvec"): "joint_embeddings_halfvec_hnsw",
    **{(branch, "halfvec"): f"branch_embeddings_{branch}_halfvec_hnsw" for branch in SPACES[1:]},
}
Graph = tuple[str, str]  # (space, kind)


@dataclass(frozen=True)
class IndexSettings:
    """The stored choice; None means the default rule."""

    indexed_spaces: tuple[str, ...] | None = None
    index_min_vectors: int | None = None
    graph_type: str | None = None

    @property
    def min_vectors(self) -> int:
        return DEFAULT_MIN_VECTORS if self.index_min_vectors is None else self.index_min_vectors

    def spaces(self, joint_vectors: float) -> tuple[str, ...]:
        """The spaces to index, for a joint table of ``joint_vectors`` vectors."""
        if self.indexed_spaces is not None:
            return self.indexed_spaces
        return LARGE_SCALE_SPACES if joint_vectors >= LARGE_SCALE else SPACES

    def kind(self, space: str) -> str:
        if self.graph_type is not None:
            return self.graph_type
        return "vector" if space == "joint" else "halfvec"

    def describe(self) -> str:
        spaces = ", ".join(self.indexed_spaces) if self.indexed_spaces is not None else (
            f"all four below {LARGE_SCALE:,} joint vectors, then {' and '.join(LARGE_SCALE_SPACES)}")
        kind = self.graph_type or "halfvec, float32 for joint"
        return f"indexed spaces: {spaces or 'none'}; a graph from {self.min_vectors:,} vectors; graphs: {kind}"


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
                         stored.get("graph_type"))


def save_settings(conn: psycopg.Connection, settings: IndexSettings) -> None:
    """Store the choice (None: forget it, back to the default)."""
    for name, value in (("indexed_spaces", None if settings.indexed_spaces is None else list(settings.indexed_spaces)),
                        ("index_min_vectors", settings.index_min_vectors), ("graph_type", settings.graph_type)):
        if value is None:
            conn.execute(f"DELETE FROM {SCHEMA}.settings WHERE name = %s", (name,))  # noqa: S608
        else:
            conn.execute(f"INSERT INTO {SCHEMA}.settings (name, value) VALUES (%s, %s) "  # noqa: S608
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value, set_at = now()",
                         (name, Jsonb(value)))


def vector_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Vectors each space's graph would hold: every vector of the joint table (its graph covers all rows),
    and each branch's rows."""
    counts = dict.fromkeys(SPACES, 0)
    counts["joint"] = conn.execute(f"SELECT count(vector) FROM {SCHEMA}.joint_embeddings").fetchone()[0]  # noqa: S608
    counts.update(dict(conn.execute(
        f"SELECT branch, count(*) FROM {SCHEMA}.branch_embeddings GROUP BY branch").fetchall()))  # noqa: S608
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
    for graph in sorted(graphs):
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


def exact_only_note(conn: psycopg.Connection, space: str) -> str | None:
    """What a search in ``space`` says when the space is not among the indexed spaces and has no graph:
    it was answered by exact search (one catalog query; the table's size is the planner's estimate)."""
    row = conn.execute(
        f"""SELECT (SELECT value FROM {SCHEMA}.settings WHERE name = 'indexed_spaces'),
                   (SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = to_regclass(%s)),
                   to_regclass(%s) IS NOT NULL OR to_regclass(%s) IS NOT NULL""",  # noqa: S608
        (f"{SCHEMA}.joint_embeddings", f"{SCHEMA}.{INDEX_NAMES[(space, 'vector')]}",
         f"{SCHEMA}.{INDEX_NAMES[(space, 'halfvec')]}")).fetchone()
    stored, joint_vectors, has_graph = row
    if has_graph:
        return None
    settings = IndexSettings(tuple(stored) if stored is not None else None)
    indexed = settings.spaces(joint_vectors or 0)
    if space in indexed:
        return None
    why = ("the indexed spaces chosen for this database are " + (", ".join(indexed) or "none")
           if settings.indexed_spaces is not None
           else f"above {LARGE_SCALE:,} runs only {' and '.join(LARGE_SCALE_SPACES)} are indexed by default")
    return (f"the {space} space has no HNSW graph ({why}): answered by exact search; "
            f"metaspace embed-runs --indexed-spaces {','.join(sorted({*indexed, space}, key=SPACES.index))} "
            "builds one")
