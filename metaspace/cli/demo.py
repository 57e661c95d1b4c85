"""``metaspace demo``: the main job on the embedded default, start to finish."""

from __future__ import annotations

import click

from metaspace import demo
from metaspace.cli.common import (
    database_url,
    database_url_option,
    domain_errors,
    echo_table,
    progress_bar,
    with_total,
)
from metaspace.store.connection import redact


@click.command("demo")
@database_url_option
@click.option("--n", "n", default=20_000, show_default=True, type=click.IntRange(100), help="Sample runs to generate.")
@click.option("--seed", default=7, show_default=True, help="Seed of the sample history.")
@click.option("--out-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where the sample runs file and the landscape picture are written.")
@domain_errors
def demo_command(n: int, seed: int, out_dir: str) -> None:
    """Run the whole tour on a sample history: database, import, embed, search, suggest, picture.

    With no --database-url it uses a fresh `metaspace_demo` database on the embedded server, so your own
    data is never touched. About half a minute on a 2-core machine.

    \b
    Example:
        metaspace demo
        metaspace demo --n 5000 --out-dir /tmp/tour
    """
    with progress_bar() as imports, progress_bar() as embeds:
        result = demo.run_demo(n=n, seed=seed, out_dir=out_dir, database_url=database_url(), say=click.echo,
                               import_progress=imports.update, embed_progress=with_total(embeds))
    for step in result.steps:
        click.echo()
        click.echo(step.title)
        click.echo(f"   {step.explanation}")
        for note in step.notes:
            click.echo(f"   note: {note}", err=True)
        echo_table(step.rows, step.columns)
    url = redact(result.database_url)
    hidden = " (password hidden: use your own)" if url != result.database_url else ""
    run = result.example_run
    click.echo()
    click.echo(result.verdict)
    for note in result.verdict_notes:
        click.echo(f"   note: {note}", err=True)
    click.echo()
    click.echo(f"8. The landscape of the joint space, coloured by strategy family: {result.picture}")
    click.echo()
    click.echo(f"Done in {result.seconds:.0f} s. Keep exploring this database{hidden}:")
    click.echo(f"   export METASPACE_DATABASE_URL='{url}'")
    click.echo(f"   metaspace search --run {run} --space env")
    click.echo("   metaspace evaluate --since 2014-01-01 --plot reliability.png")
    click.echo("   metaspace cluster --auto && metaspace map --color cluster --out clusters.png")
    click.echo(f"   psql \"$METASPACE_DATABASE_URL\" -c \"SELECT * FROM historical_db.neighbours('{run}', 5)\"")  # noqa: S608 (printed advice)
