"""Run records (PRODUCT.md): reading JSONL / CSV / Parquet, and validating each record."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaspace.errors import InvalidRecordError, MetaspaceError
from metaspace.names import BRANCHES

RESERVED = ("run_id", "config_id", "strategy_id", "as_of_date", *BRANCHES)


@dataclass(frozen=True)
class Run:
    """A validated run record."""

    run_id: str
    as_of_date: dt.date
    config_id: str | None
    strategy_id: str | None
    config: dict[str, Any]
    env: dict[str, Any]
    outcome: dict[str, Any]
    extra: dict[str, Any]

    @property
    def sha256(self) -> str:
        body = {"run_id": self.run_id, "as_of_date": self.as_of_date.isoformat(), "config_id": self.config_id,
                "strategy_id": self.strategy_id, "config": self.config, "env": self.env, "outcome": self.outcome,
                "extra": self.extra}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def as_record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config_id": self.config_id, "strategy_id": self.strategy_id,
                "as_of_date": self.as_of_date.isoformat(), "config": self.config, "env": self.env,
                "outcome": self.outcome, **self.extra}


@dataclass(frozen=True)
class Rejected:
    source: str
    line: int
    run_id: str | None
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "run_id": self.run_id, "field": self.field,
                "reason": self.reason}


# What PostgreSQL's jsonb and float64 can hold, and what a sane record looks like: beyond these a record is
# rejected with its field, never stored to break something later.
MAX_KEY_LENGTH = 256
MAX_DEPTH = 16
MAX_LIST_LENGTH = 10_000


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store this text (a NUL, or a lone UTF-16 surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which PostgreSQL text and jsonb cannot hold"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate, which is not valid Unicode text"
    return None


def _number_problem(value: int | float) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not valid JSON; use null for a missing value"
    try:
        float(value)
    except OverflowError:
        return f"the integer {str(value)[:20]}... ({len(str(value))} digits) is beyond the float64 range"
    return None


def _check_value(value: Any, path: str, run_id: str, depth: int = 0) -> None:
    def bad(where: str, reason: str) -> InvalidRecordError:
        return InvalidRecordError(run_id, where, reason)

    if depth > MAX_DEPTH:
        raise bad(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, child in value.items():
            if not isinstance(key, str) or not key:
                raise bad(path, f"keys must be non-empty strings, got {key!r}")
            if len(key) > MAX_KEY_LENGTH:
                raise bad(f"{path}.{key[:40]}...", f"key longer than {MAX_KEY_LENGTH} characters")
            problem = text_problem(key)
            if problem:
                raise bad(f"{path}.{key!r}", f"key {problem}")
            _check_value(child, f"{path}.{key}", run_id, depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_LIST_LENGTH:
            raise bad(path, f"list of {len(value)} items; at most {MAX_LIST_LENGTH}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise bad(f"{path}[{i}]", f"lists must hold finite numbers, got {_short(item)}")
            problem = _number_problem(item)
            if problem:
                raise bad(f"{path}[{i}]", problem)
    elif isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise bad(path, problem)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = _number_problem(value)
        if problem:
            raise bad(path, problem)
    elif value is not None and not isinstance(value, bool):
        raise bad(path, f"unsupported value of type {type(value).__name__}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional_id(record: Mapping[str, Any], field: str, run_id: str) -> str | None:
    value = record.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InvalidRecordError(run_id, field, f"expected a string, got {_short(value)}")
    text = str(value)
    problem = text_problem(text)
    if problem or len(text) > 512:
        raise InvalidRecordError(run_id, field, problem or "longer than 512 characters")
    return text


def iso_date(value: Any) -> dt.date:
    """A date from a date, a datetime, or text that is an ISO date or an ISO date-time (whose time part is
    dropped); ValueError for anything else (``2024-03-29garbage`` too: nothing is cut to fit)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip()
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    if len(text) > 10 and text[10] in "T ":
        return dt.datetime.fromisoformat(text).date()
    raise ValueError(value)


def parse_date(value: Any, label: str) -> dt.date | None:
    """None for no date; else :func:`iso_date`, or an error naming ``label``."""
    if value is None or value == "":
        return None
    try:
        return iso_date(value)
    except ValueError:
        raise MetaspaceError(f"{label} {value!r} is not an ISO date (YYYY-MM-DD, or an ISO date-time)") from None


def validate(record: Any) -> Run:
    """A Run from a decoded record, or InvalidRecordError naming the record and the field."""
    if not isinstance(record, Mapping):
        raise InvalidRecordError("?", "(record)", f"expected a JSON object, got {type(record).__name__}")
    run_id = record.get("run_id")
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        run_id = str(run_id)
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidRecordError("?", "run_id", f"required: a non-empty string (or integer), got {_short(run_id)}")
    problem = text_problem(run_id)
    if problem:
        raise InvalidRecordError(run_id.encode("utf-8", "backslashreplace").decode("ascii", "replace")[:60],
                                 "run_id", problem)
    if len(run_id) > 512:
        raise InvalidRecordError(run_id[:40] + "...", "run_id", "longer than 512 characters")
    raw_date = record.get("as_of_date")
    if raw_date is None or raw_date == "":
        raise InvalidRecordError(run_id, "as_of_date", "required: an ISO date such as 2024-03-29")
    try:
        as_of = iso_date(raw_date)
    except ValueError:
        raise InvalidRecordError(run_id, "as_of_date", f"{raw_date!r} is not an ISO date (YYYY-MM-DD, or an ISO "
                                 "date-time whose time is dropped)") from None
    branches = {}
    for branch in BRANCHES:
        value = record.get(branch)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise InvalidRecordError(run_id, branch, f"expected an object, got {type(value).__name__}")
        _check_value(value, branch, run_id)
        branches[branch] = dict(value)
    extra = {k: v for k, v in record.items() if k not in RESERVED}
    _check_extra(extra, run_id)
    return Run(run_id, as_of, _optional_id(record, "config_id", run_id), _optional_id(record, "strategy_id", run_id),
               branches["config"], branches["env"], branches["outcome"], extra)


def _check_extra(value: Any, run_id: str, path: str = "", depth: int = 0) -> None:
    """Other top-level fields are kept as they are (lists of anything included), if PostgreSQL can hold them."""
    if depth > MAX_DEPTH:
        raise InvalidRecordError(run_id, path, f"nested deeper than {MAX_DEPTH} levels")
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        if isinstance(value, (dict, list)) or value is None or isinstance(value, bool):
            return
        if isinstance(value, str):
            problem = text_problem(value)
        elif isinstance(value, (int, float)):
            problem = _number_problem(value)
        else:
            problem = f"unsupported value of type {type(value).__name__}"
        if problem:
            raise InvalidRecordError(run_id, path, problem)
        return
    for key, child in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        if not isinstance(key, (str, int)) or (isinstance(key, str) and text_problem(key)):
            raise InvalidRecordError(run_id, path or "(extra fields)", f"key {key!r} cannot be stored")
        _check_extra(child, run_id, where, depth + 1)


# -- reading ----------------------------------------------------------------------------------------


def _open_text(path: str) -> io.TextIOBase:
    """The file as text; bytes that are not UTF-8 become lone surrogates, so the record holding them is
    rejected by validation, naming its field, instead of stopping the whole file."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _format(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    return "jsonl"


def _csv_value(text: str | None) -> Any:
    """A CSV cell as the JSON value it stands for. Only text that a number writes back to exactly becomes a
    number: "007", "1_000" or "nan" stay strings, so an identifier never silently changes."""
    if text is None or text == "":  # a short row: csv gives its missing cells as None
        return None
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else text
    return text


_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|-?\.[0-9]+([eE][-+]?[0-9]+)?")


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted names into nested objects. Where a name is both a value and a parent (``risk`` and
    ``risk.vol``), the longer one keeps its dotted name beside the value."""
    out: dict[str, Any] = {}
    for name in sorted(flat, key=lambda n: (n.count("."), n)):
        node = out
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and part not in node:
                child = node[part] = {}
            if not isinstance(child, dict):
                node[".".join(parts[i:])] = flat[name]
                break
            node = child
        else:
            node[parts[-1]] = flat[name]
    return out


def unflatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted column names (config.risk.target_vol) back into a nested record; an empty branch cell is a key
    the run does not have."""
    return nest({column: value for column, value in row.items()
                 if not (value is None and "." in column and column.split(".")[0] in BRANCHES)})


def read_records(paths: Iterable[str]) -> Iterator[tuple[str, int, Any]]:
    """(source, line number, decoded record or an InvalidRecordError) for every record in the files."""
    for path in paths:
        if path != "-" and not Path(path).exists():
            raise MetaspaceError(f"no such file: {path}")
        kind = _format(path)
        if kind == "parquet":
            yield from _read_parquet(path)
            continue
        with _open_text(path) as handle:
            if kind == "csv":
                reader = csv.DictReader(handle)
                for line, row in enumerate(reader, start=2):
                    record = unflatten({k: _csv_value(v) for k, v in row.items() if k})
                    for key in ("run_id", "config_id", "strategy_id", "as_of_date"):
                        if key in record and record[key] is not None:
                            record[key] = str(row[key])
                    yield path, line, record
                continue
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    yield path, line, json.loads(text)
                except ValueError as exc:
                    yield path, line, InvalidRecordError("?", "(line)", f"not valid JSON: {exc}")
                except RecursionError:
                    yield path, line, InvalidRecordError("?", "(line)", "nested too deeply to read")


def _read_parquet(path: str) -> Iterator[tuple[str, int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MetaspaceError("reading Parquet needs the parquet extra: pip install 'metaspace[parquet]'") from None
    line = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            line += 1
            flat = {k: v for k, v in row.items()}
            record = unflatten(flat) if any("." in k for k in flat) else flat
            if isinstance(record.get("as_of_date"), (dt.date, dt.datetime)):
                record["as_of_date"] = record["as_of_date"].isoformat()
            yield path, line, record
