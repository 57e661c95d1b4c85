"""Evaluation corpora of run records built from real market data shipped inside the ``arch`` package.

* ``daily_corpus()``: S&P 500 and NASDAQ adjusted closes (1999-2018) and WTI spot (1986-2019) from
  ``arch.data.sp500/nasdaq/wti``. Every ``DAILY_STEP`` trading days, 32 configs (trend, mean reversion, vol
  targeting, buy and hold, short-term reversal) are scored on the next ``DAILY_FORWARD`` days, with costs
  and raw returns (no daily risk-free rate ships with arch). Env over the trailing ``DAILY_TRAILING`` days:
  realised vol, trend t-stat, autocorrelation, drawdown, vol of vol, regime mix of 21-day blocks, distance
  from the 252-day high, and the VIX (``arch.data.vix``, 2014-2018) when it covers the date, else null.
* ``monthly_corpus()``: Fama-French Mkt-RF, SMB, HML (1926-2018, ``arch.data.frenchdata``). Every month, 22
  factor-timing configs (single-factor holds, equal weight, risk parity, factor momentum, rotation, reversal,
  market vol targeting) are scored on the next ``MONTHLY_FORWARD`` months of excess returns. Env over the
  trailing ``MONTHLY_TRAILING`` months: factor vols, t-stats, returns and correlations, market drawdown,
  regime mix of 6-month blocks; plus the risk-free rate, the BAA-AAA spread (``arch.data.default``) and core
  CPI inflation (``arch.data.core_cpi``, from 1958), both lagged a month for publication.

Point-in-time rule, with t the decision date (a close): the env uses only data dated t or earlier; every
position is set at a close from data up to that close and earns the next period; the outcome window is the
``FORWARD`` periods after t (and pays for the trade made at t); ``as_of_date`` is the window's last day, when
the outcome became known. ``decision_date`` and ``test_start`` are kept as extra fields. Walk-forward: train
on records with ``as_of_date`` before ``HELD_OUT_FROM[corpus]``, evaluate on records whose ``decision_date``
is on or after it (the last ~30% of decision dates). Deterministic: no randomness.

``python benchmarks/corpora.py OUT_DIR`` writes ``daily.jsonl`` and ``monthly.jsonl`` and prints sizes, date
ranges and a sanity table (mean forward Sharpe per family, oracle edge, a point-in-time baseline).
"""

from __future__ import annotations

import gzip
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAILY_TRAILING, DAILY_FORWARD, DAILY_STEP, DAILY_WARMUP = 126, 63, 10, 260
MONTHLY_TRAILING, MONTHLY_FORWARD, MONTHLY_STEP, MONTHLY_WARMUP = 36, 12, 1, 60
DAILY_MARKETS = {  # name: (arch.data module, price column, asset class, cost per unit of turnover)
    "SP500": ("sp500", "Adj Close", "equity_index", 0.0002),
    "NASDAQ": ("nasdaq", "Adj Close", "equity_index", 0.0003),
    "WTI": ("wti", "DCOILWTICO", "commodity", 0.0005),
}
FACTORS = ("mkt", "smb", "hml")
MONTHLY_COST = 0.001
HELD_OUT_FROM = {"daily": "2010-11-01", "monthly": "1992-01-01"}  # decision dates on or after: held out
REGIMES = ("trending", "mean_reverting", "calm", "stressed")


def _load(name: str) -> pd.DataFrame:
    return importlib.import_module(f"arch.data.{name}").load()


def _r(x: Any, digits: int = 5) -> float | None:
    x = float(x)
    return round(x, digits) if np.isfinite(x) else None


def _roll(x: np.ndarray, window: int, how: str) -> np.ndarray:
    return getattr(pd.Series(x).rolling(window), how)().to_numpy()


def _autocorr(x: np.ndarray) -> np.ndarray:
    a = x[..., :-1] - x[..., :-1].mean(axis=-1, keepdims=True)
    b = x[..., 1:] - x[..., 1:].mean(axis=-1, keepdims=True)
    return (a * b).sum(-1) / np.maximum(np.sqrt((a * a).sum(-1) * (b * b).sum(-1)), 1e-12)


def _max_drawdown(r: np.ndarray) -> np.ndarray:
    """Worst peak-to-trough loss of compounded wealth over the last axis (simple returns)."""
    wealth = np.cumprod(1.0 + r, axis=-1)
    peak = np.maximum.accumulate(np.maximum(wealth, 1.0), axis=-1)
    return np.minimum((wealth / peak - 1.0).min(axis=-1), 0.0)


def _sharpe(r: np.ndarray, periods: int) -> np.ndarray:
    sd = r.std(axis=-1)
    return np.where(sd > 1e-12, r.mean(axis=-1) / np.maximum(sd, 1e-12), 0.0) * np.sqrt(periods)


def _backtest(weights: np.ndarray, returns: np.ndarray, cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-period strategy returns and trades. ``weights[..., d]`` is set at close d and earns period d + 1;
    the trade into it is charged in period d + 1, so a window after t pays for the trade made at t."""
    held = np.zeros_like(weights)
    held[..., 1:, :] = weights[..., :-1, :]
    before = np.zeros_like(held)
    before[..., 1:, :] = held[..., :-1, :]
    trades = np.abs(held - before).sum(-1)
    return (held * returns).sum(-1) - cost * trades, trades


def _outcomes(ret: np.ndarray, trades: np.ndarray, periods: int) -> dict[str, np.ndarray]:
    """Forward-window metrics over the last axis of (configs, decisions, window) arrays."""
    n = ret.shape[-1]
    thirds = _sharpe(ret[..., : n // 3 * 3].reshape(*ret.shape[:-1], 3, n // 3), periods)
    active = ret != 0
    return {"sharpe": _sharpe(ret, periods), "cagr": np.expm1(np.log1p(ret).sum(-1) * periods / n),
            "max_drawdown": _max_drawdown(ret), "turnover": trades.sum(-1) * periods / n,
            "hit_rate": ((ret > 0) & active).sum(-1) / np.maximum(active.sum(-1), 1),
            "worst_third_sharpe": thirds.min(-1), "positive_thirds": (thirds > 0).mean(-1)}


def _record(run_id: str, config: tuple[str, str, dict[str, Any]], strategy_id: str, dates: pd.DatetimeIndex,
            i: int, forward: int, env: dict[str, Any], o: dict[str, np.ndarray], c: int,
            d: int) -> dict[str, Any]:
    """One run: decision at dates[i], outcome over dates[i + 1 .. i + forward]."""
    x = {k: _r(v[c, d], {"cagr": 5, "max_drawdown": 5, "turnover": 3}.get(k, 4)) for k, v in o.items()}
    robustness = {k: x.pop(k) for k in ("worst_third_sharpe", "positive_thirds")}
    return {"run_id": run_id, "config_id": config[0], "strategy_id": strategy_id,
            "as_of_date": dates[i + forward].date().isoformat(), "config": config[2], "env": env,
            "outcome": {**x, "robustness": robustness},
            "decision_date": dates[i].date().isoformat(), "test_start": dates[i + 1].date().isoformat()}


def _cfg(config_id: str, family: str, **body: Any) -> tuple[str, str, dict[str, Any]]:
    return config_id, family, {"strategy": family, **body}


def daily_configs() -> list[tuple[str, str, dict[str, Any]]]:
    """(config_id, family, config body) of the 32 daily strategies."""
    def risk(tv: float | None, lev: float = 2.0) -> dict[str, Any]:
        return {"target_vol": tv, "max_leverage": lev}
    return [
        *(_cfg(f"TREND_L{lb}_{reb[0].upper()}_TV{int(tv * 100)}", "trend", lookback_days=lb, rebalance=reb,
               risk=risk(tv), trend={"signal": "sign_of_return", "vol_window": 20})
          for lb in (20, 60, 120, 250) for reb in ("daily", "weekly") for tv in (0.10, 0.15)),
        *(_cfg(f"MEANREV_L{lb}_Z{int(z * 10)}", "mean_reversion", lookback_days=lb, rebalance="daily",
               risk=risk(0.10), mean_reversion={"entry_z": z, "band": "zscore", "vol_window": 20})
          for lb in (5, 10, 20) for z in (0.5, 1.0, 2.0)),
        *(_cfg(f"VOLTGT_V{vw}_TV{int(tv * 100)}", "vol_target", lookback_days=vw, rebalance="weekly",
               risk=risk(tv, 1.5), vol_target={"vol_window": vw}) for vw in (20, 60) for tv in (0.10, 0.15)),
        _cfg("BUYHOLD", "buy_hold", lookback_days=0, rebalance="none", risk=risk(None, 1.0)),
        *(_cfg(f"STREV_L{lb}", "short_term_reversal", lookback_days=lb, rebalance="daily", risk=risk(0.10),
               short_term_reversal={"signal": "minus_sign_of_return", "vol_window": 20}) for lb in (1, 5)),
    ]


def _daily_position(family: str, body: dict[str, Any], lr: np.ndarray) -> np.ndarray:
    """Position held from each close, from log returns up to and including that close."""
    lb, risk = body["lookback_days"], body["risk"]
    if family == "buy_hold":
        return np.ones_like(lr)
    vol = _roll(lr, body.get(family, {}).get("vol_window", lb), "std") * np.sqrt(252)
    size = np.minimum(risk["max_leverage"], risk["target_vol"] / np.maximum(vol, 1e-4))
    if family in ("trend", "short_term_reversal"):
        signal = np.sign(_roll(lr, lb, "mean")) * (1.0 if family == "trend" else -1.0)
    elif family == "mean_reversion":
        logp = np.cumsum(lr)
        z = (logp - _roll(logp, lb, "mean")) / np.maximum(_roll(logp, lb, "std"), 1e-9)
        signal = -np.clip(z / body["mean_reversion"]["entry_z"], -1.0, 1.0)
    else:
        signal = np.ones_like(lr)
    pos = np.nan_to_num(signal * size)
    return pos[np.arange(len(pos)) // 5 * 5] if body["rebalance"] == "weekly" else pos


def _regime_mix(blocks: np.ndarray, periods: int, stressed_vol: float, calm_vol: float, trend_t: float,
                reverting_ac: float) -> dict[str, np.ndarray]:
    """Share of blocks (decisions, blocks, length) a desk's rules would call each regime."""
    vol = blocks.std(-1) * np.sqrt(periods)
    tstat = np.abs(blocks.mean(-1)) / np.maximum(blocks.std(-1), 1e-12) * np.sqrt(blocks.shape[-1])
    stressed = vol > stressed_vol
    calm = ~stressed & (vol < calm_vol)
    reverting = ~stressed & ~calm & (_autocorr(blocks) < reverting_ac)
    trending = ~stressed & ~calm & ~reverting & (tstat > trend_t)
    return {"trending": trending.mean(1), "mean_reverting": reverting.mean(1),
            "calm": (~(stressed | reverting | trending)).mean(1), "stressed": stressed.mean(1)}


def _vix_env(vix: pd.Series, day: pd.Timestamp) -> dict[str, Any] | None:
    pos = int(vix.index.searchsorted(day, side="right")) - 1
    if pos < 0 or (day - vix.index[pos]).days > 5:
        return None
    v = vix.to_numpy()  # VIX closes, missing days dropped
    return {"level": _r(v[pos], 2), "change_21d": _r(v[pos] - v[pos - 21], 2) if pos >= 21 else None,
            "mean_126d": _r(v[pos - 125:pos + 1].mean(), 2) if pos >= 125 else None}


def daily_corpus() -> list[dict[str, Any]]:
    """Runs of the daily strategies on S&P 500, NASDAQ and WTI: one per (market, decision date, config)."""
    grid = daily_configs()
    vix = _load("vix")["vix"].dropna()
    records = []
    for market, (module, column, asset_class, cost) in DAILY_MARKETS.items():
        prices = _load(module)[column].dropna()
        dates, lr = prices.index[1:], np.diff(np.log(prices.to_numpy()))
        pos = np.stack([_daily_position(fam, body, lr) for _, fam, body in grid])[..., None]
        strat, trades = _backtest(pos, np.expm1(lr)[None, :, None], cost)
        decisions = np.arange(DAILY_WARMUP, len(lr) - DAILY_FORWARD, DAILY_STEP)
        ahead = decisions[:, None] + 1 + np.arange(DAILY_FORWARD)
        o = _outcomes(strat[:, ahead], trades[:, ahead], 252)
        w = lr[decisions[:, None] - DAILY_TRAILING + 1 + np.arange(DAILY_TRAILING)]
        vol, mean, tstat = w.std(1) * np.sqrt(252), w.mean(1), w.mean(1) / w.std(1) * np.sqrt(DAILY_TRAILING)
        blocks = w.reshape(len(w), -1, 21)
        mix = _regime_mix(blocks, 252, 0.30, 0.11, 0.8, -0.12)
        vol_of_vol = blocks.std(-1).std(-1) * np.sqrt(252)
        logp = np.cumsum(lr)
        from_high = np.expm1(logp[decisions] - _roll(logp, 252, "max")[decisions])
        dd, ac = _max_drawdown(np.expm1(w)), _autocorr(w)
        for d, i in enumerate(decisions):
            env = {"realized_vol": _r(vol[d]),
                   "trend": {"tstat": _r(tstat[d], 4), "strength": _r(abs(tstat[d]), 4)},
                   "return_126d": _r(np.expm1(mean[d] * DAILY_TRAILING)), "autocorr_1d": _r(ac[d], 4),
                   "drawdown": _r(dd[d]), "from_252d_high": _r(from_high[d]), "vol_of_vol": _r(vol_of_vol[d]),
                   "vol_ratio_21_126": _r(w[d, -21:].std() * np.sqrt(252) / max(vol[d], 1e-12), 4),
                   "regime_mix": {k: _r(mix[k][d], 4) for k in REGIMES}, "vix": _vix_env(vix, dates[i]),
                   "universe": {"market": market, "asset_class": asset_class, "n_assets": 1}}
            records += [_record(f"DAILY_{market}_{dates[i]:%Y%m%d}_{cfg[0]}", cfg,
                                f"{market}_{cfg[1].upper()}", dates, i, DAILY_FORWARD, env, o, c, d)
                        for c, cfg in enumerate(grid)]
    return records


def monthly_configs() -> list[tuple[str, str, dict[str, Any]]]:
    """(config_id, family, config body) of the 22 factor-timing strategies."""
    return [
        *(_cfg(f"FF_HOLD_{f.upper()}", "single_factor", factor=f, lookback_months=0) for f in FACTORS),
        _cfg("FF_EQUAL", "equal_weight", lookback_months=0),
        *(_cfg(f"FF_RP_V{lb}", "risk_parity", lookback_months=lb, risk={"weighting": "inverse_vol"})
          for lb in (12, 36, 60)),
        *(_cfg(f"FF_TSMOM_L{lb}_{wt[0].upper()}{'W' if wt == 'equal' else 'V'}", "factor_momentum",
               lookback_months=lb, risk={"weighting": wt, "vol_window": 36},
               momentum={"signal": "sign_of_return"})
          for lb in (3, 6, 12) for wt in ("equal", "inverse_vol")),
        *(_cfg(f"FF_ROTATE_L{lb}", "factor_rotation", lookback_months=lb, rotation={"hold": "best", "top": 1})
          for lb in (3, 6, 12)),
        *(_cfg(f"FF_REVERSAL_L{lb}", "factor_reversal", lookback_months=lb,
               rotation={"hold": "worst", "top": 1}) for lb in (36, 60)),
        *(_cfg(f"FF_VOLTGT_V{vw}_TV{int(tv * 100)}", "vol_target", factor="mkt", lookback_months=vw,
               risk={"target_vol": tv, "max_leverage": 1.5}) for vw in (12, 36) for tv in (0.10, 0.15)),
    ]


def _monthly_weights(family: str, body: dict[str, Any], f: np.ndarray) -> np.ndarray:
    """Factor weights (months, 3) set at each month end from returns up to and including that month."""
    lb = body["lookback_months"]
    cols = range(f.shape[1])
    trailing = np.stack([_roll(np.log1p(f[:, k]), lb, "sum") for k in cols], 1) if lb else None
    vol = np.stack([_roll(f[:, k], body.get("risk", {}).get("vol_window", lb or 36), "std")
                    for k in cols], 1) * np.sqrt(12)
    inv = 1.0 / np.maximum(vol, 1e-4)
    if family == "single_factor":
        w = np.zeros_like(f)
        w[:, FACTORS.index(body["factor"])] = 1.0
    elif family == "equal_weight":
        w = np.full_like(f, 1.0 / 3)
    elif family == "risk_parity":
        w = inv / inv.sum(1, keepdims=True)
    elif family == "factor_momentum":
        scale = inv / inv.sum(1, keepdims=True) if body["risk"]["weighting"] == "inverse_vol" else 1.0 / 3
        w = np.sign(trailing) * scale
    elif family in ("factor_rotation", "factor_reversal"):
        pick = np.nan_to_num(trailing if family == "factor_rotation" else -trailing, nan=-np.inf)
        w = (pick == pick.max(1, keepdims=True)).astype(float) * np.isfinite(pick).all(1, keepdims=True)
    else:
        w = np.zeros_like(f)
        w[:, 0] = np.minimum(body["risk"]["max_leverage"], body["risk"]["target_vol"] / vol[:, 0])
    return np.nan_to_num(w)


def _french() -> pd.DataFrame:
    """Fama-French factors as decimals on a month-end index (arch's loader misreads the YYYYMM dates)."""
    import arch.data.frenchdata as fd
    raw = pd.read_csv(Path(fd.__file__).parent / "frenchdata.csv.gz")
    raw.index = pd.to_datetime(raw.pop("Date").astype(str), format="%Y%m") + pd.offsets.MonthEnd(0)
    return raw / 100.0


def _lagged(frame: pd.DataFrame, index: pd.DatetimeIndex) -> pd.DataFrame:
    """A monthly series published the month after it is dated, aligned to month ends (NaN when missing)."""
    return frame.set_axis((frame.index.to_period("M") + 1).to_timestamp(how="end").normalize()).reindex(index)


def monthly_corpus() -> list[dict[str, Any]]:
    """Runs of the factor-timing strategies on the Fama-French factors: one per (decision month, config)."""
    ff = _french()
    dates, f, rf = ff.index, ff[["Mkt-RF", "SMB", "HML"]].to_numpy(), ff["RF"].to_numpy()
    default = _lagged(_load("default"), dates)
    cpi = _load("core_cpi")["CPILFESL"]
    inflation = _lagged((cpi / cpi.shift(12) - 1.0).to_frame(), dates).iloc[:, 0].to_numpy()
    spread = (default["BAA"] - default["AAA"]).to_numpy() / 100.0
    grid = monthly_configs()
    weights = np.stack([_monthly_weights(fam, body, f) for _, fam, body in grid])
    strat, trades = _backtest(weights, f[None], MONTHLY_COST)
    decisions = np.arange(MONTHLY_WARMUP - 1, len(f) - MONTHLY_FORWARD, MONTHLY_STEP)
    ahead = decisions[:, None] + 1 + np.arange(MONTHLY_FORWARD)
    o = _outcomes(strat[:, ahead], trades[:, ahead], 12)
    w = f[decisions[:, None] - MONTHLY_TRAILING + 1 + np.arange(MONTHLY_TRAILING)]  # (D, 36, 3)
    vols, tstats = w.std(1) * np.sqrt(12), w.mean(1) / np.maximum(w.std(1), 1e-12) * np.sqrt(MONTHLY_TRAILING)
    ret12, ret36 = np.expm1(np.log1p(w[:, -12:]).sum(1)), np.expm1(np.log1p(w).sum(1))
    mkt = w[:, :, 0]
    mix = _regime_mix(mkt.reshape(len(w), -1, 6), 12, 0.25, 0.12, 1.0, -0.4)
    vol_of_vol = mkt.reshape(len(w), -1, 6).std(-1).std(-1) * np.sqrt(12)
    wealth = np.cumprod(1.0 + mkt, axis=1)
    from_peak = wealth[:, -1] / np.maximum(np.maximum.accumulate(wealth, 1)[:, -1], 1.0) - 1.0
    dd, ac = _max_drawdown(mkt), _autocorr(mkt)
    records = []
    for d, i in enumerate(decisions):
        corr = np.corrcoef(w[d].T)
        env = {"factors": {k: {"vol": _r(vols[d, j]), "tstat": _r(tstats[d, j], 4),
                               "return_12m": _r(ret12[d, j]), "return_36m": _r(ret36[d, j])}
                           for j, k in enumerate(FACTORS)},
               "correlation": {f"{FACTORS[a]}_{FACTORS[b]}": _r(corr[a, b], 4)
                               for a, b in ((0, 1), (0, 2), (1, 2))},
               "realized_vol": _r(vols[d, 0]),
               "trend": {"tstat": _r(tstats[d, 0], 4), "strength": _r(abs(tstats[d, 0]), 4)},
               "autocorr_1m": _r(ac[d], 4), "drawdown": _r(dd[d]), "from_peak": _r(from_peak[d]),
               "vol_of_vol": _r(vol_of_vol[d]), "regime_mix": {k: _r(mix[k][d], 4) for k in REGIMES},
               "rates": {"rf_annual": _r(rf[i] * 12), "credit_spread": _r(spread[i]),
                         "core_inflation_yoy": _r(inflation[i])},
               "universe": {"market": "US_FACTORS", "asset_class": "equity_factors", "n_assets": 3}}
        records += [_record(f"MONTHLY_FF_{dates[i]:%Y%m}_{cfg[0]}", cfg, f"FF_{cfg[1].upper()}", dates, i,
                            MONTHLY_FORWARD, env, o, c, d) for c, cfg in enumerate(grid)]
    return records


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL (gzip when the name ends in .gz); refuses NaN and infinities."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
    return path


def sanity(name: str, records: list[dict[str, Any]]) -> None:
    """Mean forward Sharpe per family (and its share of wins, ties split); then per decision point the mean
    of configs, the best fixed config in hindsight, a point-in-time baseline (per market, the config that won
    the latest point whose outcome was known by the decision date) and the oracle (best config per point)."""
    df = pd.DataFrame([(r["config"]["strategy"], r["config_id"], r["env"]["universe"]["market"],
                        r["decision_date"], r["as_of_date"], r["outcome"]["sharpe"]) for r in records],
                      columns=["family", "config", "market", "date", "as_of", "sharpe"])
    cut = HELD_OUT_FROM[name]
    wins = df["sharpe"] == df.groupby(["market", "date"])["sharpe"].transform("max")
    df["win"] = wins / wins.groupby([df["market"], df["date"]]).transform("sum")
    print(f"[{name}] {'family':<20} configs  mean_sharpe  held_out_sharpe  share_of_wins")
    for fam, g in df.groupby("family"):
        print(f"  {fam:<26} {g['config'].nunique():>3} {g['sharpe'].mean():>12.3f} "
              f"{g.loc[g['date'] >= cut, 'sharpe'].mean():>16.3f} {g['win'].sum() / df['win'].sum():>14.3f}")
    table = df.pivot_table(index=["market", "date"], columns="config", values="sharpe")
    as_of = df.groupby(["market", "date"])["as_of"].first()
    points = []
    for market, part in table.groupby(level="market"):
        dates = part.index.get_level_values("date").to_numpy().astype("datetime64[D]")
        known = np.searchsorted(as_of.loc[market].to_numpy().astype("datetime64[D]"), dates, side="right") - 1
        v, ok = part.to_numpy(), known >= 0
        pick = v[np.flatnonzero(ok), v[known[ok]].argmax(1)]
        points.append(pd.DataFrame({"date": dates[ok].astype(str), "pit": pick, "mean": v[ok].mean(1),
                                    "oracle": v[ok].max(1)}))
    pts = pd.concat(points)
    for label, part, runs in (("all", pts, df), ("held-out", pts[pts["date"] >= cut], df[df["date"] >= cut])):
        fixed = runs.groupby("config")["sharpe"].mean()
        print(f"  {label} ({len(part)} points): mean of configs {part['mean'].mean():.3f} | best fixed "
              f"{fixed.idxmax()} {fixed.max():.3f} | last-known winner {part['pit'].mean():.3f} | oracle "
              f"{part['oracle'].mean():.3f} | oracle edge {(part['oracle'] - part['mean']).mean():.3f}")


def main(argv: list[str]) -> None:
    out = Path(argv[1] if len(argv) > 1 else "corpora")
    out.mkdir(parents=True, exist_ok=True)
    for name, build in (("daily", daily_corpus), ("monthly", monthly_corpus)):
        start = time.perf_counter()
        records = build()
        path, took = write_jsonl(records, out / f"{name}.jsonl"), time.perf_counter() - start
        dates, as_of = sorted(r["decision_date"] for r in records), sorted(r["as_of_date"] for r in records)
        held = sum(d >= HELD_OUT_FROM[name] for d in dates)
        print(f"\n{name}: {len(records)} runs ({len({r['config_id'] for r in records})} configs) -> {path} "
              f"in {took:.1f}s\n  decisions {dates[0]}..{dates[-1]}, as_of {as_of[0]}..{as_of[-1]}, held out "
              f"from {HELD_OUT_FROM[name]}: {held} runs ({held / len(records):.0%})")
        sanity(name, records)


if __name__ == "__main__":
    main(sys.argv)
