"""``metaspace import-runs`` and ``metaspace embed-runs``: the backfill and the nightly path."""

from __future__ import annotations

import json
from pathlib import Path

import click

from metaspace.cli.common import (
    database_url,
    database_url_option,
    domain_errors,
    echo_json,
    progress_bar,
    with_total,
)
from metaspace.errors import MetaspaceError
from metaspace.pipeline import embed_runs, import_runs


@click.command("import-runs")
@database_url_option
@click.argument("paths", nargs=-1, required=True)
@click.option("--rejects", type=click.Path(dir_okay=False), help="Write each rejected record (line, reason) here, as JSONL.")
@click.option("--strict", is_flag=True, help="Any invalid record is an error: nothing is imported.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Records per transaction.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@domain_errors
def import_runs_command(paths: tuple[str, ...], rejects: str | None, strict: bool, batch_size: int, fmt: str) -> None:
    """Load run records (JSONL, .jsonl.gz, CSV with dotted columns, Parquet; - for stdin) into the database.

    Valid records are upserted by run_id: new ones inserted, changed ones updated (their vectors are
    re-embedded by the next embed-runs), unchanged ones left alone. Invalid ones are reported with their
    line and reason. Each batch lands whole or not at all.

    \b
    Example:
        metaspace import-runs runs.jsonl.gz --rejects rejects.jsonl
        cat runs.jsonl | metaspace import-runs - --format json
    """
    with progress_bar() as bar:
        summary = import_runs(paths, database_url=database_url(), rejects=rejects, strict=strict,
                                  batch_size=batch_size, progress=bar.update)
    for item in summary.rejects[:10]:
        click.echo(f"rejected {item['source']}:{item['line']} run {item['run_id']!r} field {item['field']!r}: "
                   f"{item['reason']}", err=True)
    if summary.rejected > 10:
        click.echo(f"... and {summary.rejected - 10} more rejected" + (f" (all in {rejects})" if rejects else ""), err=True)
    if fmt == "json":
        echo_json({k: v for k, v in summary.as_dict().items() if k != "rejects"})
    else:
        click.echo(f"read {summary.read}, inserted {summary.inserted}, updated {summary.updated}, "
                   f"unchanged {summary.unchanged}, rejected {summary.rejected}")


@click.command("embed-runs")
@database_url_option
@click.option("--rebuild", is_flag=True, help="Fit a new encoder version and re-embed every run for it; "
              "the old vectors stay queryable until the switch.")
@click.option("--refit", is_flag=True, help="Same as --rebuild: refitting always makes a new version.")
@click.option("--since", metavar="DATE", help="Only runs with as_of_date on or after DATE.")
@click.option("--strategy", "strategy", multiple=True, metavar="ID", help="Only runs of this strategy (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N runs.")
@click.option("--schema", "schema", type=click.Path(exists=True, dir_okay=False),
              help="JSON overrides for a new fit: {branch: {key: {ignore|transform|kind|weight}}}.")
@click.option("--fit-until", metavar="DATE",
              help="Fit a new encoder version only on runs known by DATE (as_of_date on or before it), so that "
                   "answers as of later dates use no scaling or category learned from after them.")
@click.option("--indexed-spaces", metavar="SPACES",
              help="The spaces that get an HNSW graph, comma-separated (joint,env), or all, none, default; stored "
                   "in the database for every later embed-runs. Other spaces answer by exact search.")
@click.option("--index-min-vectors", type=click.IntRange(min=0), metavar="N",
              help="Build a space's HNSW graph only once it holds N vectors (default 10000; below it the exact "
                   "scan answers in milliseconds); stored like --indexed-spaces.")
@click.option("--asof-exact-runs", type=click.IntRange(min=1), metavar="N",
              help="As-of prefix graphs go down to dates leaving about N runs of a space, and a search as of an "
                   "earlier date answers exactly (default 2000, for k = 10); stored like --indexed-spaces.")
@click.option("--graph-type", type=click.Choice(["halfvec", "vector", "default"]),
              help="The kind of HNSW graph: halfvec (0.57x the memory, recall within 0.005) or vector (float32) for "
                   "every space; default: halfvec, and float32 for joint (the graph the plain "
                   "ORDER BY vector <-> q uses). Stored like --indexed-spaces.")
@click.option("--dry-run", is_flag=True, help="Say what would be done, change nothing.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Runs per transaction.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@domain_errors
def embed_runs_command(rebuild: bool, refit: bool, since: str | None, strategy: tuple[str, ...], limit: int | None,
                       schema: str | None, fit_until: str | None, indexed_spaces: str | None,
                       index_min_vectors: int | None, asof_exact_runs: int | None, graph_type: str | None,
                       dry_run: bool, batch_size: int, fmt: str) -> None:
    """Embed the stored runs that lack a vector (fitting the encoders first when none is registered).

    Writes the joint vector (META_CONFIG_ENV_V0, joint-meta-config-env-v1) and the config, env and outcome
    vectors of each run. Runs that cannot be encoded are quarantined with the reason and do not stop the
    rest. Safe to rerun, to kill and rerun, and to run twice at once.

    \b
    Example:
        metaspace embed-runs
        metaspace embed-runs --since 2024-01-01 --strategy US_EQ_CORE --dry-run
        metaspace embed-runs --rebuild --format json
        metaspace embed-runs --fit-until 2019-12-31
        metaspace embed-runs --indexed-spaces joint,env
    """
    try:
        overrides = json.loads(Path(schema).read_text()) if schema else None
    except ValueError as exc:
        raise MetaspaceError(f"--schema {schema}: not valid JSON: {exc}") from None
    with progress_bar() as bar:
        summary = embed_runs(database_url=database_url(), refit=refit, rebuild=rebuild, since=since,
                                 strategy=strategy, limit=limit, dry_run=dry_run, batch_size=batch_size,
                                 schema=overrides, fit_until=fit_until, indexed_spaces=indexed_spaces,
                                 index_min_vectors=index_min_vectors, asof_exact_runs=asof_exact_runs,
                                 graph_type=graph_type,
                                 progress=with_total(bar))
    for note in summary.notes:
        click.echo(note, err=True)
    for entry in summary.quarantined[:10]:
        click.echo(f"quarantined run {entry['run_id']!r} field {entry['field']!r}: {entry['reason']}", err=True)
    if fmt == "json":
        echo_json(summary.as_dict())
        return
    rate = summary.embedded / summary.seconds if summary.seconds else 0.0
    verb = "would embed" if dry_run else "embedded"
    count = summary.pending if dry_run else summary.embedded
    click.echo(f"{verb} {count} run(s) with encoder version {summary.version}, quarantined "
               f"{len(summary.quarantined)}, {summary.seconds:.1f} s ({rate:.0f} runs/s)")
