"""Start-up: the wall time a user feels for a command, against the limits measured in the same run.

    python benchmarks/bench_cli.py --n 20000
    python benchmarks/bench_cli.py --n 20000 --home /tmp/metaspace-bench-cli   # reuse a built history
    python benchmarks/bench_cli.py --home H --database NAME    # a database of that server, e.g. bench_scale's 1M

Uses the embedded server under ``--home`` (its own METASPACE_HOME; a server that is not running is started
first, so every figure is on a warm server); the first run imports and embeds ``--n`` sample runs. Each
figure is the median wall time of ``--repeat`` fresh processes. The limits:

- ``python -c pass``: the interpreter alone;
- the SQL call alone: the same SQL function on an open connection (what the database itself takes);
- a minimal psycopg client: a fresh process that imports psycopg, connects and runs that same SQL (what
  any Python command that asks the database pays before metaspace does anything).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(sys.argv[2], sys.argv[3:] or None).fetchall()
"""


def _median_ms(command: list[str], repeat: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _median_call_ms(call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _build(url: str, n: int) -> None:
    import metaspace
    from metaspace.sample import sample_runs, write_runs

    path = Path(tempfile.mkdtemp()) / "runs.jsonl.gz"
    write_runs(sample_runs(n, seed=7), path)
    started = time.perf_counter()
    metaspace.migrate(database_url=url)
    metaspace.import_runs([str(path)], database_url=url)
    metaspace.embed_runs(database_url=url)
    print(f"built {n:,} sample runs in {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="sample runs in the history")
    parser.add_argument("--home", default="/tmp/metaspace-bench-cli", help="METASPACE_HOME of the server")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--database", help="an existing database of that server (commands get its URL)")
    args = parser.parse_args()

    os.environ["METASPACE_HOME"] = args.home
    os.environ.pop("METASPACE_DATABASE_URL", None)
    if args.database:
        from psycopg.conninfo import make_conninfo

        from metaspace.store.connection import resolve_url as server_url

        os.environ["METASPACE_DATABASE_URL"] = make_conninfo(server_url(None), dbname=args.database)
    env = dict(os.environ)

    import psycopg

    import metaspace
    from metaspace.queries import HISTORY_RUNS, _Encoder, queries_from
    from metaspace.sample import sample_runs
    from metaspace.store import search as search_store
    from metaspace.store.connection import connection, resolve_url

    url = resolve_url(None)
    metaspace.migrate(database_url=url)  # a history built by an older metaspace is brought to head
    with psycopg.connect(url) as conn:
        has_runs = conn.execute("SELECT to_regclass('historical_db.runs') IS NOT NULL").fetchone()[0] and \
            conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
    if not has_runs:
        _build(url, args.n)
    with psycopg.connect(url) as conn:
        runs = conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
        run_id = conn.execute("SELECT run_id FROM historical_db.runs ORDER BY run_id LIMIT 1").fetchone()[0]

    env_file = Path(tempfile.mkdtemp()) / "env.json"
    target = sample_runs(1, seed=99)[0]
    env_file.write_text(json.dumps({"env": target["env"]}))

    no_filter = search_store.Filters(None, (), (), None)
    with connection(url, autocommit=True) as conn:
        encoder = _Encoder(conn)
        env_vector, _ = encoder.vector(queries_from("env", [("env", {"env": target["env"]})], space="env")[0])
        search_sql = _median_call_ms(
            lambda: search_store.neighbours(conn, run_id, 5, "joint", no_filter, False), args.repeat)
        suggest_sql = _median_call_ms(lambda: search_store.suggest(
            conn, env_vector, k=5, as_of=None, objective="outcome.sharpe", higher_is_better=True,
            neighbours=1000, min_runs=3, strategies=(), exact=False, history=HISTORY_RUNS, horizon=None,
            encoder_version=encoder.version), args.repeat)
    vector_text = "[" + ",".join(f"{x:.8g}" for x in env_vector) + "]"

    python = sys.executable
    metaspace_cli = shutil.which("metaspace", path=str(Path(python).parent)) or "metaspace"
    neighbours_call = ("SELECT * FROM historical_db.neighbours(%s, 5, 'joint', NULL, NULL, NULL, NULL, false)",
                       run_id)
    suggest_call = ("SELECT * FROM historical_db.suggest_configs(%s::vector, 5, NULL, 'outcome.sharpe', true, "
                    "1000, 3, NULL, false)", vector_text)
    _median_ms([metaspace_cli, "search", "--run", run_id, "-k", "5"], 2, env)  # the server's caches warm

    interpreter = _median_ms([python, "-c", "pass"], args.repeat, env)
    rows = [
        ("metaspace --help", _median_ms([metaspace_cli, "--help"], args.repeat, env), interpreter, None),
        (f"metaspace search --run {run_id} -k 5",
         _median_ms([metaspace_cli, "search", "--run", run_id, "-k", "5"], args.repeat, env),
         interpreter + search_sql,
         _median_ms([python, "-c", CLIENT, url, *neighbours_call], args.repeat, env)),
        ("metaspace suggest --env FILE",
         _median_ms([metaspace_cli, "suggest", "--env", str(env_file)], args.repeat, env),
         interpreter + suggest_sql,
         _median_ms([python, "-c", CLIENT, url, *suggest_call], args.repeat, env)),
    ]

    print(f"{runs:,} runs, warm embedded server ({args.home}); median of {args.repeat} fresh processes")
    print(f"python -c pass: {interpreter:.1f} ms; SQL alone on an open connection: search {search_sql:.1f} ms, "
          f"suggest {suggest_sql:.1f} ms")
    print()
    print("| command | median ms | limit: interpreter + SQL | ratio | minimal psycopg client | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, wall, limit, client in rows:
        client_cells = f"{client:.1f} | {wall / client:.2f}×" if client else "— | —"
        print(f"| `{name}` | {wall:.1f} | {limit:.1f} | {wall / limit:.2f}× | {client_cells} |")


if __name__ == "__main__":
    main()
