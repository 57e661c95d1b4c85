#!/usr/bin/env bash
# Citus stage: a local cluster (a coordinator and two workers, then a third added empty, for the rebalance test)
# built from the vendored Citus tarball against the embedded server (metaspace db cluster start; the build is kept
# under METASPACE_HOME/citus-build and reused), then, against its coordinator: tests/test_citus.py (the layout,
# imports and embedding across shards, exact search as one node's, the shards' walks, suggest and evaluate as one
# node's, shards moved under imports and embedding) and the pipeline's, search's, evaluate's and importers' tests,
# each in a database of its own on the cluster (METASPACE_TESTS_ON=citus; tests marked one_node skip, saying why).
# Skips, saying why, where the tarball or a compiler is missing. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || { echo "SKIP citus: no .venv here (run .ci/run first)"; exit 0; }
tarball=../shared/vendor/citus-14.0.1.tar.gz
[ -f "$tarball" ] || { echo "SKIP citus: no Citus source at $tarball"; exit 0; }
for tool in make gcc; do
    command -v "$tool" >/dev/null || { echo "SKIP citus: no $tool here to build Citus with"; exit 0; }
done
trap '.venv/bin/metaspace db cluster stop >/dev/null' EXIT
.venv/bin/metaspace db cluster start --citus-source "$tarball" --workers 2 >/dev/null || exit 1
url=$(.venv/bin/metaspace db cluster start --workers 3) || exit 1
METASPACE_CITUS_URL="$url" METASPACE_TESTS_ON=citus .venv/bin/pytest -q -p no:cacheprovider -ra \
    tests/test_citus.py tests/test_pipeline.py tests/test_search.py tests/test_evaluate.py tests/test_optuna.py \
    tests/test_mlflow.py "$@"
