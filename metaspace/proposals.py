"""Configs never tried, proposed from the history of similar environments: ``metaspace propose`` and
``metaspace.propose``, and the history behind ``metaspace.TransferSampler``.

The store is read once per study and process (as of the study's date: nothing dated later is read): the
environments nearest the study's env (exactly, over distinct environments; without an env, those with the
most runs), each becoming a source of the transfer model (metaspace/transfer.py) with its runs' configs in
the study's space and their objective. Parameter names map to config keys as ``import-optuna`` maps them
(dotted names nest; the same ``--map``), so a study transfers from the studies imported before it.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaspace.errors import MetaspaceError
from metaspace.records import parse_date
from metaspace.transfer import Proposal, Source, Space, TransferModel, one_thread

# Environments read: with an env, the nearest 60 (a study weighs the few that resemble it; the rest cost time);
# without one, the 200 most recent (only the study's responses can tell which it resembles: they all compete).
MAX_SOURCES = 60
MAX_SOURCES_WITHOUT_ENV = 200
MAX_ROWS = 300  # runs of one environment the model keeps: the best hundred and an even spread of the rest
MIN_COVERAGE = 0.5  # a source must give values inside the space for at least half of its parameters


@dataclass
class History:
    """The sources a study transfers from, and what was said about choosing them."""

    space: Space
    model: TransferModel | None
    sources: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    objective: str = ""


_HISTORIES: dict[tuple, History] = {}
# What was read, whatever the space: the environments, the notes, the objective's name, and per environment its
# kept runs' configs flattened, by the run's index (_environments).
_ENVIRONMENTS: dict[tuple, tuple[list[Any], list[str], str, list[dict[int, dict[str, Any]]]]] = {}
_KEPT = 8


def _remember(cache: dict, key: tuple, value: Any) -> Any:
    while len(cache) >= _KEPT:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def _objective(conn, objective: str | None, as_of: dt.date | None) -> tuple[list[str], str | None]:
    """The objective's path inside outcome: given, else Optuna's ``value`` when the runs have it, else the
    default of metaspace suggest (the only numeric outcome key, else the one named sharpe)."""
    from metaspace import keys
    from metaspace.store import runs as run_store

    if objective is None and run_store.key_exists(conn, "outcome", ["value"], True, as_of):
        return ["value"], None
    if not run_store.branch_sample(conn, "outcome", 1, as_of):
        raise MetaspaceError(f"the store holds no run known by {as_of}: nothing to transfer from")
    key = keys.resolve(conn, objective, branch="outcome", option="objective", as_of=as_of)
    return list(key.path), key.note


def _param_keys(space: Space, fmap: Any) -> dict[str, str]:
    """Parameter name -> the flattened config key import-optuna stores it under (None-mapped ones left out)."""
    from metaspace.sources.mapping import branch_key

    keys = {}
    for name in space.names:
        target = fmap.explicit("params", name) if fmap is not None else None
        if target in (None, "config"):
            keys[name] = branch_key("config", name, ())
    return keys


def _kept(values: list[float], direction: float) -> list[int]:
    """The indices of the runs a source keeps: every run, or where there are more than MAX_ROWS, the best hundred
    and an even spread of the rest (deterministic)."""
    if len(values) <= MAX_ROWS:
        return list(range(len(values)))
    order = sorted(range(len(values)), key=lambda i: -direction * values[i])
    rest = order[100:]
    spread = [rest[int(i)] for i in np.linspace(0, len(rest) - 1, MAX_ROWS - 100)]
    return sorted(order[:100] + spread)


def _environments(env: Mapping[str, Any] | None, day: dt.date, exclude: Sequence[str], objective: str | None,
                  max_sources: int | None, database_url: str | None
                  ) -> tuple[tuple, list[Any], list[str], str, list[dict[int, dict[str, Any]]]]:
    """The environments a study in ``env`` reads as of ``day`` (remembered per process until the runs or the
    encoder change, whatever the study's space: a space that grows, conditional parameter by parameter, reads
    them once), what was said of choosing them, the objective's name, and the configs of the runs each
    environment may keep (for either direction) flattened, by the run's index: what a space's parameters are
    looked up in."""
    from metaspace.encoders.features import flatten
    from metaspace.queries import _Encoder, queries_from
    from metaspace.store import history as history_store
    from metaspace.store.session import session

    limit = max_sources or (MAX_SOURCES if env else MAX_SOURCES_WITHOUT_ENV)
    with session(database_url) as asked:
        conn, facts = asked.conn, asked.facts
        remembered = (conn.info.dsn, facts.fingerprint, facts.runs_changes,
                      json.dumps(env, sort_keys=True, default=str), day, tuple(sorted(exclude)), objective, limit)
        if remembered in _ENVIRONMENTS:
            return (remembered, *_ENVIRONMENTS[remembered])
        notes = list(asked.notes)
        path, said = _objective(conn, objective, day)
        if said:
            notes.append(said)
        query = None
        if env and facts.version is not None:
            encoder = _Encoder(conn, facts)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                query, encoded = encoder.vector(queries_from("env", [("env", dict(env))], space="env")[0])
            notes += encoded
        elif env:
            notes.append("no encoder version is active (nothing embedded yet): environments are not compared by "
                         "their env, only by how they answer the study's trials")
        found = history_store.environments(conn, query=query, version=facts.version, path=path, as_of=day,
                                           exclude=list(exclude), limit=limit)
    flat = []
    for e in found:
        values = [value for _, value in e.rows]
        flat.append({i: flatten(e.rows[i][0]) for i in sorted(set(_kept(values, 1.0)) | set(_kept(values, -1.0)))})
    read = (found, notes, "outcome." + ".".join(path), flat)
    _remember(_ENVIRONMENTS, remembered, read)
    return (remembered, *read)


def load_history(space: Space, *, env: Mapping[str, Any] | None = None, as_of: Any = None,
                 exclude: Sequence[str] = (), objective: str | None = None, higher_is_better: bool = True,
                 map: Any = None, seed: int | None = None, max_sources: int | None = None,  # noqa: A002
                 database_url: str | None = None) -> History:
    """The transfer model for a study in ``space`` and environment ``env``, as of a date (remembered per
    process until the runs or the encoder change). ``max_sources``: the environments read (default: the
    nearest 60 with an env, the 200 most recent without one)."""
    from metaspace.sources.mapping import load_map

    day = parse_date(as_of, "as_of") or dt.date.today()
    direction = 1.0 if higher_is_better else -1.0
    fmap = load_map(map) if map is not None else None
    read, found, said, objective_name, flat = _environments(env, day, exclude, objective, max_sources, database_url)
    remembered = (read, tuple(space.params), higher_is_better, json.dumps(map, sort_keys=True, default=str), seed)
    if remembered in _HISTORIES:
        return _HISTORIES[remembered]
    notes = list(said)
    keys = _param_keys(space, fmap)
    sources, described, dropped = [], [], 0
    strategies = [e.strategy for e in found]
    with one_thread():
        for e, configs_of in zip(found, flat):
            kept = _kept([value for _, value in e.rows], direction)
            configs = [{name: configs_of[i].get(key) for name, key in keys.items()} for i in kept]
            x, covered = space.encode_with_coverage(configs)
            if covered < MIN_COVERAGE:
                dropped += 1
                continue
            name = e.strategy if strategies.count(e.strategy) == 1 else f"{e.strategy}#{e.env_key & 0xFFFF:04x}"
            y = direction * np.array([e.rows[i][1] for i in kept])
            sources.append(Source(name, x, y, e.distance).fit())
            described.append({"source": name, "runs": len(e.rows), "distance": e.distance,
                              "latest": e.latest.isoformat(),
                              "best": max(v for _, v in e.rows) if higher_is_better else min(v for _, v in e.rows)})
        model = TransferModel(space, sources, seed=seed) if sources else None
    if dropped:
        notes.append(f"{dropped} of the {len(found)} nearest environments left out: their runs give values inside "
                     f"this space for fewer than half of its parameters ({', '.join(space.names)})")
    if not sources:
        notes.append(f"no past environment known by {day} has runs of {objective_name} in this space"
                     + (f" (excluded: {', '.join(exclude)})" if exclude else "")
                     + ": nothing to transfer from")
    return _remember(_HISTORIES, remembered, History(space, model, described, notes, objective_name))


def nearest_configs(*, env: Mapping[str, Any] | None = None, as_of: Any = None, exclude: Sequence[str] = (),
                    objective: str | None = None, limit: int = 10, database_url: str | None = None) -> list[dict]:
    """The configs of the runs of the ``limit`` environments nearest ``env`` (as of a date): what a study's
    first trial learns its parameters from when it has none yet."""
    from metaspace.queries import _Encoder, queries_from
    from metaspace.store import history as history_store
    from metaspace.store.session import session

    day = parse_date(as_of, "as_of") or dt.date.today()
    with session(database_url) as asked:
        conn, facts = asked.conn, asked.facts
        path, _ = _objective(conn, objective, day)
        query = None
        if env and facts.version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                query, _ = _Encoder(conn, facts).vector(queries_from("env", [("env", dict(env))], space="env")[0])
        found = history_store.environments(conn, query=query, version=facts.version, path=path, as_of=day,
                                           exclude=list(exclude), limit=limit)
    return [config for e in found for config, _ in e.rows]


def read_space(source: str | Path | Mapping[str, Any]) -> Space:
    """A search space given as Optuna's distributions: a mapping of parameter names to distributions (or to
    ``optuna.distributions.distribution_to_json`` strings or objects), or the path of a JSON file of one."""
    from metaspace.sampler import space_from_distributions

    if isinstance(source, (str, Path)):
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise MetaspaceError(f"--space {source}: cannot read it: {exc.strerror}") from None
        except ValueError as exc:
            raise MetaspaceError(f"--space {source}: not JSON: {exc}") from None
    if not isinstance(source, Mapping) or not source:
        raise MetaspaceError("the space must be a JSON object of parameter names to Optuna distributions")
    return space_from_distributions(source)


def propose(env: Mapping[str, Any] | None = None, *, space: str | Path | Mapping[str, Any], n: int = 5,
            as_of: Any = None, exclude: str | Sequence[str] = (), objective: str | None = None,
            higher_is_better: bool = True, map: Any = None, seed: int = 0,  # noqa: A002
            database_url: str | None = None) -> list[dict[str, Any]]:
    """``n`` configs never tried for a study in ``space`` (Optuna's distributions, or a JSON file of them) and
    environment ``env``, as of a date, each with the evidence behind it: which past environments weighed
    most, how far they are, and what they scored. A batch: each proposal is chosen as if the ones before it
    had been tried and had done as the sources predict (a portfolio, not the same config n times)."""
    if n < 1:
        raise MetaspaceError(f"n must be 1 or more, got {n}")
    parsed = read_space(space)
    excluded = [exclude] if isinstance(exclude, str) else list(exclude)
    history = load_history(parsed, env=env, as_of=as_of, exclude=excluded, objective=objective,
                           higher_is_better=higher_is_better, map=map, seed=seed, database_url=database_url)
    for note in history.notes:
        warnings.warn(note, stacklevel=2)
    if history.model is None:
        return []
    by_name = {s["source"]: s for s in history.sources}
    out, pending = [], np.empty((0, parsed.width))
    for _ in range(n):
        row, proposal = history.model.propose(np.empty((0, parsed.width)), np.empty(0), pending=pending)
        pending = np.vstack([pending, row])
        out.append(_shown(proposal, by_name, history.objective))
    return out


def _shown(proposal: Proposal, by_name: dict[str, dict[str, Any]], objective: str) -> dict[str, Any]:
    evidence = [{**item, "best": by_name.get(item["source"], {}).get("best"), "objective": objective}
                for item in proposal.sources]
    return {"config": proposal.config, "origin": proposal.origin, "sources": evidence} | (
        {"own_weight": proposal.own_weight} if proposal.own_weight else {})


__all__ = ["History", "load_history", "nearest_configs", "propose", "read_space"]
