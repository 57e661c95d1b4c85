"""Variants of suggest_configs_v2 for bench_evaluate.py: v2's released SQL with one change undone, each
installed as bench.NAME in the benchmark database only (never by a migration).

Each variant is a list of (old, new) text replacements of sql/suggest_v2.sql; a replacement that no longer
matches is an error, so a variant never silently measures v2 itself.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

SQL = Path(__file__).resolve().parent.parent / "sql" / "suggest_v2.sql"

VARIANTS: dict[str, list[tuple[str, str]]] = {}


def _variant_sql(name: str) -> str:
    text = SQL.read_text(encoding="utf-8")
    text = text.replace("CREATE TYPE historical_db.config_suggestion_v2", "CREATE TYPE bench.config_suggestion_v2")
    text = text.replace("CREATE FUNCTION historical_db.suggest_configs_v2", f"CREATE FUNCTION bench.{name}")
    text = text.replace("SETOF historical_db.config_suggestion_v2", "SETOF bench.config_suggestion_v2")
    for old, new in VARIANTS[name]:
        if old not in text:
            raise ValueError(f"variant {name}: {old!r} is not in sql/suggest_v2.sql any more")
        text = text.replace(old, new)
    return text


def install(url: str) -> None:
    """(Re)create the bench schema: v2's result type, then every variant function."""
    text = SQL.read_text(encoding="utf-8").replace("historical_db.config_suggestion_v2",
                                                   "bench.config_suggestion_v2")
    start = text.index("CREATE TYPE bench.config_suggestion_v2")
    type_sql = text[start:text.index(");", start) + 2]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        conn.execute(type_sql)
        for name in VARIANTS:
            variant = _variant_sql(name)
            with conn.transaction():
                conn.execute((SQL.parent / "pin_search_path_v1.sql").read_text(encoding="utf-8"))
                conn.execute(variant[variant.index("CREATE FUNCTION"):])
