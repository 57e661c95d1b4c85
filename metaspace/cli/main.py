"""The command group. Each subcommand lives in a module per theme, imported only when that command runs
(or shows its help), so that ``metaspace --help`` and every command start without the others' libraries."""

from __future__ import annotations

import importlib
import logging
import warnings

import click

from metaspace.cli.common import database_url_option

# name -> (module:attribute, the first sentence of its help, shown by ``metaspace --help`` without importing
# the module; tests/test_vocabulary.py checks it against the command's own help).
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("metaspace.cli.schema:db",
           "Manage the embedded PostgreSQL server (used when no database URL is given)."),
    "migrate": ("metaspace.cli.schema:migrate_command",
                "Bring the database schema to this version of metaspace (Alembic, run from code)."),
    "import-runs": ("metaspace.cli.pipeline:import_runs_command",
                    "Load run records (JSONL, .jsonl.gz, CSV with dotted columns, Parquet; - for stdin) into the "
                    "database."),
    "import-mlflow": ("metaspace.cli.sources:import_mlflow_command",
                      "Import the finished runs of an MLflow tracking store, through MLflow's client API."),
    "import-optuna": ("metaspace.cli.sources:import_optuna_command",
                      "Import the completed trials of Optuna studies as runs, through Optuna's storage API."),
    "embed-runs": ("metaspace.cli.pipeline:embed_runs_command",
                   "Embed the stored runs that lack a vector (fitting the encoders first when none is registered)."),
    "search": ("metaspace.cli.search:search_command",
               "Find the stored runs nearest to a run, an env, a config, an outcome or a record."),
    "suggest": ("metaspace.cli.search:suggest_command",
                "Suggest configs that worked in environments like the target, as of a date."),
    "propose": ("metaspace.cli.propose:propose_command",
                "Propose configs never tried for a study, from the runs of similar environments in the store."),
    "evaluate": ("metaspace.cli.evaluate:evaluate_command",
                 "Replay history: would the top suggestion have beaten a random pick?"),
    "map": ("metaspace.cli.landscape:map_command",
            "Draw the stored runs of a space in 2-D: a landscape of what was tried and how it behaved."),
    "cluster": ("metaspace.cli.landscape:cluster_command",
                "Group runs that behave alike (k-means over the stored vectors) and summarise each group."),
    "sample-runs": ("metaspace.cli.landscape:sample_runs_command",
                    "Write a realistic sample history: strategies run on simulated markets that switch regimes."),
    "demo": ("metaspace.cli.demo:demo_command",
             "Run the whole tour on a sample history: database, import, embed, search, suggest, picture."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented lazy-loading pattern), and
    whose command list is written from their summaries without importing them."""

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, _shortened(self.lazy_commands[name][1], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shortened(summary: str, limit: int) -> str:
    """The summary cut at a word to fit ``limit`` with an ellipsis, as click cuts a command's own help."""
    if len(summary) <= limit:
        return summary
    words = summary.split()
    kept = ""
    for word in words:
        longer = f"{kept} {word}" if kept else word
        if len(longer) + 3 > limit:
            break
        kept = longer
    return f"{kept}..."


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@database_url_option
@click.version_option(package_name="metaspace")
def cli() -> None:
    """metaspace: backtests and meta-runs as points in R^384, searchable in PostgreSQL.

    \b
    Example:
        metaspace demo
        metaspace --database-url postgresql://me@db/quant migrate
    """
    previous = warnings.showwarning
    warnings.showwarning = _show_note
    # psycopg logs a failed rollback after a lost connection ("error ignored in rollback of <psycopg...>"): the
    # command's own error says what happened, once
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    click.get_current_context().call_on_close(lambda: setattr(warnings, "showwarning", previous))


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """metaspace's notes (UserWarnings raised in its own modules) as one ``note:`` line on stderr; any other
    warning as Python shows it."""
    from metaspace.errors import Note

    if issubclass(category, Note) or (issubclass(category, UserWarning)
                                      and "metaspace" in str(filename).replace("\\", "/").split("/")):
        click.echo(f"note: {message}", err=True)
        return
    _shown_as_python(message, category, filename, lineno, file, line)


_shown_as_python = warnings.showwarning


def main() -> None:
    cli(prog_name="metaspace")
