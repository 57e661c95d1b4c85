"""``metaspace search`` and ``metaspace suggest``: one answer block per input, in input order."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import click

from metaspace.cli.common import database_url, database_url_option, domain_errors, echo_json, echo_table
from metaspace.errors import MetaspaceError
from metaspace.names import SPACES
from metaspace.queries import (
    DISTINCT_COLUMNS,
    HISTORY_RUNS,
    MATCH_COLUMNS,
    Answer,
    optuna_params,
    queries_from,
    read_inputs,
    search_many,
    suggest_many,
)

MATCH_TABLE = ("run_id", "config_id", "strategy_id", "as_of_date", "distance")
DISTINCT_TABLE = ("entity_id", "distance", "runs", "first_date", "last_date", "first_run")
SUGGEST_TABLE = ("config_id", "score", "runs", "mean_distance", "objective_mean", "objective_std", "best_run_id",
                 "deflated_confidence")


def _header(answer: Answer, index: int) -> str:
    as_of = f", as of {answer.query.as_of.isoformat()}" if answer.query.as_of else ""
    return f"# {index}: {answer.query.label} ({answer.query.space} space{as_of})"


def _emit(answers, fmt: str, table_columns: tuple[str, ...], csv_columns: tuple[str, ...] = MATCH_COLUMNS) -> int:
    """Print each answer as it comes; notes (imputations) go to stderr. Returns the number of answers."""
    writer = None
    count = 0
    for count, answer in enumerate(answers, start=1):
        for note in answer.notes:
            click.echo(f"note: {note}", err=True)
        if fmt == "json":
            echo_json({"input": answer.query.label, "space": answer.query.space,
                       "as_of": answer.query.as_of.isoformat() if answer.query.as_of else None,
                       "rows": answer.rows, "notes": answer.notes})
        elif fmt == "optuna":
            echo_json([optuna_params(row) for row in answer.rows])
        elif fmt == "csv":
            if writer is None:
                columns = ["input", "rank", *csv_columns]
                writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
                writer.writeheader()
            for rank, row in enumerate(answer.rows, start=1):
                writer.writerow({"input": answer.query.label, "rank": rank}
                                | {key: json.dumps(value) if isinstance(value, (dict, list)) else value
                                   for key, value in row.items()})
        else:
            if count > 1:
                click.echo()
            click.echo(_header(answer, count))
            echo_table(answer.rows, table_columns)
    return count


def _inputs(run: tuple[str, ...], files: dict[str, str | None]) -> tuple[str, list[tuple[str, Any]]]:
    chosen = [kind for kind, path in files.items() if path] + (["run"] if run else [])
    if len(chosen) != 1:
        raise MetaspaceError("give exactly one of --run, --env, --config, --outcome, --record")
    kind = chosen[0]
    if kind == "run":
        return kind, [(f"run {run_id}", run_id) for run_id in run]
    return kind, read_inputs(files[kind])


@click.command("search")
@database_url_option
@click.option("--run", "run", multiple=True, metavar="ID", help="Runs like this stored run (repeatable).")
@click.option("--env", "env", metavar="FILE", help="Runs in environments like these (JSON or JSONL; - for stdin).")
@click.option("--config", "config", metavar="FILE", help="Runs with configs like these.")
@click.option("--outcome", "outcome", metavar="FILE", help="Runs that behaved like these outcomes.")
@click.option("--record", "record", metavar="FILE", help="Runs like these (partial) run records.")
@click.option("--space", type=click.Choice(SPACES), help="Where to compare: joint, config, env or outcome "
              "(default: joint for --run/--record, else the kind of the input).")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000), help="How many runs.")
@click.option("--as-of", metavar="DATE",
              help="Only runs dated on or before DATE (a cap: a line's own as_of_date may be earlier, never later).")
@click.option("--strategy", "strategy", multiple=True, metavar="ID", help="Only runs of this strategy (repeatable).")
@click.option("--config-id", "config_id", multiple=True, metavar="ID", help="Only runs of this config (repeatable).")
@click.option("--scope", metavar="JSON", help="Only runs whose entity_scope contains this JSON object.")
@click.option("--exact", is_flag=True, help="Exact search (no index): the reference answer, slower.")
@click.option("--distinct", is_flag=True,
              help="Environments (configs, outcomes) like it, each once, with its runs' count and dates, instead "
                   "of runs (a branch space: --space env, config or outcome).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="json: one JSON object per input (input, space, as_of, rows, notes), one per line, in order.")
@domain_errors
def search_command(run, env, config, outcome, record, space, k, as_of, strategy, config_id, scope, exact,
                   distinct, fmt) -> None:
    """Find the stored runs nearest to a run, an env, a config, an outcome or a record.

    A FILE holds one JSON object or many (JSONL): each gets its own answer, in order, so a thousand
    questions cost one start-up. A line that is a run record with its own as_of_date is asked as of that
    date (replaying a walk-forward), capped by --as-of. For the joint space, a record missing a branch
    has it imputed from the encoder version (the mean of the runs it was fitted on), and says so on stderr.

    \b
    Example:
        metaspace search --run BT_RUN_12345 -k 5
        metaspace search --env today_env.json --as-of 2024-03-29 --strategy US_EQ_CORE
        metaspace search --record decisions.jsonl --format json > answers.jsonl
        metaspace search --env today_env.json --distinct -k 5
    """
    kind, inputs = _inputs(run, {"env": env, "config": config, "outcome": outcome, "record": record})
    scope_obj = _scope(scope)
    queries = queries_from(kind, inputs, space=space, as_of=as_of)
    answers = search_many(queries, k=k, strategy=strategy, config_id=config_id, scope=scope_obj, exact=exact,
                          distinct=distinct, database_url=database_url())
    _emit(answers, fmt, *((DISTINCT_TABLE, DISTINCT_COLUMNS) if distinct else (MATCH_TABLE, MATCH_COLUMNS)))


def _scope(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MetaspaceError(f"--scope is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MetaspaceError("--scope must be a JSON object, for example '{\"source\": \"meta-config-env\"}'")
    return value


class _HistoryRuns(click.ParamType):
    """A number of runs (1 or more), or ``all`` (None: every run known at the date)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            runs = int(value)
        except ValueError:
            runs = 0
        if runs < 1:
            self.fail(f"{value!r} is not a number of runs (1 or more) or 'all'", param, ctx)
        return runs


@click.command("suggest")
@database_url_option
@click.option("--env", "env", required=True, metavar="FILE",
              help="Target environments (JSON or JSONL; a line may be a record with its own as_of_date).")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 1000), help="How many configs.")
@click.option("--objective", metavar="KEY",
              help="The outcome key to rank by (default: the only numeric outcome key, else the one named sharpe, at any depth).")
@click.option("--higher-is-better/--lower-is-better", default=True, show_default=True)
@click.option("--as-of", metavar="DATE", help="Only evidence dated on or before DATE (a cap: a line's own date may "
              "be earlier, never later).")
@click.option("--neighbours", default=1000, show_default=True, type=click.IntRange(1, 10000),
              help="Nearest runs in env space taken as evidence.")
@click.option("--min-runs", default=3, show_default=True, type=click.IntRange(1),
              help="Evidence a config needs: neighbouring environments where it ran.")
@click.option("--strategy", "strategy", multiple=True, metavar="ID", help="Only runs of this strategy (repeatable).")
@click.option("--exact", is_flag=True, help="Take the evidence by exact search.")
@click.option("--history", type=_HistoryRuns(), default=HISTORY_RUNS, show_default=True,
              help="The configs' records read the latest N runs known at the date, shared among the candidates "
              "(all: every run).")
@click.option("--horizon", type=click.IntRange(1), metavar="DAYS",
              help="Days of one outcome window, the block evidence is counted in (default: from test_start).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "optuna"]), default="table", show_default=True,
              help="optuna: per input, a JSON array of parameter dicts for study.enqueue_trial.")
@domain_errors
def suggest_command(env, k, objective, higher_is_better, as_of, neighbours, min_runs, strategy, exact, history,
                    horizon, fmt) -> None:
    """Suggest configs that worked in environments like the target, as of a date.

    Takes the nearest runs in env space (as of the date), judges each config against the others run in
    the same environment, and ranks by its record over the history known then, moved toward what it did in
    environments like this as far as that evidence holds up, and as far as it held up in the replayed past
    (historical_db.suggest_configs, with the calibration metaspace evaluate --save-calibration stored). Each comes with
    its evidence and a confidence that its pick beats a random one. Revalidate by backtest.

    \b
    Example:
        metaspace suggest --env stressed_env.json --as-of 2020-03-31
        metaspace suggest --env envs.jsonl --objective outcome.max_drawdown --lower-is-better --format json
        metaspace suggest --env today.json --format optuna   # then: study.enqueue_trial(params)
    """
    inputs = read_inputs(env)
    queries = queries_from("env", inputs, space="env", as_of=as_of)
    answers = suggest_many(queries, k=k, objective=objective, higher_is_better=higher_is_better,
                           neighbours=neighbours, min_runs=min_runs, strategy=strategy, exact=exact,
                           history=history, horizon=horizon, database_url=database_url())
    _emit(answers, fmt, SUGGEST_TABLE)
