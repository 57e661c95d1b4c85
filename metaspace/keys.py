"""The keys a history uses: every option that names a record key (an objective, a colour) is checked
against the stored runs, so a key that does not exist is an error that lists the ones that do, closest
first, never an empty answer."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from metaspace.encoders.features import flatten, is_number
from metaspace.errors import MetaspaceError
from metaspace.names import BRANCHES
from metaspace.store import runs as run_store

SAMPLE = 2_000
DEFAULT_OBJECTIVE_LEAF = "sharpe"


@dataclass(frozen=True)
class Key:
    """A resolved record key: its branch, its path inside the branch, and what was assumed, if anything."""

    branch: str
    path: tuple[str, ...]
    note: str | None = None

    @property
    def name(self) -> str:
        return ".".join((self.branch, *self.path))


def branch_keys(conn, branch: str, as_of: Any = None) -> Counter[str]:
    """Dotted keys of a branch over a sample of the stored runs (known by ``as_of``, if given), with how often
    each holds a number."""
    numeric: Counter[str] = Counter()
    for value in run_store.branch_sample(conn, branch, SAMPLE, as_of):
        for key, leaf in flatten(value).items():
            numeric[key] += int(is_number(leaf) and not isinstance(leaf, bool))
    return numeric


def resolve(conn, key: str | None, *, branch: str | None = None, numeric: bool = True, option: str = "key",
            as_of: Any = None) -> Key:
    """The stored key that ``key`` names (``outcome.sharpe``, or ``sharpe`` within ``branch``), among the
    runs known by ``as_of`` when given (so an answer as of a date never depends on keys of later runs).

    With ``key`` None the objective default applies: the only numeric outcome key, else the one numeric
    outcome leaf named ``sharpe`` at any depth, named in the returned note. Raises MetaspaceError listing the keys that exist, closest first.
    """
    if key is None:
        return _default_objective(conn, option, as_of)
    head, _, rest = key.partition(".")
    if head in BRANCHES and rest:
        branch, dotted = head, rest
    elif branch is None:
        raise MetaspaceError(f"{option} {key!r}: name a record key with its branch, such as outcome.sharpe, "
                             "env.realized_vol or config.rebalance")
    else:
        dotted = key
    path = tuple(dotted.split("."))
    if run_store.key_exists(conn, branch, list(path), numeric, as_of):  # stops at the first run that has it
        return Key(branch, path)
    seen = branch_keys(conn, branch, as_of)
    candidates = [k for k, n in seen.items() if n or not numeric]
    if not candidates:
        raise MetaspaceError(f"{option} {key!r}: the stored runs have no {'numeric ' if numeric else ''}"
                             f"{branch} keys at all")
    closest = difflib.get_close_matches(dotted, candidates, n=len(candidates), cutoff=0.0)
    shown = ", ".join(f"{branch}.{k}" for k in closest[:12]) + (" ..." if len(closest) > 12 else "")
    raise MetaspaceError(f"{option} {branch}.{dotted}: no stored run has this {'numeric ' if numeric else ''}key. "
                         f"Keys that exist, closest first: {shown}")


def resolve_each(conn, key: str | None, dates: Iterable[Any], *, branch: str, option: str) -> dict[Any, Key]:
    """:func:`resolve` as of each date (None: no cap), reading one key sample, not one per date: the key found
    as of the latest date stands for an earlier one if a run known by then has it (one EXISTS that stops at
    the first such run); otherwise that date is resolved on its own, and says why not."""
    dates = set(dates)
    latest = None if None in dates else max(dates, default=None)
    try:
        found = resolve(conn, key, branch=branch, option=option, as_of=latest)
    except MetaspaceError:
        found = None
    resolved = {}
    for day in dates:
        if found and (day == latest or run_store.key_exists(conn, found.branch, list(found.path), True, day)):
            resolved[day] = found
        else:
            resolved[day] = resolve(conn, key, branch=branch, option=option, as_of=day)
    return resolved


def _default_objective(conn, option: str, as_of: Any = None) -> Key:
    seen = branch_keys(conn, "outcome", as_of)
    numeric_keys = [k for k, n in seen.items() if n]
    if len(numeric_keys) == 1:  # an ML history: its one metric (Optuna's value, an MLflow metric)
        return Key("outcome", tuple(numeric_keys[0].split(".")),
                   f"{option} not given: ranking by outcome.{numeric_keys[0]}, the only numeric outcome key")
    named = sorted(k for k, n in seen.items() if n and k.split(".")[-1].lower() == DEFAULT_OBJECTIVE_LEAF)
    if len(named) == 1:
        return Key("outcome", tuple(named[0].split(".")),
                   f"{option} not given: ranking by outcome.{named[0]}, the one numeric outcome key named "
                   f"{DEFAULT_OBJECTIVE_LEAF!r}")
    numeric = sorted(k for k, n in seen.items() if n)
    if named:
        reason = f"several outcome keys are named {DEFAULT_OBJECTIVE_LEAF!r} ({', '.join(named)})"
    else:
        reason = f"no outcome key is named {DEFAULT_OBJECTIVE_LEAF!r}"
    raise MetaspaceError(f"{option} not given and {reason}: give one. Numeric outcome keys: "
                         + (", ".join(f"outcome.{k}" for k in numeric[:12]) or "none"))


def optional_objective(conn, objective: str | None, as_of: Any = None) -> Key | None:
    """An objective that only annotates (cluster summaries, map tooltips): one given must exist; without
    one, the default if there is one, else none."""
    if objective is not None:
        return resolve(conn, objective, branch="outcome", option="objective", as_of=as_of)
    try:
        return _default_objective(conn, "objective", as_of)
    except MetaspaceError:
        return None
