"""``metaspace import-mlflow`` and ``metaspace import-optuna``: runs from where teams already keep them."""

from __future__ import annotations

import click

from metaspace.cli.common import database_url, database_url_option, domain_errors, echo_json, progress_bar
from metaspace.sources import SourceImportSummary, import_mlflow, import_optuna

map_option = click.option(
    "--map", "map", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
    help="JSON or YAML: which names go to config / env / outcome, which to ignore, which hold the as-of date "
         "and the ids (see the README).",
)
rejects_option = click.option("--rejects", type=click.Path(dir_okay=False),
                              help="Write each rejected run (id, field, reason) here, as JSONL.")
strict_option = click.option("--strict", is_flag=True, help="Any invalid run is an error: nothing is imported.")
format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True)


def _report(summary: SourceImportSummary, rejects: str | None, fmt: str) -> None:
    for note in summary.notes:
        click.echo(note, err=True)
    for item in summary.rejects[:10]:
        click.echo(f"rejected {item['source']}:{item['line']} run {item['run_id']!r} field {item['field']!r}: "
                   f"{item['reason']}", err=True)
    if summary.rejected > 10:
        click.echo(f"... and {summary.rejected - 10} more rejected" + (f" (all in {rejects})" if rejects else ""),
                   err=True)
    for item in summary.skips[:10]:
        click.echo(f"skipped run {item['run_id']!r} ({item['state']}): {item['reason']}", err=True)
    if summary.skipped > 10:
        click.echo(f"... and {summary.skipped - 10} more skipped", err=True)
    if fmt == "json":
        echo_json({k: v for k, v in summary.as_dict().items() if k not in ("rejects", "skips")})
    else:
        click.echo(f"read {summary.read}, inserted {summary.inserted}, updated {summary.updated}, "
                   f"unchanged {summary.unchanged}, rejected {summary.rejected}, skipped {summary.skipped}")


@click.command("import-mlflow")
@database_url_option
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
              help="The MLflow tracking store (sqlite:///mlflow.db, a folder, http://server); "
                   "else MLFLOW_TRACKING_URI.")
@click.option("--experiment", "experiment", multiple=True, metavar="NAME",
              help="Only this experiment (repeatable); default: every active experiment.")
@click.option("--since", metavar="DATE", help="Read every run that ended on or after DATE, not only the runs "
              "that ended after the last import (after fixing rejected runs or changing the map).")
@map_option
@rejects_option
@strict_option
@format_option
@domain_errors
def import_mlflow_command(tracking_uri, experiment, since, map, rejects, strict, fmt) -> None:
    """Import the finished runs of an MLflow tracking store, through MLflow's client API.

    params → config (numbers and booleans parsed back; dotted names nest), metrics → outcome (latest
    value), tags env.* and a logged env.json artifact → env; run_id = the MLflow run id; as_of_date =
    the run's end time (or the tag or param that --map names); config_id = tag metaspace.config_id or
    a hash of the config; strategy_id = tag metaspace.strategy_id or the experiment's name. A rerun
    reads only runs that ended after the last import. Runs upsert as in import-runs.

    \b
    Example:
        metaspace import-mlflow --tracking-uri sqlite:///mlflow.db
        metaspace import-mlflow --tracking-uri http://mlflow:5000 --experiment momentum --map map.yaml
        metaspace import-mlflow --tracking-uri ./mlruns --since 2024-01-01 --format json
    """
    with progress_bar() as bar:
        summary = import_mlflow(tracking_uri, experiment=experiment, since=since, map=map,
                                database_url=database_url(), rejects=rejects, strict=strict, progress=bar.update)
    _report(summary, rejects, fmt)


@click.command("import-optuna")
@database_url_option
@click.option("--storage", required=True, metavar="URL", help="The Optuna storage, e.g. sqlite:///optuna.db.")
@click.option("--study", multiple=True, metavar="NAME", help="A study to import; repeat it for several.")
@click.option("--all-studies", is_flag=True, help="Import every study of the storage.")
@click.option("--source-name", metavar="NAME",
              help="Import beside a study of the same name from another storage: run ids become "
                   "optuna:NAME:STUDY:TRIAL (default: optuna:STUDY:TRIAL, the storage's location recorded).")
@map_option
@rejects_option
@strict_option
@format_option
@domain_errors
def import_optuna_command(storage, study, all_studies, source_name, map, rejects, strict, fmt) -> None:
    """Import the completed trials of Optuna studies as runs, through Optuna's storage API.

    params → config; the objective values → outcome (named by the study's metric_names, else value or
    values_0, values_1, ...); user attributes outcome.* → outcome; attributes env.* and the study's user
    attributes → env; run_id = optuna:STUDY:NUMBER; as_of_date = the date the trial completed. Pruned,
    failed and unfinished trials are skipped with the reason. Runs upsert as in import-runs.

    \b
    Example:
        metaspace import-optuna --storage sqlite:///optuna.db --study momentum-tuning
        metaspace import-optuna --storage sqlite:///optuna.db --study s1 --study s2 --map map.json
        metaspace import-optuna --storage sqlite:///optuna.db --all-studies
    """
    with progress_bar("trials") as bar:
        summary = import_optuna(storage, study=study, all_studies=all_studies, source_name=source_name, map=map,
                                database_url=database_url(), rejects=rejects, strict=strict, progress=bar.update)
    _report(summary, rejects, fmt)
