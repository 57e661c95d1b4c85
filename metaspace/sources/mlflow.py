"""Runs from an MLflow tracking store, read through MLflow's client API (never its tables).

Default mapping (override with a map file, see :mod:`metaspace.sources.mapping`): params → config (text
parsed back into numbers and booleans; dotted names nest); metrics → outcome (latest value); tags
``env.*`` and a logged JSON artifact ``env.json`` → env; run_id = the MLflow run id; as_of_date = the
run's end time (UTC date); config_id = tag ``metaspace.config_id`` else a hash of the config;
strategy_id = tag ``metaspace.strategy_id`` else the experiment's name.

Incremental: each record keeps ``extra.mlflow.end_time``; the next import of an experiment asks MLflow
only for runs that ended after the latest one stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.pipeline import import_records
from metaspace.records import parse_date
from metaspace.sources.common import Progress, SourceImportSummary, first_line, local_file, shown
from metaspace.sources.mapping import (
    FieldMap,
    as_of_from,
    assemble,
    config_hash,
    finite,
    load_map,
    parse_text,
)
from metaspace.store import runs as run_store
from metaspace.store.connection import connection

SOURCE = "mlflow"
PAGE = 1000


def import_mlflow(
    tracking_uri: str | None, *, experiment: Sequence[str] = (), since: str | dt.date | None = None,
    map: str | Path | dict[str, Any] | FieldMap | None = None, database_url: str | None = None,  # noqa: A002
    rejects: str | None = None, strict: bool = False, batch_size: int = 5_000, progress: Progress | None = None,
) -> SourceImportSummary:
    """Import the finished runs of an MLflow tracking store (all its experiments, or those named) as run
    records, the way import-runs does: upserted by run_id, invalid ones rejected with the MLflow run id and
    the field. Only runs that ended after the last import of their experiment are read, unless ``since``
    (a date) asks for every run that ended on or after it."""
    fmap = load_map(map)
    since_date = parse_date(since, "--since")
    client = _client(tracking_uri)
    where = shown(tracking_uri)
    experiments = _guarded(where, _experiments, client, list(experiment))
    notes: list[str] = []
    with connection(database_url) as conn:
        cursors = {e.experiment_id: run_store.import_cursor(conn, SOURCE, _scope(e), "end_time") for e in experiments}
    for e in experiments:
        if since_date is None and cursors[e.experiment_id] is not None:
            ended = dt.datetime.fromtimestamp(cursors[e.experiment_id] / 1000, dt.timezone.utc)
            notes.append(f"experiment {e.name!r}: only runs that ended after {ended:%Y-%m-%d %H:%M:%S} UTC "
                         "(the last import); --since DATE reads older ones again")
    skips: list[dict[str, Any]] = []
    records = _records(client, where, experiments, cursors, since_date, fmap, skips, progress)
    with _quiet_downloads():
        summary = import_records(records, database_url=database_url, rejects=rejects, strict=strict,
                                 batch_size=batch_size)
    return SourceImportSummary.of(summary, skips, notes)


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per downloaded env.json (ours counts the runs), unless the user asks for it."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _client(tracking_uri: str | None):
    if not tracking_uri:
        raise MetaspaceError("give --tracking-uri (or set MLFLOW_TRACKING_URI)")
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise MetaspaceError("importing from MLflow needs the mlflow extra: pip install 'metaspace[mlflow]'") from None
    where = shown(tracking_uri)
    path = local_file(tracking_uri, "sqlite")
    if path is not None and not Path(path).is_file():
        raise MetaspaceError(f"no MLflow tracking store at {where}: {path} does not exist")
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        folder = tracking_uri.removeprefix("file://").removeprefix("file:")
        if not Path(folder).is_dir():
            raise MetaspaceError(f"no MLflow tracking store at {where}: {folder} is not a directory")
    if tracking_uri.startswith(("http://", "https://")):
        _probe_server(tracking_uri, where)
    return _guarded(where, MlflowClient, tracking_uri=tracking_uri)


def _probe_server(uri: str, where: str) -> None:
    """One request without retries, so that a server that is down fails now, not after MLflow's retries."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as exc:
        raise MetaspaceError(f"cannot reach the MLflow tracking server at {where}: {first_line(exc)}") from None


def _guarded(where: str, call, *args: Any, **kwargs: Any):
    """``call(*args, **kwargs)``; an error of the tracking store becomes a MetaspaceError naming the store."""
    try:
        return call(*args, **kwargs)
    except MetaspaceError:
        raise
    except Exception as exc:  # noqa: BLE001 (MLflow, SQLAlchemy, requests and OS errors all mean: cannot read)
        raise MetaspaceError(f"cannot read the MLflow tracking store at {where}: {first_line(exc)}") from None


def _experiments(client, names: list[str]) -> list[Any]:
    if not names:
        return list(client.search_experiments())
    found = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise MetaspaceError(f"no MLflow experiment named {name!r} (experiments: {known})")
        found.append(experiment)
    return found


def _scope(experiment) -> dict[str, Any]:
    return {"experiment_id": str(experiment.experiment_id), "experiment_created": experiment.creation_time}


def _ms(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp() * 1000)


def _records(client, where: str, experiments, cursors: dict[str, int | None], since: dt.date | None,
             fmap: FieldMap, skips: list[dict[str, Any]], progress: Progress | None) -> Iterator[tuple[str, int, Any]]:
    position = 0
    with tempfile.TemporaryDirectory(prefix="metaspace-mlflow-") as scratch:
        for experiment in experiments:
            if since is not None:
                condition = f"attributes.end_time >= {_ms(since)}"
            elif cursors[experiment.experiment_id] is not None:
                condition = f"attributes.end_time > {cursors[experiment.experiment_id]}"
            else:
                condition = ""
            token = None
            while True:
                page = _guarded(where, client.search_runs, [experiment.experiment_id], condition,
                                max_results=PAGE, order_by=["attributes.end_time ASC"], page_token=token)
                for run in page:
                    if progress:
                        progress(1)
                    if run.info.status != "FINISHED":
                        reason = "still running: imported once it finishes" if run.info.status in (
                            "RUNNING", "SCHEDULED") else f"status {run.info.status}"
                        skips.append({"run_id": run.info.run_id, "state": run.info.status, "reason": reason})
                        continue
                    position += 1
                    yield f"mlflow:{experiment.name}", position, _record(client, where, experiment, run, fmap, scratch)
                token = page.token
                if not token:
                    break


def _default_branch(env_prefix: str):
    def branch(kind: str, name: str) -> str | None:
        if kind == "params":
            return "config"
        if kind == "metrics":
            return "outcome"
        if kind == "tags" and env_prefix and name.startswith(env_prefix):
            return "env"
        return None

    return branch


def _parse(kind: str, value: Any) -> Any:
    return finite(value) if kind == "metrics" else parse_text(value)


def _record(client, where: str, experiment, run, fmap: FieldMap, scratch: str) -> dict[str, Any] | InvalidRecordError:
    info, data = run.info, run.data
    run_id = info.run_id
    items = [*(("params", k, v) for k, v in data.params.items()),
             *(("metrics", k, v) for k, v in data.metrics.items()),
             *(("tags", k, v) for k, v in data.tags.items() if not k.startswith("mlflow."))]
    parts = assemble(items, fmap, _default_branch(fmap.env_prefix), _parse)
    try:
        env = parts.branches["env"]
        if fmap.env_artifact:
            logged = _env_artifact(client, where, run_id, fmap.env_artifact, scratch)
            env = _merge(logged, env) if logged is not None else env
        ended = dt.datetime.fromtimestamp(info.end_time / 1000, dt.timezone.utc).date() if info.end_time else None
        as_of = as_of_from(parts.special.get("as_of_date"), run_id, fmap, ended)
    except InvalidRecordError as exc:
        return exc
    config = parts.branches["config"]
    # The tags no branch took (a user's own: not MLflow's mlflow.*), kept with the run rather than dropped.
    branch_of = _default_branch(fmap.env_prefix)
    kept = {k: v for k, v in data.tags.items() if not k.startswith("mlflow.") and not fmap.is_special("tags", k)
            and (fmap.explicit("tags", k) or branch_of("tags", k)) is None}
    return {
        "run_id": run_id,
        "as_of_date": as_of,
        "config_id": parts.special.get("config_id") or config_hash(config),
        "strategy_id": parts.special.get("strategy_id") or experiment.name,
        "config": config,
        "env": env,
        "outcome": parts.branches["outcome"],
        SOURCE: {**_scope(experiment), "end_time": info.end_time, "run_name": info.run_name,
                 **({"tags": dict(sorted(kept.items()))} if kept else {})},
    }


def _env_artifact(client, where: str, run_id: str, name: str, scratch: str) -> dict[str, Any] | None:
    folder, _, _file = name.rpartition("/")
    listed = _guarded(where, client.list_artifacts, run_id, folder or None)
    if not any(entry.path == name and not entry.is_dir for entry in listed):
        return None
    local = _guarded(where, client.download_artifacts, run_id, name, scratch)
    try:
        logged = json.loads(Path(local).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRecordError(run_id, "env", f"artifact {name} is not valid JSON: {first_line(exc)}") from None
    finally:
        Path(local).unlink(missing_ok=True)
    if not isinstance(logged, dict):
        raise InvalidRecordError(run_id, "env", f"artifact {name} must hold a JSON object, got {type(logged).__name__}")
    return logged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out
