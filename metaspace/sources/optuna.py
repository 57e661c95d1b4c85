"""Runs from an Optuna study, read through Optuna's storage API; and warm starts back into a study.

Default mapping (override with a map file, see :mod:`metaspace.sources.mapping`): each COMPLETE trial is
a run; params → config (dotted names nest); the objective values → outcome, named by the study's
``metric_names`` when set, else ``value`` (one objective) or ``values_0``, ``values_1``, ...; user
attributes ``outcome.*`` → outcome; user and system attributes ``env.*`` and the study's user attributes
→ env; run_id = ``optuna:<study>:<trial number>``; as_of_date = the date the trial completed;
config_id = attribute ``metaspace.config_id`` else a hash of the config; strategy_id = attribute
``metaspace.strategy_id`` else the study's name. Pruned, failed and unfinished trials are skipped and
counted with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from metaspace.encoders.features import flatten
from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.pipeline import import_records
from metaspace.sources.common import Progress, SourceImportSummary, first_line, local_file, shown
from metaspace.sources.mapping import FieldMap, as_of_from, assemble, config_hash, finite, load_map

SOURCE = "optuna"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise MetaspaceError("this needs the optuna extra: pip install 'metaspace[optuna]'") from None
    return optuna


def _study_names(storage: str) -> list[str]:
    """Every study name in the storage, or a MetaspaceError that says why the storage cannot be read."""
    optuna = _optuna()
    where = shown(storage)
    path = local_file(storage, "sqlite")
    if path is not None and not Path(path).is_file():
        raise MetaspaceError(f"no Optuna storage at {where}: {path} does not exist")
    try:
        return optuna.get_all_study_names(storage=storage)
    except Exception as exc:  # noqa: BLE001 (SQLAlchemy, driver and URL errors all mean: cannot open)
        raise MetaspaceError(f"cannot open the Optuna storage at {where}: {first_line(exc)}") from None


def load_study(storage: str, study: str, names: list[str] | None = None):
    """The Optuna study ``study`` in ``storage``, or a MetaspaceError that says what is wrong."""
    names = _study_names(storage) if names is None else names
    if study not in names:
        raise MetaspaceError(f"no Optuna study named {study!r} in {shown(storage)} "
                             f"(studies: {', '.join(sorted(names)) or 'none'})")
    return _optuna().load_study(study_name=study, storage=storage)


def storage_location(storage: str) -> str:
    """Where a storage is, without credentials (a password change does not move it): a SQLite file's absolute
    path, else the URL without its user and password."""
    path = local_file(storage, "sqlite")
    if path is not None:
        return f"sqlite:///{Path(path).resolve()}"
    if "://" in storage:
        parts = urlsplit(storage)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return storage


def _run_prefix(source_name: str | None, study: str) -> str:
    return f"{SOURCE}:{study}" if source_name is None else f"{SOURCE}:{source_name}:{study}"


def _refuse_other_sources(names: list[str], location: str, database_url: str | None) -> None:
    """A study name already imported from another storage is refused, never overwritten."""
    from metaspace.store import runs as run_store
    from metaspace.store.connection import connection

    with connection(database_url, autocommit=True) as conn:
        for name in names:
            others = [s for s in run_store.sources_of(conn, f"^{re.escape(_run_prefix(None, name))}:[0-9]+$", SOURCE)
                      if s is not None and s != location]
            if others:
                raise MetaspaceError(
                    f"a study named {name!r} was already imported from {others[0]}; this one is in {location}: give "
                    f"--source-name NAME to import it beside the other (its runs become optuna:NAME:{name}:<trial>)")


def import_optuna(
    storage: str, *, study: str | Sequence[str] = (), all_studies: bool = False, source_name: str | None = None,
    map: str | Path | dict[str, Any] | FieldMap | None = None,  # noqa: A002
    database_url: str | None = None, rejects: str | None = None, strict: bool = False, batch_size: int = 5_000,
    progress: Progress | None = None,
) -> SourceImportSummary:
    """Import the completed trials of Optuna studies as run records, the way import-runs does: upserted by
    run_id (a rerun leaves unchanged trials alone), invalid ones rejected with the run id and the field;
    pruned, failed and unfinished trials skipped with the reason. ``study``: one name or several; with
    ``all_studies``, every study of the storage. All of them land in one import (each batch whole).

    Run ids are ``optuna:<study>:<trial>``, the storage's location recorded with each run; a study of the
    same name imported from another storage is refused (never overwritten) unless ``source_name`` is given,
    whose runs are then ``optuna:<source_name>:<study>:<trial>``."""
    wanted = [study] if isinstance(study, str) else list(study)
    if all_studies and wanted:
        raise MetaspaceError("give --study names or --all-studies, not both")
    if not all_studies and not wanted:
        raise MetaspaceError("name a study with --study (repeat it for several), or give --all-studies")
    fmap = load_map(map)
    names = _study_names(storage)
    if all_studies:
        wanted = sorted(names)
        if not wanted:
            raise MetaspaceError(f"the Optuna storage at {shown(storage)} holds no study")
    studies = [load_study(storage, name, names) for name in dict.fromkeys(wanted)]
    if source_name is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", source_name):
        raise MetaspaceError(f"--source-name {source_name!r}: use letters, digits, '.', '_' or '-'")
    location = source_name or storage_location(storage)
    if source_name is None:
        _refuse_other_sources([s.study_name for s in studies], location, database_url)
    skips: list[dict[str, Any]] = []

    def records() -> Iterator[tuple[str, int, Any]]:
        for loaded in studies:
            name = loaded.study_name
            values = _value_names(loaded)
            study_attrs = dict(loaded.user_attrs)
            for trial in loaded.get_trials(deepcopy=False):
                if progress:
                    progress(1)
                run_id = f"{_run_prefix(source_name, name)}:{trial.number}"
                reason = _skip_reason(trial)
                if reason:
                    skips.append({"run_id": run_id, "state": trial.state.name, "reason": reason})
                    continue
                yield f"optuna:{name}", trial.number, _record(run_id, name, trial, values, study_attrs, fmap,
                                                              location)

    summary = import_records(records(), database_url=database_url, rejects=rejects, strict=strict,
                             batch_size=batch_size)
    notes = [f"imported {len(studies)} studies: {', '.join(s.study_name for s in studies[:8])}"
             f"{' ...' if len(studies) > 8 else ''}"] if len(studies) > 1 else []
    return SourceImportSummary.of(summary, skips, notes)


def _value_names(study) -> list[str]:
    named = study.metric_names
    if named:
        return list(named)
    count = len(study.directions)
    return ["value"] if count == 1 else [f"values_{i}" for i in range(count)]


def _skip_reason(trial) -> str | None:
    state = trial.state.name
    if state == "COMPLETE":
        return None
    if state == "PRUNED":
        return f"pruned at step {trial.last_step}" if trial.last_step is not None else "pruned"
    if state == "FAIL":
        return "failed (the objective raised or returned no valid value)"
    if state == "WAITING":
        return "waiting: enqueued, not run yet"
    return "still running: imported once it completes"


def _default_branch(fmap: FieldMap):
    def branch(kind: str, name: str) -> str | None:
        if kind == "params":
            return "config"
        if kind == "values":
            return "outcome"
        if kind == "study_user_attrs":
            return "env"
        if kind in ("user_attrs", "system_attrs") and fmap.env_prefix and name.startswith(fmap.env_prefix):
            return "env"
        if kind == "user_attrs" and fmap.outcome_prefix and name.startswith(fmap.outcome_prefix):
            return "outcome"
        return None

    return branch


def _record(run_id: str, study: str, trial, names: list[str], study_attrs: dict[str, Any],
            fmap: FieldMap, source: str) -> dict[str, Any] | InvalidRecordError:
    values = trial.values or []
    items = [*(("study_user_attrs", k, v) for k, v in study_attrs.items()),
             *(("params", k, v) for k, v in trial.params.items()),
             *(("values", name, v) for name, v in zip(names, values)),
             *(("user_attrs", k, v) for k, v in trial.user_attrs.items()),
             *(("system_attrs", k, v) for k, v in trial.system_attrs.items())]
    parts = assemble(items, fmap, _default_branch(fmap), lambda _kind, value: finite(value))
    completed = trial.datetime_complete
    try:
        as_of = as_of_from(parts.special.get("as_of_date"), run_id, fmap, completed.date() if completed else None)
    except InvalidRecordError as exc:
        return exc
    config = parts.branches["config"]
    return {
        "run_id": run_id,
        "as_of_date": as_of,
        "config_id": parts.special.get("config_id") or config_hash(config),
        "strategy_id": parts.special.get("strategy_id") or study,
        "config": config,
        "env": parts.branches["env"],
        "outcome": parts.branches["outcome"],
        SOURCE: {"study": study, "trial": trial.number, "source": source,
                 "datetime_complete": completed.isoformat() if completed else None},
    }


# -- warm start -------------------------------------------------------------------------------------


@dataclass
class WarmStart:
    """What a warm start put into the study, and what it did not, with the reason."""

    enqueued: list[dict[str, Any]] = field(default_factory=list)
    reported: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def optuna_warm_start(
    study, env: Mapping[str, Any], *, as_of: Any = None, k: int = 5, objective: str | None = None,
    higher_is_better: bool = True, distributions: Mapping[str, Any] | None = None, database_url: str | None = None,
    **suggest_options: Any,
) -> WarmStart:
    """Enqueue the configs metaspace suggests for ``env`` (as of a date) as the study's next trials.

    Each suggested parameter is checked against the study's distributions (``distributions``, else those
    of its trials so far; a study with neither is refused): a parameter the study does not have, or a value
    outside its distribution, is not enqueued (the sampler chooses it) and is reported. A config already tried in the study is reported
    and not enqueued again. Each enqueued trial carries ``metaspace.config_id`` as a user attribute, so
    that import-optuna files its result under the same config.
    """
    from metaspace.queries import suggest

    result = WarmStart()
    known = dict(distributions) if distributions is not None else _study_distributions(study)
    if not known:
        raise MetaspaceError(
            "the study has no trials yet, so its parameters' distributions are not known and the suggested params "
            "cannot be checked against them: pass distributions={name: optuna distribution} (the ones the "
            "objective asks for), or warm-start after a first trial")
    tried = study.get_trials(deepcopy=False)
    suggestions = suggest(env, k=k, as_of=as_of, objective=objective, higher_is_better=higher_is_better,
                          database_url=database_url, **suggest_options)
    for suggestion in suggestions:
        config_id = suggestion.get("config_id")
        params: dict[str, Any] = {}
        for name, value in flatten(suggestion.get("config") or {}).items():
            reason = _misfit(known.get(name), value, checked=bool(known))
            if reason:
                result.reported.append({"config_id": config_id, "param": name, "value": value, "reason": reason})
            else:
                params[name] = value
        twin = next((t for t in tried if _agrees(t, params)), None)
        earlier = next((e for e in result.enqueued if e["params"] == params), None)
        if not params or twin is not None or earlier is not None:
            if not params:
                reason = "no parameter left to enqueue"
            elif twin is not None:
                reason = f"already in the study as trial {twin.number} ({twin.state.name})"
            else:
                reason = f"the same params as config {earlier['config_id']} once the rest are left out"
            result.reported.append({"config_id": config_id, "param": None, "value": None, "reason": reason})
            continue
        study.enqueue_trial(params, user_attrs={"metaspace.config_id": config_id})
        result.enqueued.append({"config_id": config_id, "params": params})
    return result


def _agrees(trial, params: dict[str, Any]) -> bool:
    """The trial ran (or, enqueued, will run) with these values for these params."""
    known = trial.params or trial.system_attrs.get("fixed_params") or {}
    return all(name in known and known[name] == value for name, value in params.items())


def _study_distributions(study) -> dict[str, Any]:
    known: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        known.update(trial.distributions)
    return known


def _misfit(distribution, value: Any, *, checked: bool) -> str | None:
    """Why ``value`` cannot be enqueued for a parameter with this distribution (None: it can)."""
    if isinstance(value, list):
        return "a list: an Optuna parameter holds one value"
    if not checked:
        return None
    if distribution is None:
        return "not a parameter of the study"
    try:
        internal = distribution.to_internal_repr(value)
    except (TypeError, ValueError):
        return f"not a value of {distribution}"
    # _contains is the check Optuna itself applies to enqueued values (it warns, then runs them anyway).
    if not distribution._contains(internal):
        return f"outside {distribution}"
    return None


__all__ = ["WarmStart", "import_optuna", "load_study", "optuna_warm_start"]
