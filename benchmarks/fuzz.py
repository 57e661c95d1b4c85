"""Garbage run records, as foreign histories produce them: wrong types, text PostgreSQL cannot hold,
numbers float64 cannot hold, deep nesting, long keys, broken JSON. Each line is JSON text (or not JSON at
all), so that a file of them goes through import exactly as a user's would. Seeded: deterministic."""

from __future__ import annotations

import json
import random
from typing import Any

KINDS = ("nul", "surrogate", "big_int", "deep", "long_key", "bad_id", "bad_date", "bad_branch", "bad_list",
         "not_json", "not_object", "odd_but_valid", "huge_float_text", "empty_branches")


def _garbage_value(rng: random.Random, kind: str) -> Any:
    if kind == "nul":
        return "x\x00y"
    if kind == "surrogate":
        return rng.choice(["\ud800", "a\udfffb", "\udbff"])
    if kind == "big_int":
        return rng.choice([10**400, -(10**309), 2**1100])
    if kind == "deep":
        value: Any = 1.0
        for _ in range(rng.randint(17, 40)):
            value = {"n": value}
        return value
    if kind == "bad_list":
        return [1.0, rng.choice(["a", None, {"x": 1}, True])]
    if kind == "odd_but_valid":
        return rng.choice([0, -0.0, 1e-300, 1e300, 2**60, "", "ünïcødé ✓", True, None, [], [1, 2.5],
                           "nan", "inf", "1e400", {"nested": {"deeper": "ok"}}])
    return rng.random()


def garbage_line(rng: random.Random, index: int) -> tuple[str, str]:
    """(kind, line): one bad or odd record, run_id prefixed so it never collides with good ones."""
    kind = rng.choice(KINDS)
    run_id: Any = f"fuzz-{index:06d}"
    record: dict[str, Any] = {"run_id": run_id, "as_of_date": f"20{rng.randint(10, 24)}-0{rng.randint(1, 9)}-1{index % 10}",
                              "config": {"a": rng.random()}, "env": {"vol": rng.random()}, "outcome": {"sharpe": rng.gauss(0, 1)}}
    branch = rng.choice(["config", "env", "outcome"])
    if kind == "not_json":
        return kind, rng.choice(['{"run_id": "x", ', "not json at all", "[1, 2", '{"run_id": NaN}'])
    if kind == "not_object":
        return kind, json.dumps(rng.choice([[1, 2], "a string", 42, None]))
    if kind == "bad_id":
        record["run_id"] = rng.choice([None, "", 1.5, {"id": 1}, [1], True, "r\x00", "x" * 600])
    elif kind == "bad_date":
        record["as_of_date"] = rng.choice([None, "", "yesterday", "2024-13-45", 20240101, {"d": 1}])
    elif kind == "bad_branch":
        record[branch] = rng.choice([[1, 2], "text", 3, True])
    elif kind == "long_key":
        record[branch]["k" * rng.randint(257, 1000)] = 1.0
    elif kind == "empty_branches":
        for name in ("config", "env", "outcome"):
            record.pop(name)
    elif kind == "huge_float_text":
        return kind, json.dumps(record)[:-1] + ', "extra_number": 1e400}'
    else:
        key = rng.choice(["x", "nested"])
        record[branch][key] = _garbage_value(rng, kind)
        if kind in ("nul", "surrogate") and rng.random() < 0.3:
            record[branch] = {_garbage_value(rng, kind): 1.0}
    return kind, json.dumps(record)


def good_line(rng: random.Random, index: int) -> str:
    return json.dumps({
        "run_id": f"good-{index:06d}", "as_of_date": f"20{10 + index % 14}-0{1 + index % 9}-1{index % 10}",
        "config_id": f"cfg-{index % 41}", "strategy_id": f"strat-{index % 5}",
        "config": {"lookback": 10 + index % 90, "mode": rng.choice(["fast", "slow"]), "risk": {"vol": rng.random()}},
        "env": {"vol": rng.random(), "trend": rng.gauss(0, 1), "regime": {"bull": 0.5, "bear": 0.5}},
        "outcome": {"sharpe": rng.gauss(0.3, 1), "max_drawdown": -rng.random()},
    })


def mixed_lines(n_garbage: int, n_good: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(lines in file order, the kinds of the garbage lines, the good run ids)."""
    rng = random.Random(seed)
    garbage = [garbage_line(rng, i) for i in range(n_garbage)]
    good = [good_line(rng, i) for i in range(n_good)]
    lines = [line for _, line in garbage] + good
    rng.shuffle(lines)
    return lines, [kind for kind, _ in garbage], [f"good-{i:06d}" for i in range(n_good)]
