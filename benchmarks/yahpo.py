"""YAHPO Gym surrogate scenarios as cheap, real-data objectives for benchmarking transfer across tasks.

A YAHPO scenario folder (``lcbench``, ``rbv2_*``, ...; data version 1.0.2, Apache-2.0) holds a surrogate
``model.onnx`` fitted to real OpenML runs, its search space (``config_space.json``), the categorical codes
(``encoding.json``) and an mlr3 ``param_set.R``. This module reads such a folder with our own code (no
``yahpo_gym`` or ConfigSpace dependency) and answers what a benchmark needs: the tasks, the search space as
Optuna distributions, the surrogate's prediction of one metric at the highest fidelity, the normalised
regret against the instance's recorded target range, and OpenML dataset qualities as task descriptors.

What the folder does not say and we therefore know here: the order of the model's outputs (``_OUTPUTS``) and
the default metric. Everything else comes from the files. The model's inputs follow ``param_set.R``'s
``domain`` order: numeric parameters (fidelities included; rbv2's ``repl`` too) form ``x_cont`` and
categorical ones form ``x_cat`` with the task parameter first. Values enter the model as the config space
holds them (no log transform); an inactive numeric parameter is 0 and an inactive categorical one takes the
``#na#`` code. That rule reproduces yahpo_gym 1.0.2's input lists for every scenario of the data release
except ``rbv2_super``/``iaml_super``, which are refused anyway (their conditions are conjunctions); on
lcbench and rbv2_xgboost our inputs and predictions equal the wheel's bit for bit. The ``iaml_`` output order
is the wheel's, not checked against a model here. ``python benchmarks/yahpo.py [DATA_DIR]`` self-checks.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

DEFAULT_DATA = Path("/work/shared/data/yahpo")
NA = "#na#"

# The model's output columns, in order, per scenario name or name prefix ("rbv2_" covers every rbv2 learner).
_OUTPUTS: dict[str, tuple[str, ...]] = {
    "lcbench": ("time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy",
                "test_cross_entropy", "test_balanced_accuracy"),
    "rbv2_": ("acc", "bac", "auc", "brier", "f1", "logloss", "timetrain", "timepredict", "memory"),
    "iaml_": ("mmce", "f1", "auc", "logloss", "ramtrain", "rammodel", "rampredict", "timetrain",
              "timepredict", "mec", "ias", "nf"),
}
_DEFAULT_METRIC: dict[str, str] = {"lcbench": "val_accuracy", "rbv2_": "acc"}


def _lookup(table: dict[str, Any], name: str) -> Any:
    """The entry for a scenario: its exact name first, then the longest matching ``prefix_`` key."""
    if name in table:
        return table[name]
    prefixes = [k for k in table if k.endswith("_") and name.startswith(k)]
    return table[max(prefixes, key=len)] if prefixes else None


@dataclass(frozen=True)
class Param:
    """One hyperparameter of the config space: bounds and scale for numbers, choices for categories."""

    name: str
    kind: Literal["float", "int", "cat"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()


# --- param_set.R: just enough of R's syntax for YAHPO's ps(name = p_xxx(..., tags = ...)) blocks ---------


def _strip_comments(text: str) -> str:
    """Drop R comments: whole comment lines, and a trailing ``#`` with no quote after it on its line."""
    return re.sub(r"#[^\"'\n]*$", "", re.sub(r"^\s*#.*$", "", text, flags=re.M), flags=re.M)


def _split_top_level(body: str) -> list[str]:
    """Split ``body`` at commas outside parentheses and string literals."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(body):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _ps_blocks(text: str) -> dict[str, list[tuple[str, str, set[str]]]]:
    """Each ``NAME = ps(...)`` block as (parameter, p_kind, tags) in declared order."""
    text = _strip_comments(text)
    blocks: dict[str, list[tuple[str, str, set[str]]]] = {}
    for m in re.finditer(r"^(\w+)\s*=\s*ps\(", text, flags=re.M):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        entries = []
        for arg in _split_top_level(text[m.end() : i - 1]):
            head = re.match(r"([\w.]+)\s*=\s*(p_\w+)\(", arg, flags=re.S)
            if head is None:
                raise ValueError(f"param_set.R: cannot read {arg[:60]!r}")
            tag_m = re.search(r"tags\s*=\s*(c\([^)]*\)|\"[^\"]*\")", arg)
            tags = set(re.findall(r"\"([^\"]*)\"", tag_m.group(1))) if tag_m else set()
            entries.append((head.group(1), head.group(2), tags))
        blocks[m.group(1)] = entries
    return blocks


# --- the model, shared by every Scenario loaded from the same file ------------------------------------------


@cache
def _session(model_path: str) -> ort.InferenceSession:
    """One single-threaded onnxruntime session per model file: benchmarks run many small batches, often in
    parallel processes, where one thread per session is faster and never oversubscribes the machine."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])


class Scenario:
    """A YAHPO scenario folder as an objective per task: see the module docstring. Build with ``load``."""

    def __init__(self, folder: Path, metric: str | None) -> None:
        self.folder = folder
        self.name = folder.name
        space = json.loads((folder / "config_space.json").read_text())
        self.encoding: dict[str, dict[str, int]] = json.loads((folder / "encoding.json").read_text())
        blocks = _ps_blocks((folder / "param_set.R").read_text())
        domain = blocks.get("domain") or blocks.get("search_space")
        if not domain or "codomain" not in blocks:
            raise ValueError(f"{folder}/param_set.R has no ps() domain and codomain blocks")
        log_tagged = {n for n, _, tags in blocks.get("search_space", []) if "log" in tags}

        self.params: dict[str, Param] = {}
        for hp in space["hyperparameters"]:
            kind = {"uniform_float": "float", "uniform_int": "int", "categorical": "cat"}.get(hp["type"])
            if kind is None:
                raise NotImplementedError(f"{self.name}: hyperparameter type {hp['type']!r} ({hp['name']})")
            if kind == "cat":
                self.params[hp["name"]] = Param(hp["name"], "cat", choices=tuple(map(str, hp["choices"])))
            else:
                log = bool(hp.get("log")) or hp["name"] in log_tagged
                self.params[hp["name"]] = Param(hp["name"], kind, hp["lower"], hp["upper"], log)

        task_params = [n for n, _, tags in domain if "task_id" in tags]
        if len(task_params) != 1:
            raise NotImplementedError(f"{self.name}: want one task_id-tagged parameter, got {task_params}")
        self.task_param: str = task_params[0]
        self.tasks: list[str] = list(self.params[self.task_param].choices)
        # Every fidelity at its highest value: the full budget a benchmark scores by default.
        self.fidelity: dict[str, float] = {n: self.params[n].high for n, _, t in domain if "budget" in t}
        self.cont_names = [n for n, kind, _ in domain if kind in ("p_dbl", "p_int")]
        self.cat_names = [self.task_param] + [
            n for n, kind, _ in domain if kind in ("p_fct", "p_lgl") and n != self.task_param
        ]
        if set(self.cont_names) | set(self.cat_names) != set(self.params):
            raise ValueError(f"{self.name}: param_set.R and config_space.json name different parameters")

        # The parameters an optimiser sets: all but the task and fidelity parameters, in domain order.
        self.space_names = [n for n, _, _ in domain if n != self.task_param and n not in self.fidelity]
        self.conditions: dict[str, tuple[str, frozenset[str]]] = {}
        for cond in space["conditions"]:
            if cond["type"] not in ("EQ", "IN"):
                raise NotImplementedError(f"{self.name}: {cond['type']} conditions are not supported")
            values = cond["values"] if cond["type"] == "IN" else [cond["value"]]
            self.conditions[cond["child"]] = (cond["parent"], frozenset(map(str, values)))
        self._order = sorted(self.params, key=self._depth)  # parents before children

        self.targets: tuple[str, ...] = _lookup(_OUTPUTS, self.name) or ()
        self.directions = {n: "maximize" in tags for n, _, tags in blocks["codomain"]}
        if not self.targets or set(self.targets) != set(self.directions):
            raise NotImplementedError(f"{self.name}: output order unknown (add it to _OUTPUTS)")
        self.metric: str = metric or _lookup(_DEFAULT_METRIC, self.name) or ""
        if self.metric not in self.targets:
            raise ValueError(f"{self.name}: metric {self.metric!r} not among {self.targets}")
        self.maximize: bool = self.directions[self.metric]

        inputs = {i.name: i.shape[1] for i in self.session.get_inputs()}
        if inputs != {"x_cont": len(self.cont_names), "x_cat": len(self.cat_names)}:
            raise ValueError(f"{self.name}: model inputs {inputs} do not match the parameter lists")
        self._ranges: dict[tuple[str, str], tuple[float, float]] | None = None
        self._qualities: dict[str, dict[str, float]] | None = None

    @classmethod
    def load(cls, folder: str | Path, metric: str | None = None) -> Scenario:
        """Read a scenario folder; the scenario's name is the folder's. ``metric`` defaults to
        ``val_accuracy`` (lcbench) or ``acc`` (rbv2_*); any target of the scenario may be chosen."""
        return cls(Path(folder).resolve(), metric)

    def __repr__(self) -> str:
        return f"Scenario({self.name!r}, metric={self.metric!r}, {len(self.tasks)} tasks)"

    @property
    def session(self) -> ort.InferenceSession:
        """The scenario's onnxruntime session (cached per model file)."""
        return _session(str(self.folder / "model.onnx"))

    # --- search space ---------------------------------------------------------------------------------

    def _depth(self, name: str) -> int:
        return 0 if name not in self.conditions else 1 + self._depth(self.conditions[name][0])

    def distributions(self) -> dict[str, BaseDistribution]:
        """The search space as Optuna distributions (log scale and integer steps as the config space says).
        Conditional parameters are included; ``conditions`` and ``active`` say when they matter."""
        out: dict[str, BaseDistribution] = {}
        for name in self.space_names:
            p = self.params[name]
            if p.kind == "cat":
                out[name] = CategoricalDistribution(p.choices)
            elif p.kind == "int":
                out[name] = IntDistribution(int(p.low), int(p.high), log=p.log)
            else:
                out[name] = FloatDistribution(p.low, p.high, log=p.log)
        return out

    def active(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` without the parameters whose condition fails (or whose parent is itself inactive);
        keys that are not conditional pass through untouched."""
        live = {n for n in self._order if n not in self.conditions}
        for name in self._order:
            if name in self.conditions:
                parent, allowed = self.conditions[name]
                if parent in live and str(params.get(parent)) in allowed:
                    live.add(name)
        return {k: v for k, v in params.items() if k in live or k not in self.params}

    def sample_random(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """``n`` uniform random configurations (log-uniform where log scale), active parameters only: every
        parameter is drawn, then the inactive ones are dropped."""
        configs = []
        for _ in range(n):
            cfg: dict[str, Any] = {}
            for name in self.space_names:
                p = self.params[name]
                if p.kind == "cat":
                    cfg[name] = p.choices[rng.integers(len(p.choices))]
                elif p.kind == "int" and p.log:  # log-uniform on [low - .5, high + .5], rounded (as Optuna)
                    x = math.exp(rng.uniform(math.log(p.low - 0.5), math.log(p.high + 0.5)))
                    cfg[name] = int(min(max(round(x), p.low), p.high))
                elif p.kind == "int":
                    cfg[name] = int(rng.integers(int(p.low), int(p.high) + 1))
                elif p.log:
                    x = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
                    cfg[name] = min(max(x, p.low), p.high)
                else:
                    cfg[name] = float(rng.uniform(p.low, p.high))
            configs.append(self.active(cfg))
        return configs

    # --- the surrogate ------------------------------------------------------------------------------------

    def encode(
        self, task: str, configs: list[dict[str, Any]], fidelity: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's inputs (x_cont float32, x_cat int32) for ``configs`` on ``task``. Inactive values are
        dropped first; a missing active parameter, an unknown name or category, a value out of bounds, or a
        task/fidelity parameter inside a config raises ``ValueError``. ``fidelity`` overrides the highest."""
        task = str(task)
        if task not in self.tasks:
            raise ValueError(f"{self.name}: unknown task {task!r}")
        fixed = {self.task_param: task, **self.fidelity, **(fidelity or {})}
        x_cont = np.zeros((len(configs), len(self.cont_names)), dtype=np.float32)
        x_cat = np.zeros((len(configs), len(self.cat_names)), dtype=np.int32)
        for row, params in enumerate(configs):
            bad = [k for k in params if k not in self.space_names]
            if bad:
                raise ValueError(f"{self.name}: not search-space parameters (task, fidelity go apart): {bad}")
            values = {**self.active(params), **fixed}
            missing = [k for k in self.active({n: values.get(n) for n in self.params}) if k not in values]
            if missing:
                raise ValueError(f"{self.name}: active parameters missing: {missing}")
            for j, name in enumerate(self.cont_names):
                x_cont[row, j] = self._number(name, values[name]) if name in values else 0.0
            for j, name in enumerate(self.cat_names):
                x_cat[row, j] = self._code(name, str(values[name]) if name in values else NA)
        return x_cont, x_cat

    def _number(self, name: str, value: Any) -> float:
        p = self.params[name]
        x = float(round(value)) if p.kind == "int" else float(value)
        if not p.low - 1e-9 * abs(p.low) <= x <= p.high + 1e-9 * abs(p.high):
            raise ValueError(f"{self.name}: {name}={value} outside [{p.low}, {p.high}]")
        return x

    def _code(self, name: str, value: str) -> int:
        if value != NA and value not in self.params[name].choices:
            raise ValueError(f"{self.name}: {name}={value!r} not among {self.params[name].choices}")
        return self.encoding[name][value]

    def predict(
        self, task: str, configs: list[dict[str, Any]], fidelity: dict[str, float] | None = None
    ) -> np.ndarray:
        """Every target (columns in ``targets`` order) for each config, one batched model call."""
        if not configs:
            return np.zeros((0, len(self.targets)), dtype=np.float32)
        x_cont, x_cat = self.encode(task, configs, fidelity)
        return self.session.run(None, {"x_cont": x_cont, "x_cat": x_cat})[0]

    def evaluate_many(self, task: str, configs: list[dict[str, Any]]) -> np.ndarray:
        """The metric at the highest fidelity for each config (float64 array). The model runs in float32, and
        its result for a config can move in the last digits with the batch it is in (up to ~3e-6 relative):
        score a config in the same batch shape when exact repeats matter."""
        return self.predict(task, configs)[:, self.targets.index(self.metric)].astype(np.float64)

    def evaluate(self, task: str, params: dict[str, Any]) -> float:
        """The surrogate's metric for one config at the highest fidelity."""
        return float(self.evaluate_many(task, [params])[0])

    # --- target ranges and regret -------------------------------------------------------------------------

    def _stats_file(self) -> Path:
        for path in (self.folder.parent / "instance_target_statistics.csv",
                     self.folder.parent / "global_statistics" / "instance_target_statistics.csv",
                     self.folder / "instance_target_statistics.csv"):
            if path.is_file():
                return path
        raise FileNotFoundError(f"no instance_target_statistics.csv beside or above {self.folder}")

    def target_range(self, task: str) -> tuple[float, float]:
        """(min, max) of the metric for ``task`` over YAHPO's random search, from the long-format
        ``instance_target_statistics.csv`` (columns metric, statistic, value, scenario, instance)."""
        if self._ranges is None:
            lows: dict[tuple[str, str], float] = {}
            highs: dict[tuple[str, str], float] = {}
            with self._stats_file().open(newline="") as fh:
                for rec in csv.DictReader(fh):
                    if rec["scenario"] == self.name:
                        key = (rec["instance"], rec["metric"])
                        {"min": lows, "max": highs}[rec["statistic"]][key] = float(rec["value"])
            self._ranges = {k: (lows[k], highs[k]) for k in lows.keys() & highs.keys()}
        key = (str(task), self.metric)
        if key not in self._ranges:
            raise KeyError(f"{self.name}: no target statistics for task {task!r}, metric {self.metric!r}")
        return self._ranges[key]

    def regret(self, task: str, value: float) -> float:
        """Normalised regret: 0 at the instance's recorded best, 1 at its worst; better than the best gives 0
        (clipped), worse than the worst gives more than 1 (not clipped)."""
        low, high = self.target_range(task)
        gap = float(high - value if self.maximize else value - low)
        return max(gap / (high - low), 0.0) if high > low else float(gap > 0)

    # --- task descriptors -----------------------------------------------------------------------------------

    def descriptors(self, task: str) -> dict[str, float] | None:
        """OpenML dataset qualities for ``task`` from ``dataset_qualities.csv`` (keyed by ``openmlid``), or
        None where the folder has no such file or the dataset has no row. Columns that are not numeric or
        are empty for every dataset are dropped; a quality missing for this dataset is NaN, so that every
        dict of a scenario has the same keys."""
        if self._qualities is None:
            path = self.folder / "dataset_qualities.csv"
            self._qualities = {}
            if path.is_file():
                with path.open(newline="") as fh:
                    rows = list(csv.DictReader(fh))
                columns = list(rows[0]) if rows else []
                keep = [c for c in columns if c != "openmlid" and _numeric_column(r[c] for r in rows)]
                for r in rows:
                    self._qualities[r["openmlid"]] = {c: float(r[c]) if r[c].strip() else math.nan
                                                      for c in keep}
        return self._qualities.get(str(task))


def _numeric_column(cells: Any) -> bool:
    """True when every non-empty cell parses as a number and at least one cell is non-empty."""
    seen = False
    for cell in cells:
        if cell.strip():
            try:
                float(cell)
            except ValueError:
                return False
            seen = True
    return seen


def _self_check(data: Path) -> None:
    """Print what each scenario offers and a few evaluations, as a quick look at the data and the model."""
    rng = np.random.default_rng(0)
    for name in ("lcbench", "rbv2_xgboost"):
        sc = Scenario.load(data / name)
        print(f"{sc}: maximize={sc.maximize}, fidelity={sc.fidelity}, targets={sc.targets}")
        for pname, dist in sc.distributions().items():
            cond = sc.conditions.get(pname)
            print(f"  {pname}: {dist}" + (f"  [if {cond[0]} in {sorted(cond[1])}]" if cond else ""))
        with_desc = sum(sc.descriptors(t) is not None for t in sc.tasks)
        print(f"  tasks with descriptors: {with_desc}/{len(sc.tasks)}")
        configs = sc.sample_random(rng, 3)
        for task in sc.tasks[:2]:
            values = sc.evaluate_many(task, configs)
            low, high = sc.target_range(task)
            regrets = [round(sc.regret(task, v), 3) for v in values]
            print(f"  task {task}: range [{low:.4g}, {high:.4g}], {sc.metric} {np.round(values, 4)}, "
                  f"regret {regrets}")


if __name__ == "__main__":
    _self_check(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA)
