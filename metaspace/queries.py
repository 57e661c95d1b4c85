"""Questions asked of the stored runs: search (runs like this one) and suggest (configs that worked in
environments like this one), as of a date. Thin callers of the SQL functions; named queries because
``metaspace.search`` is the function.

Inputs (a stored run, an env, a config, a whole or partial run record) are encoded here with the active
encoder version; the nearest-neighbour work, the as-of filter and the ranking happen in PostgreSQL. The
encoders (and numpy) are imported only when a record must be encoded: a search by stored run needs neither.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metaspace.errors import MetaspaceError, VersionChanged
from metaspace.names import BRANCHES, SPACES
from metaspace.records import parse_date
from metaspace.store import graphs, registry
from metaspace.store import search as search_store
from metaspace.store.session import Facts, session

if TYPE_CHECKING:
    import numpy as np

KINDS = ("run", "record", "env", "config", "outcome")
MATCH_COLUMNS = search_store.MATCH_COLUMNS
DISTINCT_COLUMNS = search_store.DISTINCT_COLUMNS
DEFAULT_SPACE = {"run": "joint", "record": "joint", "env": "env", "config": "config", "outcome": "outcome"}


@dataclass
class Query:
    """One question: what to search near, in which space, as of which date."""

    kind: str
    value: Any
    space: str
    as_of: dt.date | None = None
    label: str = ""


@dataclass
class Answer:
    """The answer to one query, in input order; ``notes`` says what was imputed or assumed."""

    query: Query
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def active_version(conn) -> int:
    """The active encoder version; an error that says what to run before there is one."""
    version = registry.active_version(conn)
    if version is None:
        raise MetaspaceError("no encoder version is active: nothing has been embedded yet; run metaspace embed-runs")
    return version


def check_space(space: str) -> str:
    if space not in SPACES:
        raise MetaspaceError(f"unknown space {space!r}: use one of {', '.join(SPACES)}")
    return space


def read_inputs(path: str) -> list[tuple[str, Any]]:
    """(label, object) for each input of a FILE: one JSON object, a JSON array of them, or JSONL; '-' is stdin."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            raw = open(path, "rb").read()  # noqa: SIM115
        except OSError as exc:
            raise MetaspaceError(f"cannot read {path}: {exc.strerror}") from None
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return [(f"{path}:1", whole)]
    if isinstance(whole, list):
        return [(f"{path}[{i}]", item) for i, item in enumerate(whole)]
    inputs = []
    for line, body in enumerate(io.StringIO(text), start=1):
        if not body.strip():
            continue
        try:
            inputs.append((f"{path}:{line}", json.loads(body)))
        except ValueError as exc:
            raise MetaspaceError(f"{path}:{line}: not valid JSON: {exc}") from None
    return inputs


def queries_from(kind: str, inputs: Iterable[tuple[str, Any]], *, space: str | None = None,
                 as_of: Any = None) -> list[Query]:
    """Queries from decoded inputs. ``as_of`` is a cap: nothing dated after it is used, whatever a line
    says. A line that is a (partial) run record with its own as_of_date is asked as of that date (a
    walk-forward replay) when it is earlier."""
    if kind not in KINDS:
        raise MetaspaceError(f"unknown input kind {kind!r}: use one of {', '.join(KINDS)}")
    target = check_space(space or DEFAULT_SPACE[kind])
    default_as_of = parse_date(as_of, "as_of")
    queries = []
    for label, value in inputs:
        if kind == "run":
            queries.append(Query("run", str(value), target, default_as_of, label or str(value)))
            continue
        if not isinstance(value, Mapping):
            raise MetaspaceError(f"{label}: expected a JSON object, got {type(value).__name__}")
        record = _as_record(kind, value)
        own = parse_date(record.get("as_of_date"), f"{label}: as_of_date")
        dates = [d for d in (own, default_as_of) if d is not None]
        queries.append(Query("record", record, target, min(dates) if dates else None, label))
    return queries


def _as_record(kind: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A bare env/config/outcome object becomes {kind: object}; a record (it has run_id, as_of_date or the
    branch as an object) is kept as it is."""
    if kind == "record":
        return dict(value)
    looks_like_record = "as_of_date" in value or "run_id" in value or isinstance(value.get(kind), Mapping)
    if looks_like_record:
        return {key: value[key] for key in value if key in ("run_id", "as_of_date", kind)}
    return {kind: dict(value)}


class _Encoder:
    """Encodes query records with the active version, imputing branches a joint query does not give. From the
    facts a question started with (no query when the version's state is cached), else read anew (after a
    rebuild switched versions)."""

    def __init__(self, conn, facts: Facts | None = None):
        from metaspace.fitted import load_space

        self.conn = conn
        if facts is not None and facts.version is not None:
            self.version, self.fitted_through = facts.version, facts.fitted_through
            self.space = load_space(conn, self.version, facts.fingerprint)
        else:
            self.version = active_version(conn)
            self.space = load_space(conn, self.version)
            self.fitted_through = _fitted_through(conn, self.version)

    def vector(self, query: Query) -> tuple[np.ndarray, list[str]]:
        from metaspace.encoders import EncodingError, SchemaDriftWarning

        record = query.value
        given = [b for b in BRANCHES if isinstance(record.get(b), Mapping) and record.get(b)]
        needed = BRANCHES if query.space == "joint" else (query.space,)
        missing = [b for b in needed if b not in given]
        if query.space != "joint" and missing:
            raise MetaspaceError(f"{query.label}: searching the {query.space} space needs the record's "
                                 f"'{query.space}' object, which is missing or empty")
        if query.space == "joint" and not given:
            raise MetaspaceError(f"{query.label}: the record has none of config, env, outcome to search with")
        vectors: dict[str, np.ndarray] = {}
        for branch in needed:
            if branch in missing:
                vectors[branch] = self.space.impute(branch)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SchemaDriftWarning)
                out, errors = self.space.branches_[branch].transform_with_errors(
                    [record[branch]], [str(record.get("run_id") or query.label)])
            if errors:
                error: EncodingError = errors[0]
                raise MetaspaceError(f"{query.label}: field {error.field!r}: {error.reason}")
            vectors[branch] = out[0]
        notes = self._notes(query, record, given, missing)
        if query.space != "joint":
            return vectors[query.space], notes
        joint = self.space.combine(*(vectors[b][None, :] for b in BRANCHES))[0]
        return joint, notes

    def _notes(self, query: Query, record: Mapping, given: list[str], missing: list[str]) -> list[str]:
        from metaspace.encoders.features import flatten

        notes = [f"{query.label}: no '{b}' given; imputed with the mean {b} vector of the runs encoder version "
                 f"{self.version} was fitted on" for b in missing]
        for branch in given if query.space == "joint" else [query.space]:
            encoder = self.space.branches_[branch]
            flat = flatten(record[branch])
            expected = set(encoder.feature_keys(always_present=True))
            absent = sorted(expected - set(flat))
            if absent:
                shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
                notes.append(f"{query.label}: {len(absent)} {branch} key(s) that every stored run has were not "
                             f"given, encoded as missing: {shown}")
            notes += _typos(query.label, branch, encoder, flat)
        return notes


def _typos(label: str, branch: str, encoder, flat: Mapping[str, Any]) -> list[str]:
    """Notes on what looks like a typo in a query: a key the encoder was not fitted on (ignored), and a
    category it never saw (encoded as an unseen one), each with the nearest known name."""
    import difflib

    known = encoder.feature_keys()
    notes = []
    for key in sorted(set(flat) - set(known) - set(encoder.ignored_keys_)):
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        notes.append(f"{label}: {branch}.{key} is not a key the encoder was fitted on, and was ignored"
                     + (f": did you mean {branch}.{near[0]}?" if near else ""))
    for spec in encoder.features_:
        value = flat.get(spec["key"])
        if spec["kind"] != "category" or value is None or str(value) in map(str, spec["categories"]):
            continue
        near = difflib.get_close_matches(str(value), [str(c) for c in spec["categories"]], n=1, cutoff=0.6)
        notes.append(f"{label}: {branch}.{spec['key']} {value!r} was never seen when the encoder was fitted (encoded "
                     "as an unseen category)" + (f": did you mean {near[0]!r}?" if near else ""))
    return notes


def fit_note(version: int, fitted_through: dt.date | None, as_of: dt.date | None) -> str | None:
    """What an answer as of ``as_of`` says about the encoder version it used: that it was fitted on later
    runs, or may have been."""
    if as_of is None:
        return None
    if fitted_through is None:
        return (f"encoder version {version} does not record which runs it was fitted on (it was fitted before "
                f"metaspace recorded it): its scaling and categories may have seen runs after {as_of}; "
                "metaspace embed-runs --fit-until DATE fits one that has not")
    if as_of < fitted_through:
        return (f"encoder version {version} was fitted on runs up to {fitted_through}, after {as_of}: its scaling "
                f"and categories saw them (every run answered is still dated on or before {as_of}); "
                f"metaspace embed-runs --fit-until {as_of} fits one that has not")
    return None


def _fitted_through(conn, version: int) -> dt.date | None:
    return next((v.fitted_through for v in registry.versions(conn) if v.version == version), None)


def _rows_or_frame(rows: list[dict[str, Any]], as_frame: bool):
    if not as_frame:
        return rows
    try:
        import pandas as pd
    except ImportError:
        raise MetaspaceError("as_frame=True needs pandas: pip install 'metaspace[frame]'") from None
    return pd.DataFrame(rows)


def search_many(queries: Sequence[Query], *, k: int = 10, strategy: str | Sequence[str] = (),
                config_id: str | Sequence[str] = (), scope: Mapping[str, Any] | None = None, exact: bool = False,
                distinct: bool = False, database_url: str | None = None) -> Iterator[Answer]:
    """The k nearest runs to each query, in input order (every input is encoded before the first answer).
    With ``distinct``, the k nearest distinct environments (configs, outcomes) of the query's branch space
    instead, each with its runs' count and dates (rows of ``DISTINCT_COLUMNS``).

    Each query vector is searched with the encoder version it was made with: if a rebuild switches versions
    during the batch, the queries still to come are encoded again with the new one."""
    if distinct:
        joint = [q.label for q in queries if q.space == "joint"]
        if joint:
            raise MetaspaceError(f"{joint[0]}: distinct answers are environments, configs or outcomes: search the "
                                 "env, config or outcome space (--space env), where runs share their vectors")
    with session(database_url) as asked:
        conn, facts = asked.conn, asked.facts
        version, fitted_through = _active(facts), facts.fitted_through
        encoder = _Encoder(conn, facts) if any(q.kind == "record" for q in queries) else None
        exact_only = _exact_only_notes(facts)
        prepared = [(q, *(encoder.vector(q) if q.kind == "record" else (None, []))) for q in queries]
        for i, (query, vector, notes) in enumerate(prepared):
            if i == 0:
                notes = [*asked.notes, *notes]
            filters = search_store.Filters(query.as_of, _names(strategy), _names(config_id), scope)
            if query.kind == "run":
                rows = (search_store.distinct(conn, None, k, query.space, filters, exact, run_id=query.value)
                        if distinct else search_store.neighbours(conn, query.value, k, query.space, filters, exact))
            else:
                ask = search_store.distinct if distinct else search_store.search
                encoder, rows, notes = _following_switches(
                    conn, encoder, query, vector, notes,
                    lambda v, version, query=query, filters=filters, ask=ask: ask(
                        conn, v, k, query.space, filters, exact, version))
                version, fitted_through = encoder.version, encoder.fitted_through
            note = fit_note(version, fitted_through, query.as_of)
            if not rows:
                notes = [*notes, search_store.why_nothing(conn, query.space, filters)]
            yield Answer(query, rows, [*notes, *exact_only(query.space), *([note] if note else [])])


def _active(facts: Facts) -> int:
    if facts.version is None:
        raise MetaspaceError("no encoder version is active: nothing has been embedded yet; run metaspace embed-runs")
    return facts.version


def _exact_only_notes(facts: Facts) -> Callable[[str], list[str]]:
    """space -> the note that it has no HNSW graph because it is not indexed (from the question's facts)."""

    def notes(space: str) -> list[str]:
        note = graphs.exact_only_note_for(space, facts.indexed_spaces, facts.joint_vectors, facts.graphs)
        return [note] if note else []

    return notes


def _following_switches(conn, encoder: _Encoder, query: Query, vector, notes: list[str], ask):
    """``ask(vector, version)``; if a rebuild has switched versions since the query was encoded, encode it
    again with the version active now and ask again. Returns the encoder in use, the rows and the notes."""
    try:
        return encoder, ask(vector, encoder.version), notes
    except VersionChanged:
        encoder = _Encoder(conn)
        vector, notes = encoder.vector(query)
        return encoder, ask(vector, encoder.version), notes


def _many(value: Any) -> tuple[bool, list[Any]]:
    """(whether a batch was given, its items): a list of runs ids or objects is a batch, one answer each."""
    batch = isinstance(value, (list, tuple))
    return batch, list(value) if batch else [value]


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A repeatable option's values: one name or several."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _answered(answers: Iterable[Answer], batch: bool, as_frame: bool):
    answers = list(answers)
    for answer in answers:
        for note in answer.notes:
            warnings.warn(note, stacklevel=3)
    shaped = [_rows_or_frame(answer.rows, as_frame) for answer in answers]
    return shaped if batch else shaped[0]


def search(*, run: str | Sequence[str] | None = None, record: Any = None, env: Any = None, config: Any = None,
           outcome: Any = None, vector: Sequence[float] | np.ndarray | None = None, space: str | None = None,
           k: int = 10, as_of: Any = None, strategy: str | Sequence[str] = (), config_id: str | Sequence[str] = (),
           scope: Mapping[str, Any] | None = None, exact: bool = False, distinct: bool = False,
           database_url: str | None = None, as_frame: bool = False):
    """The k nearest stored runs to one of: a stored run (itself excluded), a record, an env, a config, an
    outcome, or a raw 384-d vector; the same options as ``metaspace search``.

    Returns a list of dicts (run_id, config_id, strategy_id, as_of_date, distance, entity_scope), or a pandas
    DataFrame with ``as_frame``. Given a list (of run ids, or of objects), returns one answer per item, in
    order: a batch costs one connection and one encoder load. ``as_of`` caps every answer, as in the CLI.

    ``distinct``: "which environments are like this one": the k nearest distinct environments (or configs, or
    outcomes: the space's distinct vectors) that have a run matching the filters, each once, with the count
    of its matching runs, their first and last as_of_date, its first run and its record (entity_id, distance,
    runs, first_date, last_date, first_run, record); a run's own environment is among them."""
    given = {"run": run, "record": record, "env": env, "config": config, "outcome": outcome, "vector": vector}
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise MetaspaceError("give exactly one of run, record, env, config, outcome, vector")
    kind = chosen[0]
    if kind == "vector":
        target = check_space(space or "joint")
        if distinct and target == "joint":
            raise MetaspaceError("distinct answers are environments, configs or outcomes: give space='env', "
                                 "'config' or 'outcome'")
        with session(database_url) as asked:
            filters = search_store.Filters(parse_date(as_of, "as_of"), _names(strategy), _names(config_id), scope)
            ask = search_store.distinct if distinct else search_store.search
            rows = ask(asked.conn, vector, k, target, filters, exact)
            for note in [*asked.notes, *_exact_only_notes(asked.facts)(target)]:
                warnings.warn(note, stacklevel=2)
        return _rows_or_frame(rows, as_frame)
    batch, items = _many(given[kind])
    queries = queries_from(kind, [(f"{kind}[{i}]" if batch else kind, item) for i, item in enumerate(items)],
                           space=space, as_of=as_of)
    answers = search_many(queries, k=k, strategy=strategy, config_id=config_id, scope=scope, exact=exact,
                          distinct=distinct, database_url=database_url)
    return _answered(answers, batch, as_frame)


UNCALIBRATED = ("no calibration of outcome.{objective} fitted by this date for the active encoder version: ranked "
                "at local scale 1 (version 4's weighting of the neighbourhood), with its uncalibrated confidence (metaspace evaluate "
                "--save-calibration fits and stores calibrations)")
RECORD_ONLY = ("the calibration applied (fitted until {fitted_until}) found that the neighbourhood's departures from "
               "each config's record did not pay over the replayed past: the environment asked about only chooses "
               "the candidates (configs with evidence nearby), which are ranked by their records (local scale 0; "
               "metaspace evaluate shows the pick against the best-so-far config)")
HISTORY_RUNS = search_store.HISTORY_RUNS


# Per process, what the notes of earlier questions read: the settings of a stored calibration (until the
# calibrations change) and the objective keys resolved (until the runs change), so that a warm question costs
# its facts and itself. Bounded: the oldest entries go first.
_SETTINGS: dict[tuple, dict[str, Any]] = {}
_OBJECTIVES: dict[tuple, dict[Any, Any]] = {}
_KEPT = 256


def _remember(cache: dict, key: tuple, value: Any) -> Any:
    while len(cache) >= _KEPT:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def _calibrated_otherwise(conn, facts: Facts, objective: str, higher_is_better: bool, fitted_until: Any,
                          asked: dict[str, Any]) -> str | None:
    """A note when the calibration applied was fitted on a replay asked with other settings than this answer:
    its local scale and confidence map were measured on other rankings."""
    from metaspace.store import evaluation as evaluation_store

    key = (conn.info.dsn, facts.fingerprint, facts.calibrated_at, objective, higher_is_better, fitted_until)
    stored = _SETTINGS.get(key)
    if stored is None:
        stored = _remember(_SETTINGS, key, evaluation_store.calibration_settings(
            conn, objective=objective, higher_is_better=higher_is_better, fitted_until=fitted_until))
    names = {"neighbours": "neighbours", "min_runs": "min_runs", "horizon_given": "horizon"}
    differ = [f"{names[key]} {stored.get(key)} there, {value} here" for key, value in asked.items()
              if key in stored and stored[key] != value]
    if not differ:
        return None
    return (f"the calibration applied (fitted until {fitted_until}) was measured on a replay asked with other "
            f"settings ({'; '.join(differ)}): its local scale and confidence may not carry to these answers")


def suggest_many(queries: Sequence[Query], *, k: int = 5, objective: str | None = None, higher_is_better: bool = True,
                 neighbours: int = 1000, min_runs: int = 3, strategy: str | Sequence[str] = (), exact: bool = False,
                 history: int | None = HISTORY_RUNS, horizon: int | None = None,
                 database_url: str | None = None) -> Iterator[Answer]:
    """Suggested configs for each env query, in input order. ``objective`` is an outcome key (``sharpe``,
    ``outcome.perf.sharpe``); by default, the one numeric outcome key named ``sharpe``. ``history``: the
    configs' records read the latest N runs known at the date, shared among the candidates (None: all); ``horizon``: days
    of one outcome window, the block in which evidence is counted (None: read from the runs' test_start)."""
    from metaspace import keys

    if history is not None and history < 1:
        raise MetaspaceError(f"history must be 1 or more runs (or None for all), got {history}")
    if horizon is not None and horizon < 1:
        raise MetaspaceError(f"horizon must be 1 or more days, got {horizon}")

    with session(database_url) as asked:
        conn, facts = asked.conn, asked.facts
        # the objective among the runs known as of each date asked (remembered until the runs change)
        dates = frozenset(q.as_of for q in queries)
        remembered = (conn.info.dsn, objective, dates, facts.runs_changes)
        resolved = _OBJECTIVES.get(remembered)
        if resolved is None:
            resolved = _remember(_OBJECTIVES, remembered, keys.resolve_each(conn, objective, dates, branch="outcome",
                                                                           option="objective"))
        said: set[str] = set()
        mismatch: dict[tuple[str, Any], str | None] = {}
        exact_only = _exact_only_notes(facts)
        _active(facts)
        encoder = _Encoder(conn, facts)
        prepared = [(q, *encoder.vector(q)) for q in queries]
        for i, (query, vector, notes) in enumerate(prepared):
            if i == 0:
                notes = [*asked.notes, *notes]
            key = resolved[query.as_of]
            if key.note and key.note not in said:
                said.add(key.note)
                notes = [key.note, *notes]
            why_empty: list[str] = []
            encoder, rows, notes = _following_switches(
                conn, encoder, query, vector, notes,
                lambda v, version, key=key, query=query, why_empty=why_empty: search_store.suggest(
                    conn, v, k=k, as_of=query.as_of, objective=".".join(key.path),
                    higher_is_better=higher_is_better, neighbours=neighbours, min_runs=min_runs,
                    strategies=_names(strategy), exact=exact, encoder_version=version, history=history,
                    horizon=horizon, notes=why_empty))
            notes = [*notes, *why_empty]
            note = fit_note(encoder.version, encoder.fitted_through, query.as_of)
            uncalibrated = UNCALIBRATED.format(objective=".".join(key.path))
            if rows and rows[0].get("calibrated_until") is None and uncalibrated not in said:
                said.add(uncalibrated)
                notes = [*notes, uncalibrated]
            elif rows:
                which = (".".join(key.path), rows[0]["calibrated_until"])
                if which not in mismatch:  # one read per calibration, not per answer of a FILE
                    mismatch[which] = _calibrated_otherwise(conn, facts, which[0], higher_is_better, which[1],
                                                            {"neighbours": neighbours, "min_runs": min_runs,
                                                             "horizon_given": horizon})
                other = mismatch[which]
                if other and other not in said:
                    said.add(other)
                    notes = [*notes, other]
                record_only = RECORD_ONLY.format(fitted_until=which[1])
                if rows[0].get("local_scale") == 0 and record_only not in said:
                    said.add(record_only)
                    notes = [*notes, record_only]
            yield Answer(query, rows, [*notes, *exact_only("env"), *([note] if note else [])])


def suggest(env: Any, *, k: int = 5, objective: str | None = None, higher_is_better: bool = True,
            as_of: Any = None, neighbours: int = 1000, min_runs: int = 3, strategy: str | Sequence[str] = (),
            exact: bool = False, history: int | None = HISTORY_RUNS, horizon: int | None = None,
            database_url: str | None = None, as_frame: bool = False):
    """Configs that worked in environments like ``env`` (as of a date), best first, with their evidence and a
    deflated confidence (docs/sql.md, "suggest_configs"); the same options as ``metaspace suggest``. ``env``
    may be a record with its own as_of_date (capped by ``as_of``), or a list of them: one answer each."""
    batch, items = _many(env)
    queries = queries_from("env", [(f"env[{i}]" if batch else "env", item) for i, item in enumerate(items)],
                           space="env", as_of=as_of)
    answers = suggest_many(queries, k=k, objective=objective, higher_is_better=higher_is_better,
                           neighbours=neighbours, min_runs=min_runs, strategy=strategy, exact=exact,
                           history=history, horizon=horizon, database_url=database_url)
    return _answered(answers, batch, as_frame)


def optuna_params(suggestion: Mapping[str, Any]) -> dict[str, Any]:
    """A suggestion's config as the flat parameter dict ``study.enqueue_trial`` takes (dotted names)."""
    from metaspace.encoders.features import flatten

    return {name: value for name, value in flatten(suggestion.get("config") or {}).items()
            if not isinstance(value, list)}
