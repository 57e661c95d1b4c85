"""Foreign data end to end: 10,000 garbage records mixed with 2,000 good ones, and ~9,000 wide, nested,
conditional records (150+ keys, ~3 KB each), each imported and embedded on a fresh database with no flag
and no tuning. The limit measured in the same run: importing and embedding the good records alone.

    python benchmarks/bench_foreign.py [--garbage 10000] [--good 2000] [--wide 9000]

Runs on the embedded server (or METASPACE_DATABASE_URL's server).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import psycopg  # noqa: E402
from fuzz import good_line, mixed_lines  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from metaspace import pipeline  # noqa: E402
from metaspace.store import migrate  # noqa: E402
from metaspace.store.connection import resolve_url  # noqa: E402


def _fresh_database(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server, dbname=name)
    migrate.upgrade(url)
    return url


def _drop(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _run(server: str, lines: list[str], label: str) -> dict:
    url = _fresh_database(server)
    path = Path(tempfile.mkdtemp()) / "runs.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    try:
        started = time.perf_counter()
        imported = pipeline.import_runs([str(path)], database_url=url)
        import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        embedded = pipeline.embed_runs(database_url=url)
        embed_seconds = time.perf_counter() - started
    finally:
        _drop(server, url)
    reasons = Counter(r["reason"].split(":")[0][:60] for r in imported.rejects)
    return {"label": label, "lines": len(lines), "inserted": imported.inserted, "rejected": imported.rejected,
            "embedded": embedded.embedded, "quarantined": len(embedded.quarantined),
            "import_s": round(import_seconds, 2), "embed_s": round(embed_seconds, 2), "top_reasons": reasons.most_common(4)}


def _wide_line(rng: random.Random, i: int) -> str:
    """A meta-learning run: a pipeline of conditional stages, each with the hyperparameters of its choice."""
    config = {}
    for stage in range(10 + i % 3):
        kind = rng.choice(["adam", "sgd", "lamb", "rf", "gbm", "svm"])
        config[f"stage_{stage}"] = {"kind": kind,
                                    **{f"{kind}_{k}": rng.random() * 10 ** rng.randint(-5, 3) for k in range(11)},
                                    **{f"choice_{k}": rng.choice(["relu", "gelu", "tanh", "none"]) for k in range(3)}}
    return json.dumps({"run_id": f"wide-{i:06d}", "as_of_date": f"20{10 + i % 14}-0{1 + i % 9}-1{i % 10}",
                       "config_id": f"pipe-{i % 300}", "config": config,
                       "env": {"dataset": {"rows": rng.randint(100, 10**6), "features": rng.randint(2, 500)},
                               "task": rng.choice(["binary", "multiclass", "regression"])},
                       "outcome": {"score": rng.random(), "fit_seconds": rng.random() * 100}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--garbage", type=int, default=10_000)
    parser.add_argument("--good", type=int, default=2_000)
    parser.add_argument("--wide", type=int, default=9_000)
    args = parser.parse_args()
    server = resolve_url(None)
    lines, kinds, _ = mixed_lines(args.garbage, args.good, seed=1)
    rng = random.Random(2)
    clean = [good_line(rng, i) for i in range(args.good)]
    wide = [_wide_line(rng, i) for i in range(args.wide)]
    print(f"garbage kinds: {dict(Counter(kinds))}")
    print(f"wide records: {args.wide}, mean {sum(map(len, wide)) / len(wide):,.0f} bytes, "
          f"{sum(len(json.loads(w)['config']) for w in wide[:100]) / 100:.1f} stages")
    results = [_run(server, clean, "good only (the limit)"), _run(server, lines, "garbage + good"),
               _run(server, wide, "wide nested conditional")]
    for r in results:
        print(json.dumps(r))
    limit = results[0]
    fuzz = results[1]
    print(f"garbage + good: {fuzz['embedded']} embedded of {args.good} good, "
          f"{fuzz['rejected'] + fuzz['quarantined']} bad accounted for (rejected or quarantined); "
          f"import {fuzz['import_s'] / max(limit['import_s'], 1e-9):.1f}x, embed "
          f"{fuzz['embed_s'] / max(limit['embed_s'], 1e-9):.1f}x the good-only run "
          f"(which has {len(lines) / len(clean):.0f}x fewer lines)")


if __name__ == "__main__":
    main()
