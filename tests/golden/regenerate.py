"""Rewrite the golden files of tests/test_golden_vectors.py: the fitted state, the records, their vectors.

    python tests/golden/regenerate.py

Regenerating is only allowed together with a FORMAT_VERSION bump (metaspace/encoders/branch.py). The
golden vectors are the promise that a registered encoder version gives the same vector for the same
record forever: if a code change moves one of them, that change must bump the format version (so that
old states are refused and `metaspace embed-runs --rebuild` fits a new one), and only then may these
files be rewritten. Rewriting them to make a failing golden test pass breaks that promise silently.
"""

from __future__ import annotations

import base64
import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
STATE = HERE / "state.json"
RECORDS = HERE / "records.json"
VECTORS = HERE / "vectors.json"
SPACES = ("joint", "config", "env", "outcome")


def history() -> list[dict[str, Any]]:
    """sample_runs(400, seed=3), plus keys of every kind the sample lacks: a boolean with nulls, a list of
    varying length, a category mixing numbers and strings, a heavy-tailed number that is sometimes null."""
    from metaspace.sample import sample_runs

    runs = sample_runs(400, seed=3)
    for i, run in enumerate(runs):
        run["config"]["use_stop"] = None if i % 17 == 0 else i % 3 == 0
        run["config"]["universe_tag"] = [500, "SPX", "NDX", 2000, "RARE"][i % 5] if i % 97 else "ONCE"
        run["env"]["term_structure"] = [round(0.01 * ((i * k) % 13) - 0.05, 4) for k in range(1, 2 + i % 4)]
        run["outcome"]["calmar"] = None if i % 11 == 0 else round((-1) ** i * 1.7 ** (i % 23) / 50, 6)
        run.pop("sim", None)
    return runs


def records(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Forty records: plain ones from the history, then every kind of leaf the encoders meet."""
    base = [copy.deepcopy(runs[i]) for i in range(0, 400, 20)]  # 20 plain runs
    out = [{k: r[k] for k in ("run_id", "as_of_date", "config", "env", "outcome")} for r in base]
    template = out[0]

    def variant(name: str, edit) -> None:
        record = copy.deepcopy(template)
        record["run_id"] = f"GOLDEN_{name}"
        edit(record)
        out.append(record)

    variant("unseen_category", lambda r: r["config"].update(rebalance="hourly", strategy="carry"))
    variant("number_as_category", lambda r: r["config"].update(universe_tag=2000))
    variant("bool_as_category", lambda r: r["config"].update(universe_tag=True))
    variant("nulls", lambda r: r["env"].update(realized_vol=None, drawdown=None, universe={"market": None}))
    variant("missing_keys", lambda r: [r["outcome"].pop(k) for k in ("sharpe", "cagr", "calmar")])
    variant("missing_branch_env", lambda r: r.pop("env"))
    variant("empty_outcome", lambda r: r.update(outcome={}))
    variant("all_missing", lambda r: r.update(config=None, env={}, outcome=None))
    variant("absurd_numbers", lambda r: r["outcome"].update(sharpe=1e12, cagr=-1e300, turnover=0))
    variant("ints_for_floats", lambda r: r["env"].update(realized_vol=1, autocorr_1d=0, drawdown=-1))
    variant("nan_and_inf", lambda r: r["outcome"].update(sharpe=float("nan"), cagr=float("inf")))
    variant("bool_as_number", lambda r: r["outcome"].update(sharpe=True))
    variant("number_as_bool", lambda r: r["config"].update(use_stop=1))
    variant("short_list", lambda r: r["env"].update(term_structure=[0.2]))
    variant("long_list", lambda r: r["env"].update(term_structure=[0.1 * k for k in range(30)]))
    variant("scalar_for_list", lambda r: r["env"].update(term_structure=0.03))
    variant("nested_deeper", lambda r: r["env"].update(universe={"n_assets": 50, "extra": {"a": {"b": 1}}}))
    variant("unseen_keys", lambda r: r["config"].update(brand_new=3, risk={"target_vol": 0.2, "new": "x"}))
    variant("string_for_number", lambda r: r["env"].update(realized_vol="high"))  # an EncodingError
    variant("string_in_list", lambda r: r["env"].update(term_structure=[0.1, "x"]))  # an EncodingError
    return out


def encode_array(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"dtype": "<f4", "shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(spec: dict[str, Any]) -> np.ndarray:
    assert spec["dtype"] == "<f4"
    return np.frombuffer(base64.b64decode(spec["data"]), dtype="<f4").reshape(spec["shape"])


def encode(space, runs: list[dict[str, Any]]):
    from metaspace.encoders import SchemaDriftWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaDriftWarning)
        return space.encode(runs)


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from metaspace.encoders import MetaSpace
    from metaspace.encoders.branch import FORMAT_VERSION

    runs = history()
    space = MetaSpace().fit(runs)
    golden = records(runs)
    encoded = encode(space, golden)
    STATE.write_text(json.dumps(space.to_dict(), sort_keys=True, allow_nan=False) + "\n")
    RECORDS.write_text(json.dumps(golden, indent=1) + "\n")  # NaN and Infinity: Python's JSON reads them
    VECTORS.write_text(json.dumps({
        "format_version": FORMAT_VERSION,
        "fingerprint": space.fingerprint_,
        "errors": {golden[i]["run_id"]: error.field for i, error in sorted(encoded.errors.items())},
        "vectors": {name: encode_array(vectors) for name, vectors in encoded.vectors().items()},
    }, indent=1) + "\n")
    print(f"wrote {STATE.name}, {RECORDS.name} ({len(golden)} records), {VECTORS.name}; "
          f"format {FORMAT_VERSION}, fingerprint {space.fingerprint_[:12]}, {len(encoded.errors)} errors")


if __name__ == "__main__":
    main()
