"""Old migrations are frozen: a revision installs the SQL it was released with, whatever sql/ says today,
and a released ``_vN`` file never changes (a change is a new ``_vN+1`` file and a new revision)."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import psycopg
import pytest

import metaspace
from metaspace.store import migrate

VERSIONS = Path(metaspace.__file__).parent / "migrations" / "versions"
SQL = Path(metaspace.__file__).parent / "sql"
# The files whose objects make up the schema at head, in the order head installs them. A revision that adds
# a _v2 file appends it here (and one that drops a _v1's objects removes that file).
HEAD_SQL = ["pin_search_path_v1.sql", "search_v1.sql", "store_run_v1.sql", "roles_v2.sql", "search_v2.sql",
            "store_run_v2.sql", "suggest_v2.sql", "encode_v1.sql",
            "search_record_v1.sql", "embed_pending_v1.sql", "search_v3.sql", "suggest_v3.sql",
            "search_record_v2.sql", "suggest_v4.sql", "nearest_runs_asof_v1.sql", "suggest_v5.sql",
            "roles_v3.sql", "store_run_v3.sql", "embed_pending_v2.sql", "writers_handover_v1.sql",
            "suggest_v6.sql", "encoder_transform_v1.sql", "stable_v1.sql", "roles_v4.sql", "suggest_v7.sql",
            "stable_v2.sql", "record_as_of_strict_v1.sql", "entity_key_v1.sql", "branch_entities_v1.sql",
            "roles_v5.sql", "stable_v3.sql", "branch_entities_v2.sql", "suggest_v8.sql", "roles_v5.sql",
            "branch_entities_v3.sql", "suggest_v9.sql", "roles_v5.sql"]


def _revision_files() -> list[Path]:
    return sorted(VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


def _frozen_sql(path: Path) -> dict[str, str]:
    """A revision's FROZEN_SQL = {file name: sha256}, read from its source (without running it)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FROZEN_SQL" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_revisions_import_nothing_from_the_live_package() -> None:
    for path in _revision_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert [m for m in modules if m.split(".")[0] == "metaspace"] == [], path.name


@pytest.mark.parametrize("revision", [p.name for p in _revision_files() if _frozen_sql(p)])
def test_frozen_copies_and_released_sql_files_match_their_recorded_checksums(revision: str) -> None:
    prefix = revision.split("_", 1)[0]
    for name, checksum in _frozen_sql(VERSIONS / revision).items():
        assert _sha(VERSIONS / "frozen" / f"{prefix}_{name}") == checksum, f"frozen copy of {name} changed"
        assert _sha(SQL / name) == checksum, (
            f"sql/{name} was released by {revision} and has changed since: put the change in a new _vN file "
            "installed by a new revision")


def test_every_sql_file_is_released_by_a_revision() -> None:
    released = {name for p in _revision_files() for name in _frozen_sql(p)}
    assert {p.name for p in SQL.glob("*.sql")} <= released


def _catalog(url: str) -> dict[str, list[tuple]]:
    """What the SQL files define in historical_db: functions, views, composite types, indexes and grants."""
    with psycopg.connect(url) as conn:
        def rows(query: str) -> list[tuple]:
            return conn.execute(query).fetchall()

        return {
            "functions": rows(
                "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'historical_db' ORDER BY 1"),
            "views": rows("SELECT viewname, definition FROM pg_views WHERE schemaname = 'historical_db' ORDER BY 1"),
            "types": rows(
                "SELECT t.typname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum FROM pg_type t "
                "JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_class c ON c.oid = t.typrelid "
                "JOIN pg_attribute a ON a.attrelid = c.oid WHERE n.nspname = 'historical_db' AND c.relkind = 'c' "
                "AND a.attnum > 0 ORDER BY 1, 4"),
            "indexes": rows("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'historical_db' ORDER BY 1"),
            "grants": rows(
                "SELECT c.relname, c.relacl::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'historical_db' ORDER BY 1"),
        }


def _rebuild_from_sql_files(url: str) -> None:
    """Drop what the head SQL files define and create it again from today's sql/ files."""
    created = re.compile(r"^CREATE (FUNCTION|VIEW|TYPE) historical_db\.(\w+)", re.MULTILINE)
    objects = [m for name in HEAD_SQL for m in created.findall((SQL / name).read_text(encoding="utf-8"))]
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, name in reversed(objects):
            if kind == "FUNCTION":
                for (signature,) in conn.execute(
                        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = 'historical_db' AND p.proname = %s", (name,)).fetchall():
                    conn.execute(f"DROP FUNCTION {signature} CASCADE")
            else:
                conn.execute(f"DROP {kind} IF EXISTS historical_db.{name} CASCADE")
        with conn.transaction():
            for name in HEAD_SQL:
                conn.execute((SQL / name).read_text(encoding="utf-8"))


def test_the_migration_chain_builds_what_the_sql_files_define(db_url: str, empty_db: str) -> None:
    migrate.upgrade(empty_db)
    _rebuild_from_sql_files(empty_db)
    chain, files = _catalog(db_url), _catalog(empty_db)
    for part in chain:
        assert [row for row in chain[part] if row not in files[part]] == [], part
        assert [row for row in files[part] if row not in chain[part]] == [], part


def test_the_chain_comparison_notices_a_changed_sql_definition(db_url: str, empty_db: str) -> None:
    migrate.upgrade(empty_db)
    _rebuild_from_sql_files(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION historical_db.normal_cdf_v1(x double precision) "
                     "RETURNS double precision LANGUAGE sql IMMUTABLE AS 'SELECT 0.5::float8'")
    assert _catalog(db_url)["functions"] != _catalog(empty_db)["functions"]
