"""``metaspace db ...`` (the embedded server) and ``metaspace migrate`` (the schema)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from metaspace.cli.common import database_url, database_url_option, domain_errors, echo_json, format_option
from metaspace.database import migrate
from metaspace.store import migrate as migrations
from metaspace.store.connection import redact, resolve_url


@click.group()
def db() -> None:
    """Manage the embedded PostgreSQL server (used when no database URL is given).

    \b
    Example:
        metaspace db start
        psql "$(metaspace db url)"
    """


def _embedded():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metaspace.store import embedded

        return embedded


@db.command("status")
@domain_errors
@format_option
def db_status(fmt: str) -> None:
    """Say whether the embedded server is initialised and running, where its data is and, when it runs, its
    PostgreSQL version and whether pg_stat_statements (loaded at start) and pg_prewarm are available.

    \b
    Example:
        metaspace db status --format json
    """
    state = _embedded().status()
    info = {
        "data_dir": str(state.data_dir),
        "initialised": state.initialised,
        "running": state.running,
        "pid": state.pid,
        "url": state.url,
        "server_version": state.server_version,
        "pg_stat_statements": state.pg_stat_statements,
        "pg_prewarm": state.pg_prewarm,
        "preloaded": state.preloaded,
    }
    if fmt == "json":
        echo_json(info)
    else:
        for key, value in info.items():
            click.echo(f"{key:18} {'' if value is None else value}")


@db.command("start")
@domain_errors
def db_start() -> None:
    """Start the embedded server (or find it running), warm its HNSW indexes, and print its URL.

    The HNSW graphs of the metaspace database are read into shared buffers with pg_prewarm, so the
    first searches after a restart run at warm speed; what was warmed goes to stderr, the URL to stdout.

    \b
    Example:
        metaspace db start
        psql "$(metaspace db start)"
    """
    url = _embedded().start()
    from metaspace.store.prewarm import prewarm_hnsw

    warmed = prewarm_hnsw(url)
    for index, blocks in warmed.indexes.items():
        size = blocks * warmed.block_size / 1024 / 1024
        click.echo(f"warmed {index}: {blocks:,} blocks ({size:,.1f} MB) into shared buffers", err=True)
    if warmed.note:
        click.echo(f"{warmed.database}: {warmed.note}", err=True)
    click.echo(redact(url))


@db.command("stop")
@domain_errors
def db_stop() -> None:
    """Stop the embedded server; its data stays for the next start.

    \b
    Example:
        metaspace db stop
    """
    click.echo("stopped" if _embedded().stop() else "not running")


@db.command("url")
@domain_errors
def db_url() -> None:
    """Print a URL of the embedded server's database that psql and psycopg accept (starting it if needed).

    \b
    Example:
        psql "$(metaspace db url)"
    """
    click.echo(redact(_embedded().start()))


@db.group("cluster")
def db_cluster() -> None:
    """A local Citus cluster (a coordinator and workers on this machine), kept under METASPACE_HOME beside the
    embedded server: for trying metaspace on a distributed engine before a team's own cluster.

    \b
    Example:
        metaspace db cluster start --citus-source citus-14.0.1.tar.gz --workers 2
        metaspace --database-url "$(metaspace db cluster url)" migrate
        metaspace db cluster stop
    """


@db_cluster.command("start")
@click.option("--citus-source", type=click.Path(dir_okay=False, path_type=Path),
              help="Citus's source tarball, built against the embedded server when no build is kept yet.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="How many workers (a running cluster with fewer gets the new ones added).")
@domain_errors
def db_cluster_start(citus_source: Path | None, workers: int) -> None:
    """Start the local Citus cluster (building Citus first when needed) and print the coordinator's URL.

    \b
    Example:
        metaspace db cluster start --citus-source ../shared/vendor/citus-14.0.1.tar.gz
    """
    from metaspace.store import cluster

    click.echo(cluster.start(citus_source, workers).url())


@db_cluster.command("url")
@domain_errors
def db_cluster_url() -> None:
    """Print the URL of the local cluster's coordinator.

    \b
    Example:
        metaspace --database-url "$(metaspace db cluster url)" search --run R1
    """
    from metaspace.store import cluster

    click.echo(cluster.current().url())


@db_cluster.command("stop")
@domain_errors
def db_cluster_stop() -> None:
    """Stop every node of the local cluster; its data stays for the next start.

    \b
    Example:
        metaspace db cluster stop
    """
    from metaspace.store import cluster

    stopped = cluster.stop()
    click.echo(f"stopped {stopped} node(s)" if stopped else "not running")


@db.command("check")
@database_url_option
@format_option
@domain_errors
def db_check(fmt: str) -> None:
    """Check that the store is whole after a crash, a kill or a full disk: no duplicate or orphaned vector, no
    run with part of its vectors, no invalid index. Exit status 1 when a check fails.

    Also counts the runs, those embedded for the active encoder version, those pending and those quarantined
    (pending runs are not a fault: embed-runs embeds them).

    \b
    Example:
        metaspace db check
        metaspace --database-url postgresql://me@db/quant db check --format json
    """
    from metaspace.store import integrity
    from metaspace.store.connection import connection

    with connection(database_url()) as conn:
        found = integrity.check(conn)
    if fmt == "json":
        echo_json({**found.as_dict(), "faults": found.faults})
    else:
        for name, value in found.as_dict().items():
            fault = name in integrity.FAULTS and value
            click.echo(f"{name:18} {value:>12,}{'  FAULT' if fault else ''}")
    if found.faults:
        raise click.exceptions.Exit(1)


@click.command("migrate")
@database_url_option
@click.option("--to", default="head", show_default=True, help="Upgrade to this revision.")
@click.option("--downgrade", metavar="REV", help="Downgrade to REV (a revision id or 'base').")
@click.option("--status", is_flag=True, help="Show current and head revisions, pending ones, pgvector.")
@click.option("--sql", is_flag=True, help="Print the SQL of the upgrade for a DBA instead of running it.")
@click.option(
    "--concurrently", is_flag=True,
    help="Build indexes with CREATE INDEX CONCURRENTLY (live databases: writers are not blocked).",
)
@click.option("--allow-data-loss", is_flag=True, help="Let a downgrade drop tables that hold rows.")
@format_option
@domain_errors
def migrate_command(
    to: str, downgrade: str | None, status: bool, sql: bool, concurrently: bool, allow_data_loss: bool, fmt: str,
) -> None:
    """Bring the database schema to this version of metaspace (Alembic, run from code).

    \b
    Example:
        metaspace migrate
        metaspace migrate --status
        metaspace migrate --sql > metaspace.sql
        metaspace migrate --downgrade 0003_runs_and_encoder_registry
    """
    if sql:
        click.echo(migrate(sql=True, to=to))
        return
    url = resolve_url(database_url())
    if status:
        _print_status(migrate(status=True, database_url=url), url, fmt)
        return
    messages = migrate(to=to, downgrade=downgrade, concurrently=concurrently, allow_data_loss=allow_data_loss,
                       database_url=url)
    done = f"downgraded to {downgrade}" if downgrade else f"schema at {migrate(status=True, database_url=url).current}"
    for line in messages:
        click.echo(line, err=True)
    if fmt == "json":
        echo_json({"result": done, "messages": messages, "database": redact(url)})
    else:
        click.echo(f"{done} ({redact(url)})")


def _print_status(state: migrations.Status, url: str, fmt: str) -> None:
    info = {
        "database": redact(url),
        "server": state.server,
        "pgvector": state.pgvector,
        "current": state.current,
        "head": state.head,
        "up_to_date": state.up_to_date,
        "pending": state.pending,
        "invalid_indexes": state.invalid_indexes,
    }
    if fmt == "json":
        echo_json(info)
        return
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        click.echo(f"{key:16} {value}")
    if state.invalid_indexes:
        click.echo("an interrupted CONCURRENTLY build left invalid indexes: DROP them and run migrate again", err=True)
