"""Encoder throughput: records/s for the joint encode, next to flattening alone (the limit).

    python benchmarks/bench_encoders.py [--n 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from synthetic import synthetic_runs  # noqa: E402

from metaspace.encoders import MetaSpace  # noqa: E402
from metaspace.encoders.features import flatten  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    runs = synthetic_runs(args.n)
    leaves = sum(len(flatten(runs[0][b])) for b in ("config", "env", "outcome")) / 3
    t0 = time.perf_counter()
    space = MetaSpace().fit(runs[: min(len(runs), 20_000)])
    fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for run in runs:
        for branch in ("config", "env", "outcome"):
            flatten(run[branch])
    flatten_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, len(runs), 10_000):
        space.encode(runs[start : start + 10_000])
    encode_s = time.perf_counter() - t0

    print(f"records: {args.n}, leaves per branch: {leaves:.0f}, fit on 20k: {fit_s:.2f} s")
    print(f"flatten only : {args.n / flatten_s:10.0f} records/s  (the limit)")
    print(f"full encode  : {args.n / encode_s:10.0f} records/s  ratio to flatten-only limit: {encode_s / flatten_s:.2f}x")


if __name__ == "__main__":
    main()
