"""The command group and its subcommands, registered from one module per theme."""

from __future__ import annotations

import click

from metaspace.cli.common import database_url_option
from metaspace.cli.demo import demo_command
from metaspace.cli.evaluate import evaluate_command
from metaspace.cli.landscape import cluster_command, map_command, sample_runs_command
from metaspace.cli.pipeline import embed_runs_command, import_runs_command
from metaspace.cli.schema import db, migrate_command
from metaspace.cli.search import search_command, suggest_command
from metaspace.cli.sources import import_mlflow_command, import_optuna_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@database_url_option
@click.version_option(package_name="metaspace")
def cli() -> None:
    """metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL.

    \b
    Example:
        metaspace demo
        metaspace --database-url postgresql://me@db/quant migrate
    """


cli.add_command(db)
cli.add_command(migrate_command)
cli.add_command(import_runs_command)
cli.add_command(import_mlflow_command)
cli.add_command(import_optuna_command)
cli.add_command(embed_runs_command)
cli.add_command(search_command)
cli.add_command(suggest_command)
cli.add_command(evaluate_command)
cli.add_command(map_command)
cli.add_command(cluster_command)
cli.add_command(sample_runs_command)
cli.add_command(demo_command)


def main() -> None:
    cli(prog_name="metaspace")
