"""Synthetic run records for benchmarks: ~40 leaves per branch, nested, with conditional keys."""

from __future__ import annotations

import numpy as np


def synthetic_runs(n: int, seed: int = 0, leaves: int = 40) -> list[dict]:
    rng = np.random.default_rng(seed)
    numeric = rng.standard_normal((n, 3, leaves))
    families = rng.choice(["trend", "meanrev", "carry"], n)
    runs = []
    for i in range(n):
        branches = {}
        for b, name in enumerate(("config", "env", "outcome")):
            values = numeric[i, b]
            branch = {f"group{j % 5}": {f"p{j}": float(values[j]) for j in range(j0, j0 + 6)}
                      for j0 in range(0, leaves - 10, 6) for j in [j0]}
            branch["family"] = str(families[i])
            branch["flag"] = bool(values[0] > 0)
            branch["mix"] = {"a": 0.5, "b": 0.3, "c": 0.2}
            if families[i] == "trend":
                branch["trend"] = {"fast": int(abs(values[1]) * 10) + 1, "slow": int(abs(values[2]) * 100) + 20}
            branches[name] = branch
        runs.append({"run_id": f"BENCH_{seed}_{i:08d}", "config_id": f"CFG_{i % 997}",
                     "strategy_id": f"STRAT_{families[i]}", "as_of_date": f"20{10 + i % 15}-0{1 + i % 9}-1{i % 10}",
                     **branches})
    return runs
