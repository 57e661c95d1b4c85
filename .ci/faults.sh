#!/usr/bin/env bash
# Faults stage: tests/test_faults.py with its server faults on (METASPACE_FAULT_TESTS=1): the embedded server's
# postmaster SIGKILLed at a seeded point of import-runs, embed-runs and evaluate --save-calibration (each then
# rerun to exact counts, metaspace db check clean), killed and restarted at once, and a full disk under an import
# on a small tmpfs (skipped, saying why, where one cannot be mounted). Each starts embedded servers of its own, so
# they stay out of the README's suite. benchmarks/bench_faults.py runs ten kills of each. Extra arguments go to
# pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || { echo "SKIP faults: no .venv here (run .ci/run first)"; exit 0; }
METASPACE_FAULT_TESTS=1 .venv/bin/pytest -q -p no:cacheprovider -ra tests/test_faults.py "$@"
