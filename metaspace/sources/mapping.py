"""How the fields of a run kept elsewhere (MLflow params, metrics and tags; Optuna params, values and user
attributes) become a run record's config, env and outcome: the defaults each importer gives, and the
``--map FILE`` that overrides them.

A map file (JSON, or YAML where PyYAML is installed) may hold::

    config:  [lr, "risk.*"]           # names (or glob patterns) that go to config
    env:     ["market.*", tags.regime] # ... to env
    outcome: [sharpe, max_drawdown]    # ... to outcome; a plain name missing from a run becomes null
    ignore:  [seed, "debug.*"]         # names never imported
    as_of_date: end_date               # the param, tag or attribute that holds the run's as-of date
    config_id: my.config_id            # the tag or attribute that names the config (else a hash of it)
    strategy_id: desk                  # ... that names the strategy (else the experiment or study)
    env_prefix: "env."                 # tags / attributes with this prefix go to env (prefix removed)
    outcome_prefix: "outcome."         # Optuna user attributes with this prefix go to outcome
    env_artifact: env.json             # MLflow: a logged JSON artifact merged into env (null: none)

A name matches as logged (``lr``) or qualified by its kind (``params.lr``, ``metrics.sharpe``,
``tags.env.vol``, ``user_attrs.x``, ``values.sharpe``), so a param and a metric of the same name can be
told apart. A name given exactly wins over a pattern, and a branch over ignore (``ignore: ["params.*"]``
with ``config: [lr, "risk.*"]`` keeps only those params); a field that names the date or an id goes to
no branch. Dotted names nest: ``risk.target_vol`` is ``{"risk": {"target_vol": ...}}``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.names import BRANCHES
from metaspace.records import nest

Item = tuple[str, str, Any]
"""One field of a run as its source keeps it: (kind, name, value), e.g. ("params", "lr", "0.01")."""


@dataclass(frozen=True)
class FieldMap:
    """Which fields go to which branch, and which name the run's date and ids. Empty lists mean: the
    importer's defaults."""

    config: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    outcome: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    as_of_date: str | None = None
    config_id: str = "metaspace.config_id"
    strategy_id: str = "metaspace.strategy_id"
    env_prefix: str = "env."
    outcome_prefix: str = "outcome."
    env_artifact: str | None = "env.json"
    named: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for branch in BRANCHES:
            plain = tuple(p for p in getattr(self, branch) if not _is_pattern(p))
            self.named[branch] = plain

    def explicit(self, kind: str, name: str) -> str | None:
        """The branch (or "ignore") the map sends this field to, if it names it: a name given exactly wins
        over a pattern; among equals, a branch wins over ignore."""
        for exact in (True, False):
            for target in (*BRANCHES, "ignore"):
                if any(_is_pattern(p) != exact and _matches(p, kind, name) for p in getattr(self, target)):
                    return target
        return None

    def is_special(self, kind: str, name: str) -> bool:
        """The field names the run's date or ids: it goes to no branch."""
        return any(_matches(p, kind, name) for p in (self.as_of_date, self.config_id, self.strategy_id) if p)


_KEYS = {"config", "env", "outcome", "ignore", "as_of_date", "config_id", "strategy_id", "env_prefix",
         "outcome_prefix", "env_artifact"}


def load_map(source: str | Path | Mapping[str, Any] | FieldMap | None) -> FieldMap:
    """A FieldMap from a JSON or YAML file, a dict of the same shape, or None (the defaults)."""
    if source is None:
        return FieldMap()
    if isinstance(source, FieldMap):
        return source
    if isinstance(source, Mapping):
        spec = dict(source)
        where = "the map"
    else:
        spec = _read_map_file(Path(source))
        where = str(source)
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise MetaspaceError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("config", "env", "outcome", "ignore"):
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise MetaspaceError(f"{where}: {key} must be a list of names, got {value!r}")
            values[key] = tuple(names)
        elif value is not None and not isinstance(value, str):
            raise MetaspaceError(f"{where}: {key} must be a name, got {value!r}")
        else:
            values[key] = value
    return FieldMap(**values)


def _read_map_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise MetaspaceError(f"no such map file: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MetaspaceError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the map as "
                                 "JSON") from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MetaspaceError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise MetaspaceError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise MetaspaceError(f"{path}: expected a mapping of keys (config, env, outcome, ignore, ...)")
    return spec


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _matches(pattern: str, kind: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(f"{kind}.{name}", pattern)


def parse_text(text: Any) -> Any:
    """A value logged as text, back as the number, boolean or null it was; other text stays text."""
    if not isinstance(text, str):
        return finite(text)
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("", "none", "null", "nan"):
        return None
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except ValueError:
            return text
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        return value if ok else text
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        value = float(stripped)
    except ValueError:
        return text
    return value if math.isfinite(value) else None


def finite(value: Any) -> Any:
    """NaN and infinities (which JSON cannot hold) become null: a missing value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable id for a config: the same parameters give the same id, whatever their order."""
    body = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return "cfg-" + hashlib.sha256(body.encode()).hexdigest()[:16]


def branch_key(branch: str, name: str, prefixes: Iterable[str]) -> str:
    """The name inside its branch: without a leading ``<branch>.`` or the prefix that sent it there."""
    for prefix in (f"{branch}.", *prefixes):
        if prefix and name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


@dataclass
class Assembled:
    """The branches of one run, and the value of each special field found among its items."""

    branches: dict[str, dict[str, Any]]
    special: dict[str, Any]


def assemble(items: Iterable[Item], fmap: FieldMap, default: Callable[[str, str], str | None],
             parse: Callable[[str, Any], Any] = lambda _kind, value: value) -> Assembled:
    """Sort a run's fields into config, env and outcome: the map first, else ``default(kind, name)``
    (a branch name or None to leave the field out). Branch values go through ``parse(kind, value)``;
    the special fields (date, ids) keep their value as logged."""
    flat: dict[str, dict[str, Any]] = {branch: {} for branch in BRANCHES}
    special: dict[str, Any] = {}
    prefixes = {"env": (fmap.env_prefix,), "outcome": (fmap.outcome_prefix,), "config": ()}
    for kind, name, value in items:
        for key in ("as_of_date", "config_id", "strategy_id"):
            pattern = getattr(fmap, key)
            if pattern and _matches(pattern, kind, name):
                special[key] = value
        if fmap.is_special(kind, name):
            continue
        target = fmap.explicit(kind, name) or default(kind, name)
        if target in BRANCHES:
            flat[target][branch_key(target, name, prefixes[target])] = parse(kind, value)
    for branch in BRANCHES:
        for name in fmap.named.get(branch, ()):
            bare = name.split(".", 1)[1] if name.split(".", 1)[0] in _KINDS else name
            flat[branch].setdefault(branch_key(branch, bare, prefixes[branch]), None)
    return Assembled({branch: nest(values) for branch, values in flat.items()}, special)


_KINDS = {"params", "metrics", "tags", "values", "user_attrs", "system_attrs", "study_user_attrs", "artifact"}


def as_of_from(value: Any, run_id: str, fmap: FieldMap, fallback: dt.date | None) -> str:
    """The run's as-of date: the mapped field's value when the map names one, else ``fallback``."""
    if fmap.as_of_date:
        if value is None or value == "":
            raise InvalidRecordError(run_id, "as_of_date",
                                     f"the run has no {fmap.as_of_date!r} (named as the as-of date by the map)")
        return str(value)
    if fallback is None:
        raise InvalidRecordError(run_id, "as_of_date", "the run has no end time: is it still running?")
    return fallback.isoformat()
