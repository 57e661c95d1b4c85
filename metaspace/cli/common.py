"""What every command shares: the database option, output formats, and error handling."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from metaspace.errors import MetaspaceError


def _store_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        ctx.ensure_object(dict)["database_url"] = value
    return value


database_url_option = click.option(
    "--database-url",
    envvar="METASPACE_DATABASE_URL",
    expose_value=False,
    callback=_store_url,
    help="PostgreSQL URL (else METASPACE_DATABASE_URL, else the embedded server).",
)

format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="Output: a readable table, or JSON for machines.",
)


def database_url() -> str | None:
    """The URL given to this command or to the command group, if any."""
    ctx = click.get_current_context()
    while ctx is not None:
        if ctx.obj and ctx.obj.get("database_url"):
            return ctx.obj["database_url"]
        ctx = ctx.parent
    return None


def domain_errors(fn: Callable) -> Callable:
    """Turn metaspace's errors into ``Error: ...`` with exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MetaspaceError as exc:
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:
            # Imported here, on the error path: the store's driver is not loaded by commands that never use it.
            from metaspace.store.connection import DATABASE_ERRORS, describe_error, embedded_default

            if isinstance(exc, DATABASE_ERRORS):
                raise click.ClickException(describe_error(exc, embedded=embedded_default(database_url()))) from exc
            raise

    return wrapper


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str, sort_keys=False))


def echo_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    if not rows:
        click.echo("(no rows)")
        return
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    click.echo("  ".join(col.ljust(w) for col, w in zip(columns, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def is_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(unit: str = "runs"):
    """A tqdm bar with rate and ETA on a terminal, silent in pipes."""
    from tqdm import tqdm

    return tqdm(total=None, unit=unit, disable=not is_terminal(), dynamic_ncols=True, file=sys.stderr)


def with_total(bar) -> Callable[[int, int], None]:
    """A progress callback (step, total) for work whose total is known only once it starts."""

    def update(step: int, total: int) -> None:
        bar.total = total
        bar.update(step)

    return update
