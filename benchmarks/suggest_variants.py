"""Variants of suggest_configs_v2 for bench_evaluate.py, each installed as bench.NAME in the benchmark
database only (never by a migration).

A variant is either a list of (old, new) text replacements of sql/suggest_v2.sql (a replacement that no
longer matches is an error, so a variant never silently measures v2 itself) or a whole draft kept under
benchmarks/variants/.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

SQL = Path(__file__).resolve().parent.parent / "sql" / "suggest_v2.sql"

# name: replacements of sql/suggest_v2.sql, or the file (under benchmarks/variants/) of an earlier draft.
VARIANTS: dict[str, list[tuple[str, str]] | str] = {
    # v2 with local edges shrunk toward the config's edge over the whole history known at the date (the
    # evidence behind the best-so-far config) instead of toward zero. Measured, not adopted (docs/suggestions.md).
    "history_prior": "history_prior.sql",
    # ... and evidence counted in distinct months rather than environments. Measured, not adopted.
    "history_prior_months": "history_prior_months.sql",
}


def _variant_sql(name: str) -> str:
    change = VARIANTS[name]
    source = Path(__file__).parent / "variants" / change if isinstance(change, str) else SQL
    text = source.read_text(encoding="utf-8")
    text = text.replace("CREATE TYPE historical_db.config_suggestion_v2", "CREATE TYPE bench.config_suggestion_v2")
    text = text.replace("CREATE FUNCTION historical_db.suggest_configs_v2", f"CREATE FUNCTION bench.{name}")
    text = text.replace("SETOF historical_db.config_suggestion_v2", "SETOF bench.config_suggestion_v2")
    for old, new in ([] if isinstance(change, str) else change):
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


def reinstall_v2(url: str) -> None:
    """Replace historical_db.suggest_configs_v2 with today's sql/suggest_v2.sql (a kept database was migrated
    with an earlier draft; never done to a user's database: migrations own it)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("DROP FUNCTION IF EXISTS historical_db.suggest_configs_v2(vector, integer, date, text, boolean, "
                     "integer, integer, text[], boolean, text[], integer)")
        conn.execute("DROP TYPE IF EXISTS historical_db.config_suggestion_v2")
        conn.execute((SQL.parent / "pin_search_path_v1.sql").read_text(encoding="utf-8"))
        conn.execute(SQL.read_text(encoding="utf-8"))
