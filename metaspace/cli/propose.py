"""``metaspace propose``: configs never tried, from the history of similar environments."""

from __future__ import annotations

import json
import warnings

import click

from metaspace.cli.common import database_url, database_url_option, domain_errors, echo_json


@click.command("propose")
@database_url_option
@click.option("--env", "env", metavar="FILE",
              help="The study's environment (a JSON object). Without it, the history's environments are weighed "
                   "alike.")
@click.option("--space", "space", required=True, metavar="FILE",
              help="The search space: a JSON object of parameter names to Optuna distributions "
                   "(optuna.distributions.distribution_to_json of each).")
@click.option("-n", "n", default=5, show_default=True, type=click.IntRange(1, 100), help="How many configs.")
@click.option("--as-of", metavar="DATE", help="Only history dated on or before DATE (default: today).")
@click.option("--exclude", multiple=True, metavar="STRATEGY",
              help="Never learn from this strategy (a study's name; repeatable): a study run again must not "
                   "transfer from itself.")
@click.option("--objective", metavar="KEY",
              help="The outcome key the history's runs report (default: value, else the only numeric outcome key).")
@click.option("--higher-is-better/--lower-is-better", default=True, show_default=True)
@click.option("--map", "map", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="The map import-optuna used, so that parameter names find their config keys.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same proposals.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "optuna"]), default="table", show_default=True,
              help="json: one JSON object per proposal (config, origin, sources); optuna: a JSON array of params.")
@domain_errors
def propose_command(env, space, n, as_of, exclude, objective, higher_is_better, map, seed, fmt) -> None:
    """Propose configs never tried for a study, from the runs of similar environments in the store.

    Learns where good configs lie from the environments nearest the study's (as of a date; nothing dated
    later is read), each weighted by how close it is, and proposes N configs of the model's choosing, not a
    replay of past ones: each chosen as if the ones before it had been tried (a portfolio). Each comes with the
    environments that weighed most, how far they are and what they scored. Revalidate by running them.

    \b
    Example:
        metaspace propose --env task.json --space space.json -n 5
        metaspace propose --space space.json --exclude my-study --format optuna   # for study.enqueue_trial
    """
    from metaspace.proposals import propose
    from metaspace.queries import read_inputs

    target = None
    if env:
        inputs = read_inputs(env)
        if len(inputs) != 1 or not isinstance(inputs[0][1], dict):
            raise click.ClickException(f"--env {env}: give one JSON object (the study's environment)")
        target = inputs[0][1]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        proposals = propose(target, space=space, n=n, as_of=as_of, exclude=exclude, objective=objective,
                            higher_is_better=higher_is_better, map=map, seed=seed, database_url=database_url())
    for note in said:
        click.echo(f"note: {note.message}", err=True)
    if fmt == "json":
        for proposal in proposals:
            echo_json(proposal)
        return
    if fmt == "optuna":
        echo_json([p["config"] for p in proposals])
        return
    if not proposals:
        click.echo("(no proposals: see the notes above)")
    for rank, proposal in enumerate(proposals, start=1):
        click.echo(f"{rank}. {json.dumps(proposal['config'], sort_keys=True)}")
        click.echo(f"   from {proposal['origin']}; backed most by:")
        for source in proposal["sources"][:3]:
            distance = "" if source["distance"] is None else f", env distance {source['distance']:.3g}"
            click.echo(f"     {source['source']} (weight {source['weight']:.3f}{distance}): predicted in the top "
                       f"{100 * (1 - source['percentile']):.0f}% of its {source['runs']} runs, whose best "
                       f"{source['objective']} was {source['best']:.4g}")
