"""A realistic sample history: strategies actually run on simulated markets that switch regimes.

Each market is a daily return series driven by a hidden Markov chain of regimes (trending, mean-reverting,
calm, stressed) with persistent durations. Strategies (trend following, mean reversion, volatility
targeting, each with its own conditional parameters) are run on the prices with transaction costs. A run
picks a market, a config and a start date: its env is measured from the trailing window the way a desk
would (realised vol, trend t-stat, autocorrelation, drawdown, a regime mix classified from 21-day blocks,
universe), its outcome from the forward window (Sharpe, CAGR, max drawdown, turnover, hit rate, robustness).
Which config works in which regime is therefore a fact of the simulation, not a label; the hidden regimes
are kept under ``extra.sim`` for checking and are never encoded.

``as_of_date`` is the day the run's outcome became known (the end of its forward window), so that a query
"as of D" only sees results a desk could have had on D.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REGIMES = ("trending", "mean_reverting", "calm", "stressed")
# Daily drift (signed per episode for trending), volatility, lag-1 autocorrelation, Student-t dof.
REGIME_PARAMS = {
    "trending": (0.0009, 0.010, 0.10, 8.0),
    "mean_reverting": (0.0, 0.011, -0.30, 8.0),
    "calm": (0.0005, 0.005, 0.0, 30.0),
    "stressed": (-0.0005, 0.028, 0.05, 4.0),
}
MEAN_DURATION = {"trending": 500, "mean_reverting": 400, "calm": 600, "stressed": 160}
MARKETS = {  # name: (number of assets, volatility multiplier, sector concentration)
    "US_EQ": (500, 1.0, 0.08),
    "EU_EQ": (350, 1.1, 0.11),
    "FX_G10": (9, 0.6, 0.30),
    "CMDTY": (24, 1.4, 0.18),
}
START = dt.date(1996, 1, 2)
DAYS = 252 * 26
TRAILING = 126
FORWARD = 63
WARMUP = 260
COST = 0.0005


@dataclass(frozen=True)
class Config:
    config_id: str
    family: str
    body: dict[str, Any]


def configs() -> list[Config]:
    """The family of strategies and their conditional parameters."""
    out = []
    for lookback in (20, 60, 120, 250):
        for rebalance in ("daily", "weekly"):
            for target_vol in (0.10, 0.15):
                out.append(Config(
                    f"TREND_L{lookback}_{rebalance[0].upper()}_TV{int(target_vol * 100)}", "trend",
                    {"strategy": "trend", "lookback_days": lookback, "rebalance": rebalance,
                     "risk": {"target_vol": target_vol, "max_leverage": 2.0},
                     "trend": {"signal": "sign_of_return", "vol_window": 20}},
                ))
    for lookback in (5, 10, 20):
        for entry_z in (0.5, 1.0, 2.0):
            out.append(Config(
                f"MEANREV_L{lookback}_Z{int(entry_z * 10)}", "mean_reversion",
                {"strategy": "mean_reversion", "lookback_days": lookback, "rebalance": "daily",
                 "risk": {"target_vol": 0.10, "max_leverage": 2.0},
                 "mean_reversion": {"entry_z": entry_z, "band": "zscore"}},
            ))
    for vol_window in (20, 60):
        for target_vol in (0.08, 0.12, 0.16):
            out.append(Config(
                f"VOLTGT_V{vol_window}_TV{int(target_vol * 100)}", "vol_target",
                {"strategy": "vol_target", "lookback_days": vol_window, "rebalance": "weekly",
                 "risk": {"target_vol": target_vol, "max_leverage": 1.5},
                 "vol_target": {"vol_window": vol_window}},
            ))
    return out


def _regime_path(rng: np.random.Generator, days: int) -> np.ndarray:
    path = np.empty(days, dtype=np.int8)
    day = 0
    state = int(rng.integers(len(REGIMES)))
    while day < days:
        length = max(20, int(rng.exponential(MEAN_DURATION[REGIMES[state]])))
        path[day:day + length] = state
        day += length
        state = int(rng.choice([s for s in range(len(REGIMES)) if s != state]))
    return path


def _market(rng: np.random.Generator, vol_multiplier: float) -> tuple[np.ndarray, np.ndarray]:
    """Daily returns and hidden regimes of one market."""
    regimes = _regime_path(rng, DAYS)
    params = np.array([REGIME_PARAMS[name] for name in REGIMES])[regimes]
    drift, vol, phi, dof = params.T
    starts = np.flatnonzero(np.diff(regimes, prepend=-1))
    directions = np.where(rng.random(len(starts)) < 0.5, 1.0, -1.0)
    episode = np.searchsorted(starts, np.arange(DAYS), side="right") - 1
    trending = regimes == REGIMES.index("trending")
    drift = np.where(trending, drift * directions[episode], drift)
    shocks = rng.standard_t(dof) * np.sqrt((dof - 2) / dof) * vol * vol_multiplier
    returns = np.empty(DAYS)
    previous = 0.0
    for day in range(DAYS):
        previous = drift[day] + phi[day] * (previous - drift[day]) + shocks[day]
        returns[day] = previous
    return returns, regimes


def _rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = np.full(len(x), np.nan)
    out[window - 1:] = (c[window:] - c[:-window]) / window
    return out


def _rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    mean = _rolling_mean(x, window)
    mean_sq = _rolling_mean(x * x, window)
    return np.sqrt(np.maximum(mean_sq - mean * mean, 1e-12))


def _positions(config: Config, returns: np.ndarray) -> np.ndarray:
    """The position held at the close of each day (applied to the next day's return)."""
    body = config.body
    lookback = body["lookback_days"]
    risk = body["risk"]
    vol_window = body.get("trend", {}).get("vol_window") or body.get("vol_target", {}).get("vol_window") or 20
    realised = _rolling_std(returns, vol_window) * np.sqrt(252)
    sizing = np.minimum(risk["max_leverage"], risk["target_vol"] / np.maximum(realised, 1e-4))
    if config.family == "trend":
        signal = np.sign(_rolling_mean(returns, lookback))
    elif config.family == "mean_reversion":
        prices = np.cumsum(returns)
        z = (prices - _rolling_mean(prices, lookback)) / _rolling_std(prices, lookback)
        signal = -np.clip(z / body["mean_reversion"]["entry_z"], -1.0, 1.0)
    else:
        signal = np.ones_like(returns)
    position = np.nan_to_num(signal * sizing)
    if body["rebalance"] == "weekly":
        held = np.arange(len(position)) // 5 * 5
        position = position[held]
    return position


def _strategy_returns(position: np.ndarray, returns: np.ndarray) -> np.ndarray:
    held = np.concatenate([[0.0], position[:-1]])
    trades = np.abs(np.diff(np.concatenate([[0.0], position])))
    return held * returns - COST * trades


def _sharpe(r: np.ndarray) -> np.ndarray:
    return r.mean(axis=-1) / np.maximum(r.std(axis=-1), 1e-9) * np.sqrt(252)


def _max_drawdown(r: np.ndarray) -> np.ndarray:
    wealth = np.cumsum(r, axis=-1)
    peak = np.maximum.accumulate(np.maximum(wealth, 0.0), axis=-1)
    return np.minimum((wealth - peak).min(axis=-1), 0.0)


def _autocorr(r: np.ndarray) -> np.ndarray:
    a = r[..., :-1] - r[..., :-1].mean(axis=-1, keepdims=True)
    b = r[..., 1:] - r[..., 1:].mean(axis=-1, keepdims=True)
    return (a * b).sum(axis=-1) / np.maximum(np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1)), 1e-12)


def _regime_mix(window: np.ndarray) -> dict[str, np.ndarray]:
    """Share of 21-day blocks a desk's rules would call each regime (measured, not the hidden truth)."""
    blocks = window.reshape(len(window), -1, 21)
    vol = blocks.std(axis=-1) * np.sqrt(252)
    tstat = np.abs(blocks.mean(axis=-1)) / np.maximum(blocks.std(axis=-1), 1e-9) * np.sqrt(21)
    ac = _autocorr(blocks)
    stressed = vol > 0.30
    calm = ~stressed & (vol < 0.11)
    reverting = ~stressed & ~calm & (ac < -0.12)
    trending = ~stressed & ~calm & ~reverting & (tstat > 0.8)
    other = ~(stressed | calm | reverting | trending)
    n = blocks.shape[1]
    return {"trending": trending.sum(1) / n, "mean_reverting": reverting.sum(1) / n,
            "calm": (calm | other).sum(1) / n, "stressed": stressed.sum(1) / n}


def _dominant(regimes: np.ndarray) -> list[str]:
    counts = np.stack([(regimes == i).sum(axis=1) for i in range(len(REGIMES))], axis=1)
    return [REGIMES[i] for i in counts.argmax(axis=1)]


def sample_runs(n: int = 20_000, *, seed: int = 7, out: str | Path | None = None) -> list[dict[str, Any]]:
    """``n`` run records of the sample history (seeded: the same n and seed give the same records); with
    ``out``, also written there as JSONL (gzipped if it ends in .gz), as ``metaspace sample-runs`` does."""
    rng = np.random.default_rng(seed)
    grid = configs()
    dates = np.busday_offset(np.datetime64(START), np.arange(DAYS), roll="forward").astype(object)
    markets = list(MARKETS)
    market_returns, market_regimes, held, strat = [], [], [], []
    for name in markets:
        returns, regimes = _market(rng, MARKETS[name][1])
        market_returns.append(returns)
        market_regimes.append(regimes)
        positions = np.stack([_positions(config, returns) for config in grid])
        held.append(positions)
        strat.append(np.stack([_strategy_returns(p, returns) for p in positions]))
    m = rng.integers(len(markets), size=n)
    c = rng.integers(len(grid), size=n)
    t = rng.integers(WARMUP, DAYS - FORWARD, size=n)
    back = t[:, None] + np.arange(-TRAILING, 0)
    ahead = t[:, None] + np.arange(FORWARD)
    trailing = np.stack([market_returns[mi] for mi in range(len(markets))])[m[:, None], back]
    forward = np.stack(strat)[m[:, None], c[:, None], ahead]
    mix = _regime_mix(trailing)
    regimes_all = np.stack(market_regimes)
    hidden_back = _dominant(regimes_all[m[:, None], back])
    hidden_ahead = _dominant(regimes_all[m[:, None], ahead])
    sharpe = _sharpe(forward)
    thirds = forward.reshape(n, 3, FORWARD // 3)
    third_sharpes = _sharpe(thirds)
    total = forward.sum(axis=1)
    trades = np.stack(held)[m[:, None], c[:, None], np.concatenate([ahead[:, :1] - 1, ahead], axis=1)]
    turnover = np.abs(np.diff(trades, axis=1)).sum(axis=1) * 252 / FORWARD
    trail_vol = trailing.std(axis=1) * np.sqrt(252)
    trail_t = trailing.mean(axis=1) / np.maximum(trailing.std(axis=1), 1e-9) * np.sqrt(TRAILING)
    trail_ac = _autocorr(trailing)
    trail_dd = _max_drawdown(trailing)
    vol_of_vol = trailing.reshape(n, -1, 21).std(axis=-1).std(axis=-1) * np.sqrt(252)
    records = []
    for i in range(n):
        market = markets[m[i]]
        assets, _, hhi = MARKETS[market]
        config = grid[c[i]]
        active = forward[i] != 0
        records.append({
            "run_id": f"SIM_{seed}_{i:07d}",
            "config_id": config.config_id,
            "strategy_id": f"{market}_{config.family.upper()}",
            "as_of_date": dates[t[i] + FORWARD - 1].isoformat(),
            "config": config.body,
            "env": {
                "realized_vol": round(float(trail_vol[i]), 5),
                "trend": {"tstat": round(float(trail_t[i]), 4), "strength": round(abs(float(trail_t[i])), 4)},
                "autocorr_1d": round(float(trail_ac[i]), 4),
                "drawdown": round(float(trail_dd[i]), 5),
                "vol_of_vol": round(float(vol_of_vol[i]), 5),
                "regime_mix": {r: round(float(mix[r][i]), 4) for r in REGIMES},
                "universe": {"market": market, "n_assets": int(assets), "sector_hhi": hhi},
            },
            "outcome": {
                "sharpe": round(float(sharpe[i]), 4),
                "cagr": round(float(np.expm1(total[i] * 252 / FORWARD)), 5),
                "max_drawdown": round(float(_max_drawdown(forward[i][None, :])[0]), 5),
                "turnover": round(float(turnover[i]), 3),
                "hit_rate": round(float((forward[i][active] > 0).mean()) if active.any() else 0.0, 4),
                "robustness": {"worst_third_sharpe": round(float(third_sharpes[i].min()), 4),
                               "positive_thirds": round(float((third_sharpes[i] > 0).mean()), 4)},
            },
            "test_start": dates[t[i]].isoformat(),
            "sim": {"trailing_regime": hidden_back[i], "forward_regime": hidden_ahead[i]},
        })
    if out is not None:
        write_runs(records, out)
    return records


def iter_jsonl(records: list[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, separators=(",", ":")) + "\n"


def write_runs(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL (gzip when the name ends in .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(iter_jsonl(records))
    return path
