"""How often PostgreSQL reports a statement_timeout as "canceling statement due to user request".

    python benchmarks/bench_timeout_race.py                 # 3,000 sessions at statement_timeout 1ms
    python benchmarks/bench_timeout_race.py --sessions 500

Each session (a new connection with ``options=-c statement_timeout=1``) runs two short counts over
``generate_series``; every statement's outcome is tallied by its message. A timeout that fires as a statement
ends is reported as a user request, though no other session cancelled anything: why metaspace's error for a
cancelled statement names the session's statement_timeout whichever message PostgreSQL gives
(``metaspace.store.connection.describe_error``; docs/server.md). Runs on the embedded server (or
``METASPACE_DATABASE_URL``'s).
"""

from __future__ import annotations

import argparse
import collections
import sys

import psycopg
from psycopg.conninfo import make_conninfo

from metaspace.store.connection import resolve_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3000)
    args = parser.parse_args()
    url = make_conninfo(resolve_url(None), options="-c statement_timeout=1")
    said: collections.Counter[str] = collections.Counter()
    for i in range(args.sessions):
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for n in (i * 37 % 5000, i * 53 % 5000):
                    conn.execute("SELECT count(*) FROM generate_series(1, %s)", (n,)).fetchone()
                said["both answered"] += 1
        except psycopg.Error as exc:
            said[exc.diag.message_primary or str(exc)] += 1
    print(f"{args.sessions:,} sessions at statement_timeout 1ms, two short counts each:")
    for message, count in said.most_common():
        print(f"  {count:6,}  {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
