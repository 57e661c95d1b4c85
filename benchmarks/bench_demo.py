"""`metaspace demo`: the wall time of the README's first command after the install, and where it goes.

    python benchmarks/bench_demo.py                  # 3 rounds, each on a fresh METASPACE_HOME
    python benchmarks/bench_demo.py --rounds 1 --keep

Each round runs ``metaspace demo`` as a user does (a fresh process, a fresh ``METASPACE_HOME``, so the
embedded server is created and started too) and reads the per-phase seconds the demo records
(``DemoResult.phases``) from a second line of output. The limit, measured in the same round: a fresh
process that imports psycopg and runs ``SELECT 1`` on the server the demo left (what any command pays),
and the target of the README, 30 s.
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

TARGET_SECONDS = 30.0

RUN = """
import json, sys
from metaspace import demo
result = demo.run_demo(out_dir=sys.argv[1], say=lambda line: None)
print(json.dumps({"seconds": result.seconds, "phases": result.phases, "url": result.database_url}))
"""

CLIENT = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("SELECT 1").fetchall()
"""


def _round(keep: bool) -> dict:
    home = tempfile.mkdtemp(prefix="metaspace-bench-demo-")
    env = dict(os.environ, METASPACE_HOME=home)
    try:
        started = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "metaspace", "demo", "--out-dir", home], env=env,
                             capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        done = next(line for line in cli.stdout.splitlines() if line.startswith("Done in"))
        # the same tour again in-process on the now-running server, for its phases (a fresh demo database)
        phased = json.loads(subprocess.run([sys.executable, "-c", RUN, home], env=env, capture_output=True,
                                           text=True, check=True).stdout.splitlines()[-1])
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", CLIENT, phased["url"]], env=env, check=True)
        client = time.perf_counter() - started
        return {"wall": wall, "done": done, "phases": phased["phases"], "phased_total": phased["seconds"],
                "client": client}
    finally:
        subprocess.run([sys.executable, "-m", "metaspace", "db", "stop"], env=env, capture_output=True)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep each round's METASPACE_HOME")
    args = parser.parse_args()
    rounds = []
    for number in range(1, args.rounds + 1):
        result = _round(args.keep)
        rounds.append(result)
        phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["phases"].items())
        print(f"round {number}: metaspace demo {result['wall']:.1f} s wall ({result['done']}); "
              f"= {result['wall'] / TARGET_SECONDS:.2f}x the {TARGET_SECONDS:.0f} s target, "
              f"{result['wall'] / result['client']:.0f}x a psycopg client's SELECT 1 ({result['client']:.2f} s)")
        print(f"   phases of a second tour on the running server ({result['phased_total']:.1f} s): {phases}")
    walls = [r["wall"] for r in rounds]
    print(f"median {statistics.median(walls):.1f} s, range {min(walls):.1f}-{max(walls):.1f} s over {len(walls)} "
          f"rounds; {statistics.median(walls) / TARGET_SECONDS:.2f}x the target")


if __name__ == "__main__":
    main()
