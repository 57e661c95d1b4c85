"""One vocabulary: every option of every command is a keyword of the same name, with the same default, of
the Python function that does the command's work (sqlite-utils' rule)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import click
import pytest

import metaspace
from metaspace.cli import cli

# command -> the Python function behind it. Options that are the CLI's alone: how output is shown
# (--format), and the database (every function takes database_url).
FUNCTIONS = {
    "migrate": "migrate", "import-runs": "import_runs", "import-mlflow": "import_mlflow",
    "import-optuna": "import_optuna", "embed-runs": "embed_runs", "search": "search", "suggest": "suggest",
    "map": "map_space", "cluster": "cluster", "sample-runs": "sample_runs", "demo": "metaspace.demo:run_demo",
    "evaluate": "evaluate", "propose": "propose",
}
CLI_ONLY = {"fmt", "database_url", "help"}
NOT_PYTHON = {"db"}  # managing the embedded server: metaspace.store.embedded.start/stop/status


def _function(name: str):
    if ":" in name:
        module, attribute = name.split(":")
        return getattr(__import__(module, fromlist=[attribute]), attribute)
    return getattr(metaspace, name)


def _commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    return [(name, cli.get_command(ctx, name)) for name in cli.list_commands(ctx) if name not in NOT_PYTHON]


def test_every_command_has_a_python_function() -> None:
    assert {name for name, _ in _commands()} <= set(FUNCTIONS)


def drift(command: click.Command, function) -> list[str]:
    """What the command's options and the function's keywords disagree on: an option with no keyword of its
    name, or a default that differs (the check every command is held to)."""
    signature = inspect.signature(function)
    problems = []
    for param in command.params:
        if param.name in CLI_ONLY:
            continue
        if param.name not in signature.parameters:
            problems.append(f"{command.name} {'/'.join(param.opts)}: no keyword {param.name!r}")
            continue
        default = signature.parameters[param.name].default
        cli_default = param.get_default(click.Context(command), call=True)
        if type(cli_default).__name__ == "Sentinel":  # click 8.3: no default given
            cli_default = None
        if default is inspect.Parameter.empty or cli_default is None or param.required:
            continue
        if param.multiple:
            same = tuple(default or ()) == tuple(cli_default or ())
        else:
            same = param.name in ("out", "out_dir") or default == cli_default
        if not same:
            problems.append(f"{command.name} {'/'.join(param.opts)}: {default!r} in Python, {cli_default!r} in the CLI")
    return problems


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_every_option_is_a_python_keyword_with_the_same_default(name: str) -> None:
    assert drift(cli.get_command(click.Context(cli), name), _function(FUNCTIONS[name])) == []


def test_the_vocabulary_check_notices_a_drift() -> None:
    @click.command()
    @click.option("--strategy", "strategies", multiple=True)
    @click.option("--k", default=5)
    @click.option("--as-of")
    def drifted(strategies, k, as_of):  # pragma: no cover
        pass

    def function(*, strategy=(), k=10, as_of=None):  # pragma: no cover
        pass

    assert drift(drifted, function) == ["drifted --strategy: no keyword 'strategies'",
                                        "drifted --k: 10 in Python, 5 in the CLI"]


def test_the_cli_starts_without_the_heavy_libraries() -> None:
    heavy = ("alembic", "sqlalchemy", "sklearn", "matplotlib", "plotly", "mlflow", "optuna", "pandas")
    code = f"import sys, metaspace.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_help_lists_every_command_without_importing_numpy_or_the_driver() -> None:
    code = ("import sys\nfrom metaspace.cli import main\nsys.argv = ['metaspace', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('numpy', 'psycopg', 'metaspace.cli.search', 'metaspace.store') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    for name in cli.list_commands(click.Context(cli)):
        assert f"  {name} " in out, f"metaspace --help does not list {name}"


def test_searching_by_stored_run_loads_neither_numpy_nor_the_encoders() -> None:
    code = ("import sys, metaspace.cli.search, metaspace.queries, metaspace.store.search\n"
            "print([m for m in ('numpy', 'metaspace.encoders', 'metaspace.fitted') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_command_summaries_in_the_lazy_list_are_the_commands_own() -> None:
    from metaspace.cli.main import COMMANDS

    ctx = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        assert cli.get_command(ctx, name).get_short_help_str(limit=10_000) == summary, name


def test_the_schema_check_reads_the_revision_chain_alembic_reads() -> None:
    from alembic.script import ScriptDirectory

    from metaspace.store import migrate

    script = ScriptDirectory.from_config(migrate._config(None))
    assert migrate.revisions() == tuple(r.revision for r in reversed(list(script.walk_revisions())))
    assert migrate.head() == script.get_current_head()
