"""Variants of the suggest functions for bench_evaluate.py, each installed as bench.NAME in the benchmark
database only (never by a migration).

A variant is either a released file (sql/suggest_v2.sql or sql/suggest_v4.sql) with a list of (old, new)
text replacements (a replacement that no longer matches is an error, so a variant never silently measures
the released function itself) or a whole draft kept under benchmarks/variants/ (a draft of v2's shape).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

SQL = Path(__file__).resolve().parent.parent / "metaspace" / "sql"
_V4_BANDWIDTH = "SELECT greatest(percentile_cont(0.1) WITHIN GROUP (ORDER BY s.distance), 1e-9) AS h,"

# name: (released file, replacements), or the file (under benchmarks/variants/) of an earlier draft.
VARIANTS: dict[str, tuple[str, list[tuple[str, str]]] | str] = {
    # v2 with local edges shrunk toward the config's edge over the whole history known at the date (the
    # evidence behind the best-so-far config) instead of toward zero. Measured, not adopted (docs/suggestions.md).
    "history_prior": "history_prior.sql",
    # ... and evidence counted in distinct months rather than environments. Measured, not adopted.
    "history_prior_months": "history_prior_months.sql",
    # The first draft of v4: the record as the centre, evidence in blocks of one outcome window, the noise of
    # the local departures measured over the neighbourhood's few blocks, the kernel of v2 (median distance).
    "history_blocks": "history_blocks.sql",
    # v4 with v2's kernel bandwidth (the median neighbour distance) instead of the 10th percentile.
    "v4_median_bandwidth": ("suggest_v4.sql", [(_V4_BANDWIDTH, _V4_BANDWIDTH.replace("0.1)", "0.5)"))]),
    # v4 with a narrower kernel still (the 5th percentile).
    "v4_narrower": ("suggest_v4.sql", [(_V4_BANDWIDTH, _V4_BANDWIDTH.replace("0.1)", "0.05)"))]),
}


def _type_sql(released: str, version: str) -> str:
    text = (SQL / released).read_text(encoding="utf-8")
    start = text.index(f"CREATE TYPE historical_db.config_suggestion_{version}")
    return text[start:text.index(");", start) + 2].replace("historical_db.", "bench.")


def _variant_sql(name: str) -> str:
    change = VARIANTS[name]
    if isinstance(change, str):
        text, replacements, version = (Path(__file__).parent / "variants" / change).read_text(encoding="utf-8"), [], "v2"
    else:
        released, replacements = change
        text, version = (SQL / released).read_text(encoding="utf-8"), released.removeprefix("suggest_").split(".")[0]
    for old, new in replacements:
        if old not in text:
            raise ValueError(f"variant {name}: {old!r} is not in its released file any more")
        text = text.replace(old, new)
    text = text.replace(f"CREATE FUNCTION historical_db.suggest_configs_{version}", f"CREATE FUNCTION bench.{name}")
    text = text.replace(f"SETOF historical_db.config_suggestion_{version}", f"SETOF bench.config_suggestion_{version}")
    start = text.index(f"CREATE FUNCTION bench.{name}")
    end = text.find("\nCREATE FUNCTION", start + 1)  # only the ranking function, not what follows it in the file
    return text[start:] if end < 0 else text[start:end]


def install(url: str) -> None:
    """(Re)create the bench schema: the result types, then every variant function."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        conn.execute(_type_sql("suggest_v2.sql", "v2"))
        conn.execute(_type_sql("suggest_v4.sql", "v4"))
        for name in VARIANTS:
            with conn.transaction():
                conn.execute((SQL / "pin_search_path_v1.sql").read_text(encoding="utf-8"))
                conn.execute(_variant_sql(name))
