"""A newcomer's first hour (issue 27), replayed: the README's tour, exactly as written, on a fresh machine.

    python benchmarks/first_hour.py                 # the tour on an Optuna storage, then on an MLflow store
    python benchmarks/first_hour.py --only optuna --keep

For each kind of history, in a fresh temporary folder with a fresh ``METASPACE_HOME`` (and no
``METASPACE_DATABASE_URL``: the embedded default, created by the tour's first command), it builds the history
with the library itself, then runs the README's tour as a user pastes it:

- **Optuna**: ``optuna.db``, a SQLite storage of six studies, one dataset each (the study's user attributes
  ``n_samples`` and ``n_features`` are its environment; ``study.set_metric_names(["accuracy"])``), each
  searched by TPE over ``lr``, ``max_depth`` and ``booster``, its first trials warm-started with the best
  configs of the studies before it, and dated two weeks apart (``optuna.copy_study`` from the in-memory study
  the sampler ran, with each trial's dates set to its study's day);
- **MLflow**: ``mlflow.db``, a SQLite tracking store of five experiments, one dataset each (tags
  ``env.n_samples``, ``env.n_features``), each a grid search of 16 configs logged with ``MlflowClient``:
  params as text, metrics ``accuracy`` and ``train_seconds``, a ``team`` tag, start and end times on the
  experiment's day.

The tour is every fenced block between ``<!-- tour -->`` and ``<!-- /tour -->`` in README.md: ``bash`` lines run
one by one (a here-document with its body) in a shell whose folder is the temporary one, skipping the import
line of the other kind of history; ``sql`` blocks run through ``psql "$(metaspace db url)"`` (psycopg where
psql is missing); ``python`` blocks run with this interpreter. ``metaspace`` and ``python`` are this
interpreter's, as in the activated environment the README asks for. Each must exit 0 with no traceback, and
an answer that is empty (``(no rows)``, ``(0 rows)``, ``[]``, ``(no proposals``, ``0 decision``) must come with
a ``note:`` line saying why. docs/tour.md must hold the same tour. Prints one row per command (seconds, exit
code, what was answered) and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DAY0 = dt.date(2025, 1, 6)
# The datasets the histories were run on: (name, n_samples, n_features). The tour's task.json is near "census".
DATASETS = [("credit", 30_000, 24), ("census", 48_842, 14), ("churn", 7_043, 20), ("higgs", 250_000, 28),
            ("spam", 4_601, 57), ("covtype", 581_012, 54)]
EMPTY = ("(no rows)", "(no proposals", "0 decision")


# -- the histories, built by the libraries themselves -----------------------------------------------------------

def accuracy(lr: float, max_depth: int, booster: str, n_samples: int, n_features: int, noise: float) -> float:
    """A stand-in for training a model: the best learning rate falls with the data's size, the best depth grows
    with its width, and dart is a little better on small data."""
    best_lr = -1.0 - 0.45 * math.log10(n_samples / 1000)
    best_depth = 2.0 + 2.5 * math.log10(n_features)
    score = (0.93 - 0.04 * (math.log10(lr) - best_lr) ** 2 - 0.003 * (max_depth - best_depth) ** 2
             + (0.01 if booster == "dart" and n_samples < 20_000 else 0.0) - 0.02 * math.log10(n_features / 10))
    return round(min(0.999, score + noise), 5)


def build_optuna(folder: Path) -> str:
    import numpy as np
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # set_metric_names
    storage = f"sqlite:///{folder / 'optuna.db'}"
    best: list[dict] = []
    for k, (name, n_samples, n_features) in enumerate(DATASETS):
        rng = np.random.default_rng(k)
        day = dt.datetime.combine(DAY0 + dt.timedelta(days=14 * k), dt.time(17), dt.timezone.utc)

        def objective(trial: optuna.Trial, n_samples: int = n_samples, n_features: int = n_features,
                      rng: np.random.Generator = rng) -> float:
            lr = trial.suggest_float("lr", 1e-4, 0.3, log=True)
            depth = trial.suggest_int("max_depth", 2, 12)
            booster = trial.suggest_categorical("booster", ["gbtree", "dart"])
            return accuracy(lr, depth, booster, n_samples, n_features, float(rng.normal(0, 0.003)))

        ran = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=k))
        for params in best[-3:]:  # a team's warm start: the best configs of the studies before
            ran.enqueue_trial(params)
        ran.optimize(objective, n_trials=30)
        best.append(ran.best_params)
        ran.set_metric_names(["accuracy"])
        ran.set_user_attr("n_samples", n_samples)
        ran.set_user_attr("n_features", n_features)
        study = optuna.create_study(study_name=f"xgb-{name}", storage=storage, direction="maximize")
        study.set_metric_names(["accuracy"])
        for key, value in ran.user_attrs.items():
            study.set_user_attr(key, value)
        for i, trial in enumerate(ran.trials):  # the study as it ran, on its own day
            trial.datetime_start = day + dt.timedelta(minutes=2 * i)
            trial.datetime_complete = trial.datetime_start + dt.timedelta(minutes=1)
            study.add_trial(trial)
    return storage


def build_mlflow(folder: Path) -> str:
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    grid = [(lr, depth, booster) for lr in (0.003, 0.01, 0.03, 0.1) for depth in (3, 6, 9)
            for booster in ("gbtree", "dart")]
    for k, (name, n_samples, n_features) in enumerate(DATASETS[:5]):
        rng = np.random.default_rng(100 + k)
        experiment = client.create_experiment(f"grid-{name}", artifact_location=(folder.resolve() / "mlruns" / name).as_uri())
        day = dt.datetime.combine(DAY0 + dt.timedelta(days=10 * k), dt.time(9), dt.timezone.utc)
        for i in rng.choice(len(grid), size=16, replace=False):
            lr, depth, booster = grid[int(i)]
            start = int((day + dt.timedelta(minutes=5 * int(i))).timestamp() * 1000)
            run = client.create_run(experiment, start_time=start, tags={
                "env.n_samples": str(n_samples), "env.n_features": str(n_features), "team": "ml-platform"})
            end = start + 240_000
            client.log_batch(run.info.run_id, params=[
                Param("lr", str(lr)), Param("max_depth", str(depth)), Param("booster", booster)], metrics=[
                Metric("accuracy", accuracy(lr, depth, booster, n_samples, n_features, float(rng.normal(0, 0.003))),
                       end, 0),
                Metric("train_seconds", round(float(n_samples) * depth / 2e4 / lr ** 0.3, 2), end, 0)])
            client.set_terminated(run.info.run_id, status="FINISHED", end_time=end)
    return uri


# -- the tour, as the README writes it -----------------------------------------------------------------------

@dataclass
class Step:
    kind: str  # bash, sql or python
    text: str


def tour_steps(readme: Path = README) -> list[Step]:
    """The tour's commands, in order: each line of a bash block (a here-document whole), each sql and python
    block whole, from the fenced blocks between <!-- tour --> and <!-- /tour -->."""
    text = readme.read_text()
    found = re.search(r"<!-- tour -->(.*?)<!-- /tour -->", text, re.S)
    if not found:
        raise SystemExit(f"{readme}: no <!-- tour --> ... <!-- /tour --> section")
    steps = []
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", found.group(1), re.S | re.M):
        if lang in ("sql", "python"):
            steps.append(Step(lang, body))
            continue
        lines = iter(body.splitlines())
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            heredoc = re.search(r"<<\s*'?(\w+)'?", line)
            if heredoc:
                rest = []
                for more in lines:
                    rest.append(more)
                    if more.strip() == heredoc.group(1):
                        break
                line = "\n".join([line, *rest])
            steps.append(Step("bash", line))
    return steps


def shown(step: Step) -> str:
    if step.kind == "bash":
        first = step.text.splitlines()[0]
        return re.sub(r"\s+#.*$", "", first) + (" ..." if "\n" in step.text else "")
    first = next(line for line in step.text.splitlines() if line.strip() and not line.startswith(("import", "#")))
    return f"[{step.kind}] {first.strip()[:60]}"


@dataclass
class Outcome:
    step: Step
    seconds: float
    code: int
    answer: str
    problem: str | None


def judge(step: Step, code: int, out: str, err: str) -> tuple[str, str | None]:
    """What the command answered, and what is wrong with it (None: nothing)."""
    both = out + "\n" + err
    notes = [line for line in both.splitlines() if line.startswith("note:")]
    if code != 0:
        return f"exit {code}", f"exit code {code}: {(err.strip() or out.strip()).splitlines()[-1:]}"
    if "Traceback (most recent call last)" in both:
        return "traceback", "a traceback"
    empty = [marker for marker in EMPTY if marker in out] + (["[]"] if re.search(r"^\[\]$", out, re.M) else [])
    if re.search(r"^\(0 rows\)$", out, re.M):
        empty.append("(0 rows)")
    if empty:
        if notes:
            return f"empty, with the reason: {notes[-1][6:].strip()[:70]}", None
        return f"empty: {empty[0]}", f"an empty answer ({empty[0]}) with no note: saying why"
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        return "done (no output)" + (f", {len(notes)} notes" if notes else ""), None
    return f"answered ({len(lines)} lines{f', {len(notes)} notes' if notes else ''})", None


def run_tour(kind: str, other: str, folder: Path, env: dict[str, str], steps: list[Step],
             verbose: bool) -> list[Outcome]:
    outcomes = []
    for step in steps:
        if step.kind == "bash" and f"metaspace import-{other}" in step.text:
            continue  # the other kind of history's import line
        if step.kind == "bash":
            argv = ["bash", "-c", step.text]
        elif step.kind == "sql":
            url = subprocess.run(["metaspace", "db", "url"], cwd=folder, env=env, capture_output=True,
                                 text=True).stdout.strip()
            argv = (["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-c", step.text] if shutil.which("psql") else
                    [sys.executable, "-c", "import psycopg, sys\nwith psycopg.connect(sys.argv[1]) as c:\n"
                     "    cur = c.execute(sys.argv[2]); rows = cur.fetchall()\n"
                     "    print(*rows, sep='\\n') if rows else print('(0 rows)')", url, step.text])
        else:
            argv = [sys.executable, "-c", step.text]
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        answer, problem = judge(step, done.returncode, done.stdout, done.stderr)
        outcomes.append(Outcome(step, seconds, done.returncode, answer, problem))
        if verbose or problem:
            print(f"\n$ {step.text}\n--- stdout\n{done.stdout.rstrip()}\n--- stderr\n{done.stderr.rstrip()}\n",
                  flush=True)
    return outcomes


def table(kind: str, outcomes: list[Outcome]) -> str:
    rows = [("command", "s", "exit", "answer")]
    rows += [(shown(o.step)[:78], f"{o.seconds:.1f}", str(o.code), o.answer + (f"  <-- {o.problem}" if o.problem
                                                                                 else "")) for o in outcomes]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{kind}:"] + ["  " + "  ".join(r[i].ljust(width[i]) for i in range(3)) + "  " + r[3] for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["optuna", "mlflow"], help="one kind of history only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (and stop nothing)")
    parser.add_argument("--verbose", action="store_true", help="print every command's output")
    args = parser.parse_args()
    steps = tour_steps()
    if tour_steps(ROOT / "docs" / "tour.md") != steps:
        print("docs/tour.md's tour is not the README's: copy the code blocks between <!-- tour --> and <!-- /tour -->")
        return 1
    kinds = [args.only] if args.only else ["optuna", "mlflow"]
    failed, reports = False, []
    for kind in kinds:
        other = "mlflow" if kind == "optuna" else "optuna"
        folder = Path(tempfile.mkdtemp(prefix=f"metaspace-first-hour-{kind}-"))
        env = {k: v for k, v in os.environ.items()
               if k not in ("METASPACE_DATABASE_URL", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
        env.update(METASPACE_HOME=str(folder / "home"), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                   PYTHONWARNINGS="ignore::DeprecationWarning")
        started = time.perf_counter()
        (build_optuna if kind == "optuna" else build_mlflow)(folder)
        built = time.perf_counter() - started
        print(f"{kind}: history built in {built:.1f} s in {folder}", flush=True)
        try:
            outcomes = run_tour(kind, other, folder, env, steps, args.verbose)
        finally:
            if not args.keep:
                subprocess.run(["metaspace", "db", "stop"], cwd=folder, env=env, capture_output=True)
                shutil.rmtree(folder, ignore_errors=True)
        reports.append(table(kind, outcomes))
        failed |= any(o.problem for o in outcomes)
        print(reports[-1], flush=True)
    bad = sum(1 for report in reports for line in report.splitlines() if "<--" in line)
    print(f"\n{'FAILED' if failed else 'passed'}: {bad} problem(s) in "
          f"{sum(len(r.splitlines()) - 2 for r in reports)} commands")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
