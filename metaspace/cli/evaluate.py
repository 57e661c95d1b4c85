"""``metaspace evaluate``: replay history and score the suggestions against a random pick and the desk's
best-so-far config."""

from __future__ import annotations

import click

from metaspace.cli.common import (
    database_url,
    database_url_option,
    domain_errors,
    echo_json,
    echo_table,
    format_option,
    progress_bar,
    with_total,
)
from metaspace.evaluation import evaluate
from metaspace.evidence import confidence_line

SUMMARY_ROWS = (("chosen", "top suggestion"), ("random", "random pick (mean of the configs tried)"),
                ("baseline", "best-so-far config"), ("oracle", "oracle (best config tried)"),
                ("chosen_minus_random", "top suggestion - random"),
                ("chosen_minus_baseline", "top suggestion - best-so-far"), ("regret", "regret (0 oracle, 1 random)"))


@click.command("evaluate")
@database_url_option
@click.option("--objective", metavar="KEY",
              help="The outcome key to score (default: the only numeric outcome key, else the one named sharpe, at any depth).")
@click.option("--higher-is-better/--lower-is-better", default=True, show_default=True)
@click.option("--since", metavar="DATE", help="Only decisions taken on or after DATE.")
@click.option("--until", metavar="DATE",
              help="Only decisions whose outcome was known by DATE: evaluate as of DATE, reading nothing later.")
@click.option("--horizon", type=click.IntRange(1), metavar="DAYS",
              help="Days from a decision to its outcome's as_of_date (default: inferred from the runs' test_start).")
@click.option("--sample", type=click.IntRange(1), metavar="N", help="Replay only N decision points (drawn with --seed).")
@click.option("--seed", default=0, show_default=True, help="Seed of --sample.")
@click.option("--neighbours", default=1000, show_default=True, type=click.IntRange(1, 10000),
              help="Nearest runs in env space taken as evidence at each decision.")
@click.option("--min-runs", default=3, show_default=True, type=click.IntRange(1),
              help="Environments of evidence a config needs to be ranked.")
@click.option("--plot", metavar="FILE.png", help="Write the reliability plot of deflated_confidence there.")
@click.option("--save-calibration", is_flag=True,
              help="Replay what suggest ranks by, calibrated as of each decision date, and store the calibrations: "
                   "metaspace suggest then applies them (replays every decision; not with --sample; needs --horizon).")
@format_option
@domain_errors
def evaluate_command(objective, higher_is_better, since, until, horizon, sample, seed, neighbours, min_runs, plot,
                     save_calibration, fmt) -> None:
    """Replay history: would the top suggestion have beaten a random pick?

    A decision point is a set of runs sharing one env at one as_of_date: the configs actually tried there.
    At each, metaspace ranks only those configs, as of the decision date (as_of_date minus the horizon),
    and the pick's realised objective is compared with the mean of the configs tried (a random pick), the
    best of them (the oracle) and the config with the best average so far (what every desk has). The
    verdict says whether any config has a reliable edge; --plot draws how well deflated_confidence is
    calibrated. --save-calibration fits, as of each date, how far the neighbourhood may move each config's
    record and what its confidence is worth, on the decisions realised by then, measures the policy so
    calibrated, and stores the calibrations for metaspace suggest.

    \b
    Example:
        metaspace evaluate --since 2014-01-01
        metaspace evaluate --objective outcome.max_drawdown --lower-is-better --horizon 91 --sample 500
        metaspace evaluate --until 2019-12-31 --plot reliability.png --format json > evaluation.json
        metaspace evaluate --save-calibration --horizon 92 --since 2014-01-01
    """
    with progress_bar("decisions") as bar:
        result = evaluate(objective=objective, higher_is_better=higher_is_better, since=since, until=until,
                          horizon=horizon, sample=sample, seed=seed, neighbours=neighbours, min_runs=min_runs,
                          plot=plot, save_calibration=save_calibration, database_url=database_url(),
                          progress=with_total(bar))
    if fmt == "json":
        echo_json(result.as_dict())
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{result.objective} ({'higher' if result.higher_is_better else 'lower'} is better) over "
               f"{result.picked:,} of {result.evaluated:,} decisions, horizon {result.horizon} days, "
               f"{result.summary['independent_blocks']} independent blocks")
    rows = [{"": label, **{k: result.summary[name][k] for k in ("mean", "low", "high")}}
            for name, label in SUMMARY_ROWS]
    echo_table(rows, ("", "mean", "low", "high"))
    click.echo()
    click.echo("deflated_confidence calibration (does a pick in the bin beat a random pick?)")
    echo_table([r for r in result.calibration if r["decisions"]],
               ("bin", "decisions", "independent_blocks", "effective_trials", "mean_confidence", "beats_random",
                "beats_random_low", "beats_random_high", "mean_edge", "confidence_check"))
    click.echo(f"confidence against outcomes: {confidence_line(result.summary)}")
    overfit = result.summary["pbo"]
    click.echo()
    if overfit["pbo"] is None:
        click.echo(f"probability of backtest overfitting: not measured, {overfit['reason']}")
    else:
        click.echo(f"probability of backtest overfitting (choosing a config by its record; CSCV, "
                   f"{overfit['partitions']} partitions of whole outcome windows, the {overfit['configs']} configs "
                   f"tried in every one, {overfit['splits']:,} splits): {overfit['pbo']:.2f}")
    if plot:
        click.echo(f"\nreliability plot: {plot}")
    click.echo(f"\nverdict: {result.verdict}")
