#!/usr/bin/env bash
# Citus stage: a local cluster (a coordinator and two workers) built from the vendored Citus tarball against the
# embedded server (metaspace db cluster start; the build is kept under METASPACE_HOME/citus-build and reused),
# then the tests marked citus against its coordinator (tests/test_citus.py): migrate distributes the tables,
# imports land once across the shards, a shard moves under writes with no run lost. Skips, saying why, where the
# tarball or a compiler is missing. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || { echo "SKIP citus: no .venv here (run .ci/run first)"; exit 0; }
tarball=../shared/vendor/citus-14.0.1.tar.gz
[ -f "$tarball" ] || { echo "SKIP citus: no Citus source at $tarball"; exit 0; }
for tool in make gcc; do
    command -v "$tool" >/dev/null || { echo "SKIP citus: no $tool here to build Citus with"; exit 0; }
done
url=$(.venv/bin/metaspace db cluster start --citus-source "$tarball" --workers 2) || exit 1
trap '.venv/bin/metaspace db cluster stop >/dev/null' EXIT
METASPACE_CITUS_URL="$url" .venv/bin/pytest -q -p no:cacheprovider -ra -m citus tests/test_citus.py "$@"
