"""Is there an environment signal in the real corpora that a learned weighting could use? (issue 12's avenue
"env feature weights learned from the history", measured before building it into an encoder version.)

    python benchmarks/bench_env_weights.py                  # daily and monthly (arch), held out as bench_evaluate

For each config, a ridge regression of its objective relative to the configs tried beside it (minus their
mean: the shared market shock removed) on the standardised numeric env features, fitted walk-forward on the
runs whose outcome was known before each refit date (once a year through the held-out period: nothing
after a decision is used for it). At each held-out decision point the policy picks the config with the
highest predicted relative objective. The ridge penalty sets how far the environment may move each
config's record: a very large penalty leaves the record alone (the intercept: the config's mean relative
objective so far, as of the last refit), a small one lets every feature speak. Each penalty is printed
against the largest one of the same run (the record alone, on the study's own terms) and against the desk's
best-so-far config (best mean objective over every run known at the decision date), beside a random pick.
The other weighting a record could have, time, is measured first: each config's relative objective over
every run known at the date, with weights halving every HALF_LIFE years, before and during the held-out
period, against best-so-far; and the half-life chosen walk-forward at each decision, as v5 chooses its local
scale. No database: this measures the data, not metaspace.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

import corpora  # noqa: E402

PENALTIES = (10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)
HALF_LIVES = (20.0, 10.0, 5.0, 2.0, 1.0)
REFIT_DAYS = 365


def _numeric(env: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in env.items():
        if isinstance(value, dict):
            out.update(_numeric(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


def _frame(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[str]]:
    df = pd.DataFrame([{"point": (r["env"]["universe"]["market"], r["decision_date"]),
                        "decision": r["decision_date"], "known": r["as_of_date"], "config": r["config_id"],
                        "objective": r["outcome"]["sharpe"], **{"env:" + k: v for k, v in _numeric(r["env"]).items()}}
                       for r in records])
    df["decision"], df["known"] = pd.to_datetime(df["decision"]), pd.to_datetime(df["known"])
    features = [c for c in df.columns if c.startswith("env:")]
    df[features] = df[features].astype(float)
    df["relative"] = df["objective"] - df.groupby("point")["objective"].transform("mean")
    return df, features


def _fit(train: pd.DataFrame, features: list[str]) -> dict[str, Any]:
    x = train[features].fillna(0.0)
    centre, scale = x.mean(), x.std().replace(0.0, 1.0).fillna(1.0)
    standard = ((x - centre) / scale).fillna(0.0).to_numpy()
    models: dict[float, dict[str, tuple[float, np.ndarray]]] = {}
    for penalty in PENALTIES:
        models[penalty] = {}
        for config, rows in train.groupby("config").indices.items():
            a, y = standard[rows], train["relative"].to_numpy()[rows]
            slope = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ (y - y.mean()))
            models[penalty][config] = (float(y.mean()), slope)
    return {"centre": centre, "scale": scale, "models": models}


def recency(name: str, df: pd.DataFrame) -> list[str]:
    """The other thing a record could weigh: time. Each config's objective relative to the configs beside it,
    averaged over every run known at the decision date with weights halving every HALF_LIFE years; the pick
    is the best such record. Before and during the held-out period, against best-so-far (equal weights)."""
    held = pd.Timestamp(corpora.HELD_OUT_FROM[name])
    horizon = int((df["known"] - df["decision"]).dt.days.max())
    configs = sorted(df["config"].unique())
    index = {c: i for i, c in enumerate(configs)}
    known = df["known"].to_numpy().astype("datetime64[D]").astype(np.int64)
    order = np.argsort(known, kind="stable")
    known, relative = known[order], df["relative"].to_numpy()[order]
    objective, which = df["objective"].to_numpy()[order], df["config"].map(index).to_numpy()[order]
    picks: dict[tuple[str, float | None | str], list[float]] = {}
    realised: list[tuple[int, int, np.ndarray]] = []  # (outcome known, decided, each half-life's pick's objective)
    for _, point in sorted(df.groupby("point"), key=lambda item: item[1]["decision"].iloc[0]):
        day = point["decision"].iloc[0]
        today = int(np.datetime64(day, "D").astype(np.int64))
        end = int(np.searchsorted(known, today, side="right"))
        if end == 0:
            continue
        part = "held out" if day >= held else "before"
        values = dict(zip(point["config"], point["objective"]))
        age = (today - known[:end]) / 365.25
        mine = []
        for half_life in (None, *HALF_LIVES):
            weight = np.ones(end) if half_life is None else 0.5 ** (age / half_life)
            scored = objective[:end] if half_life is None else relative[:end]
            total = np.bincount(which[:end], weights=weight * scored, minlength=len(configs))
            mass = np.bincount(which[:end], weights=weight, minlength=len(configs))
            score = np.where(mass > 0, total / np.maximum(mass, 1e-300), -np.inf)
            pick = max(values, key=lambda c: (score[index[c]], c))
            picks.setdefault((part, half_life), []).append(values[pick])
            mine.append(values[pick])
        # The half-life chosen walk-forward, as v5 chooses its local scale: the one whose picks did best over
        # the decisions whose outcomes were known by today, fading with v5's half-life of 12 outcome windows.
        past = [(decided, outcome) for known_day, decided, outcome in realised if known_day <= today]
        if past:
            fade = 0.5 ** ((today - np.array([d for d, _ in past])) / (12 * horizon))
            means = fade @ np.array([o for _, o in past]) / fade.sum()
            chosen = int(np.argmax(np.round(means, 12)))
        else:
            chosen = 0
        picks.setdefault((part, "chosen"), []).append(mine[chosen])
        realised.append((int(point["known"].max().to_datetime64().astype("datetime64[D]").astype(np.int64)),
                         today, np.array(mine)))
    lines = []
    for half_life in (*HALF_LIVES, "chosen"):
        cells = []
        for part in ("before", "held out"):
            mine, base = np.array(picks[(part, half_life)]), np.array(picks[(part, None)])
            cells.append(f"{mine.mean():.3f} ({mine.mean() - base.mean():+.3f})")
        label = "chosen walk-forward" if half_life == "chosen" else f"{half_life:g} years"
        lines.append(f"{name} | record, half-life {label} | {cells[0]} | {cells[1]}")
    return lines


def measure(name: str) -> list[str]:
    df, features = _frame(corpora.daily_corpus() if name == "daily" else corpora.monthly_corpus())
    print("\n".join(recency(name, df)), flush=True)
    held = pd.Timestamp(corpora.HELD_OUT_FROM[name])
    fits: dict[pd.Timestamp, dict[str, Any]] = {}
    chosen: dict[float, list[float]] = {penalty: [] for penalty in PENALTIES}
    best_so_far, random = [], []
    points = sorted(df[df["decision"] >= held].groupby("point"), key=lambda item: item[1]["decision"].iloc[0])
    for _, point in points:
        day = point["decision"].iloc[0]
        refit = held + pd.Timedelta(days=REFIT_DAYS * ((day - held).days // REFIT_DAYS))
        if refit not in fits:
            fits[refit] = _fit(df[df["known"] < refit], features)
        fit = fits[refit]
        query = ((point[features].iloc[0].fillna(0.0) - fit["centre"]) / fit["scale"]).fillna(0.0).to_numpy()
        values = dict(zip(point["config"], point["objective"]))
        record = df[df["known"] <= day].groupby("config")["objective"].mean()
        best_so_far.append(values[max(values, key=lambda c: (record.get(c, -np.inf), c))])
        random.append(float(np.mean(list(values.values()))))
        for penalty, models in fit["models"].items():
            predicted = {c: models[c][0] + float(query @ models[c][1]) for c in values if c in models}
            pick = max(predicted, key=lambda c: (predicted[c], c)) if predicted else None
            chosen[penalty].append(values[pick] if pick else random[-1])
    base, record = np.array(best_so_far), np.array(chosen[PENALTIES[-1]])
    lines = [f"{name} | best-so-far | {base.mean():.3f} | - | - | {len(base)}",
             f"{name} | random pick | {np.mean(random):.3f} | - | - | {len(base)}"]
    for penalty, values in chosen.items():
        picks = np.array(values)
        lines.append(f"{name} | ridge, penalty {penalty:g} | {picks.mean():.3f} | {(picks > base).mean():.2f} / "
                     f"{(picks < base).mean():.2f} | {picks.mean() - record.mean():+.3f} | {len(picks)}")
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", choices=["daily", "monthly"])
    args = parser.parse_args(argv)
    print("corpus | policy | mean objective before the held-out period (minus best-so-far) | held out (minus "
          "best-so-far)  [recency-weighted records]")
    print(f"corpus | policy | held-out mean objective | beats / trails best-so-far | minus the study's record "
          f"(penalty {PENALTIES[-1]:g}) | decisions  [learned env weights]")
    for name in args.corpus or ["daily", "monthly"]:
        for line in measure(name):
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
