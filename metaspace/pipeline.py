"""The pipeline: import run records, fit encoder versions, and embed runs (in bulk and one at a time)."""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from metaspace.encoders import EncodedRuns, EncodingError, MetaSpace, SchemaDriftWarning
from metaspace.errors import InvalidRecordError, MetaspaceError, VersionChanged
from metaspace.fitted import forget_space, load_space
from metaspace.records import Rejected, Run, parse_date, read_records, validate
from metaspace.store import graphs, registry
from metaspace.store import runs as run_store
from metaspace.store import vectors as vector_store
from metaspace.store.connection import connect, connection, other_sessions, resolve_url

T = TypeVar("T")

FIT_SAMPLE = 50_000
BULK_MIN = 10_000
ANALYZE_MIN = 1_000

Progress = Callable[[int], None]


def in_background(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items of ``items``, produced by a worker thread at most ``depth`` ahead of the consumer.

    Parsing and encoding (Python and numpy) then overlap with the database writes (PostgreSQL's work,
    during which the consumer waits without holding the GIL). An error in the producer is raised here.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        handoff.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put((end, None))
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            handoff.put((end, exc))

    worker = threading.Thread(target=produce, name="metaspace-producer", daemon=True)
    worker.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


@dataclass
class ImportSummary:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_runs(
    paths: Iterable[str], *, database_url: str | None = None, rejects: str | None = None, strict: bool = False,
    batch_size: int = 5_000, progress: Progress | None = None,
) -> ImportSummary:
    """Load run records from files (JSONL, CSV, Parquet, '-' for stdin) into historical_db.runs: upsert valid
    ones by run_id, reject invalid ones with a reason. See :func:`import_records`."""
    return import_records(read_records(paths), database_url=database_url, rejects=rejects, strict=strict,
                          batch_size=batch_size, progress=progress)


def import_records(
    records: Iterable[tuple[str, int, Any]], *, database_url: str | None = None, rejects: str | None = None,
    strict: bool = False, batch_size: int = 5_000, progress: Progress | None = None,
) -> ImportSummary:
    """Load run records given as (source, position, record) into historical_db.runs, the way import-runs
    does: the entry point for importers that read runs from elsewhere (MLflow, Optuna).

    Every record is judged on its own: an invalid one, or one the server refuses, is rejected with its
    position, field and reason, and the others land. Each batch commits whole. With ``strict`` the whole
    import is one transaction: every record is still read and every reject listed, but if there is any,
    nothing lands. Records are streamed, never all held in memory.
    """
    if batch_size < 1:
        raise MetaspaceError(f"batch_size (--batch-size) must be 1 or more, got {batch_size}")
    summary = ImportSummary()
    try:
        reject_file = open(rejects, "w", encoding="utf-8") if rejects else None  # noqa: SIM115
    except OSError as exc:
        raise MetaspaceError(f"--rejects {rejects}: cannot write it: {exc.strerror}") from None
    try:
        items = (_check(s, n, r) for s, n, r in records)
        with connection(database_url) as conn, (conn.transaction() if strict else nullcontext()):
            for chunk in in_background(_chunks(items, batch_size)):
                valid = []
                for item in chunk:
                    summary.read += 1
                    if isinstance(item, Rejected):
                        _write_reject(reject_file, item, summary)
                    else:
                        valid.append(item)
                if not (strict and summary.rejected):
                    _flush(conn, valid, summary, reject_file, progress)
            if strict and summary.rejected:
                raise MetaspaceError(f"{summary.rejected} invalid record(s), nothing imported (--strict); "
                                     f"first: {_describe_reject(summary.rejects[0])}")
    finally:
        if reject_file:
            reject_file.close()
    return summary


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check(source: str, line: int, record: Any) -> tuple[str, int, Run] | Rejected:
    if isinstance(record, InvalidRecordError):
        return Rejected(source, line, None if record.record == "?" else record.record, record.field, record.reason)
    try:
        return source, line, validate(record)
    except InvalidRecordError as exc:
        return Rejected(source, line, None if exc.record == "?" else exc.record, exc.field, exc.reason)


def _describe_reject(item: dict[str, Any]) -> str:
    return f"{item['source']}:{item['line']} run {item['run_id']!r}, field {item['field']!r}: {item['reason']}"


def _write_reject(handle, item: Rejected, summary: ImportSummary) -> None:
    summary.rejected += 1
    if len(summary.rejects) < 100:
        summary.rejects.append(item.as_dict())
    if handle:
        handle.write(json.dumps(item.as_dict()) + "\n")


def _flush(conn, batch: list[tuple[str, int, Run]], summary: ImportSummary, reject_file,
           progress: Progress | None) -> None:
    """Upsert a batch in one transaction; records the server refuses are found and rejected, the rest land."""
    if not batch:
        return
    with conn.transaction():
        counts, refused = run_store.upsert_runs(conn, [run for _, _, run in batch])
    where = {run.run_id: (source, line) for source, line, run in batch}
    for run_id, reason in refused:
        _write_reject(reject_file, Rejected(*where[run_id], run_id, "(record)", reason), summary)
    summary.inserted += counts.inserted
    summary.updated += counts.updated
    summary.unchanged += counts.unchanged
    if progress:
        progress(len(batch))


# -- embed-runs -------------------------------------------------------------------------------------


@dataclass
class EmbedSummary:
    version: int | None = None
    fitted: bool = False
    fit_summary: dict[str, Any] | None = None
    pending: int = 0
    embedded: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    unseen_keys: dict[str, int] = field(default_factory=dict)
    switched_from: int | None = None
    index_rebuilt: bool = False
    graphs: list[str] = field(default_factory=list)  # the spaces with an HNSW graph after this call
    graph_types: dict[str, str] = field(default_factory=dict)  # their kinds: vector (float32) or halfvec
    index_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    dry_run: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def embed_runs(
    *, database_url: str | None = None, refit: bool = False, rebuild: bool = False, since: str | dt.date | None = None,
    strategy: str | Iterable[str] = (), limit: int | None = None, dry_run: bool = False, batch_size: int = 5_000,
    schema: Mapping[str, Any] | None = None, fit_until: str | dt.date | None = None,
    indexed_spaces: str | Iterable[str] | None = None, index_min_vectors: int | None = None,
    asof_exact_runs: int | None = None, graph_type: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedSummary:
    """Embed the stored runs that lack a vector for the active encoder version (fitting one if none).

    ``rebuild`` (or ``refit``) fits a new version and re-embeds every run for it while the old vectors stay
    queryable; the switch to the new version happens once all runs have a vector, and drops the old ones.
    Writers are serialised by an advisory lock; every batch commits whole, so a killed run loses at most one
    batch and a rerun completes it.

    ``indexed_spaces`` (``"joint,env"``, a list, ``"all"``, ``"none"`` or ``"default"``),
    ``index_min_vectors`` and ``graph_type`` (``"halfvec"``, ``"vector"`` or ``"default"``) choose which
    spaces get an HNSW graph, from how many vectors, and of which kind; the choice is stored in the database
    and every later embed-runs builds and drops graphs to match it (``store/graphs.py`` has the defaults).
    A space without a graph answers by exact search.

    ``asof_exact_runs`` (stored the same way) sets how far down the as-of prefix graphs of each indexed space
    go: to dates leaving about that many runs, below which an as-of search answers exactly (default 2,000,
    for k = 10; ``store/graphs.py``). Every embed-runs rebuilds a space's prefix graphs once the history has
    outgrown them.
    """
    if batch_size < 1:
        raise MetaspaceError(f"batch_size (--batch-size) must be 1 or more, got {batch_size}")
    if index_min_vectors is not None and index_min_vectors < 0:
        raise MetaspaceError(f"index_min_vectors (--index-min-vectors) must be 0 or more, got {index_min_vectors}")
    if asof_exact_runs is not None and asof_exact_runs < 1:
        raise MetaspaceError(f"asof_exact_runs (--asof-exact-runs) must be 1 or more, got {asof_exact_runs}")
    choose_spaces = indexed_spaces is not None  # ("default" chooses the default rule again)
    choose_type = graph_type is not None
    chosen_type = graphs.parse_graph_type(graph_type)
    chosen_spaces = graphs.parse_spaces(indexed_spaces if isinstance(indexed_spaces, (str, type(None)))
                                        else tuple(indexed_spaces))
    started = time.perf_counter()
    summary = EmbedSummary(dry_run=dry_run)
    selection = run_store.Selection(parse_date(since, "--since"), (strategy,) if isinstance(strategy, str) else tuple(strategy))
    fit_until = parse_date(fit_until, "--fit-until")
    url = resolve_url(database_url)
    with connection(url, autocommit=True) as conn:
        prefixes = _locked_embed_runs(conn, url, summary, selection, (choose_spaces, chosen_spaces),
                                      (choose_type, chosen_type), index_min_vectors=index_min_vectors,
                                      asof_exact_runs=asof_exact_runs, rebuild=rebuild or refit or fit_until is not None,
                                      dry_run=dry_run, schema=schema, fit_until=fit_until, limit=limit,
                                      batch_size=batch_size, progress=progress)
        if prefixes is not None:
            _sync_prefix_graphs(conn, summary, *prefixes)
    summary.seconds = time.perf_counter() - started
    return summary


def _locked_embed_runs(conn, url: str, summary: EmbedSummary, selection, spaces, graph_type, *,
                       index_min_vectors, asof_exact_runs, rebuild: bool, dry_run: bool, schema, fit_until,
                       limit, batch_size: int, progress) -> tuple[graphs.IndexSettings, bool] | None:
    """embed-runs under the writers' lock; returns (settings, bulk) when the as-of prefix graphs are to be
    synced next, after the lock is released: their CONCURRENTLY builds wait for every open transaction,
    among them any writer waiting for this lock (embed_pending_v2, another embed-runs)."""
    choose_spaces, chosen_spaces = spaces
    choose_type, chosen_type = graph_type
    vector_store.lock(conn)
    try:
        owner = vector_store.owns_tables(conn)
        settings = _index_settings(conn, summary, (choose_spaces, chosen_spaces), index_min_vectors,
                                   (choose_type, chosen_type), owner=owner, dry_run=dry_run,
                                   asof_exact_runs=asof_exact_runs)
        target, active = _target_version(conn, summary, rebuild=rebuild,
                                         dry_run=dry_run, schema=schema, fit_until=fit_until)
        if target is None:
            if not dry_run and (choose_spaces or choose_type or index_min_vectors is not None
                                or asof_exact_runs is not None):
                _match_graphs(conn, summary, settings, owner=owner, bulk=False, index_started=time.perf_counter())
                return (settings, False) if owner else None
            return None
        summary.version = target
        pending = run_store.count_pending(conn, target, selection)
        summary.pending = min(pending, limit) if limit else pending
        if dry_run:
            summary.notes.append(f"would embed {summary.pending} run(s) with encoder version {target}")
            return None
        stored_before = vector_store.stored_vector_count(conn, target)
        bulk = target == active and summary.pending >= BULK_MIN and summary.pending > stored_before
        if bulk and not owner:
            bulk = False
            summary.notes.append("large backfill loaded with the HNSW indexes in place: dropping and rebuilding "
                                 "them needs the tables' owner")
        readers = other_sessions(conn) if bulk else 0
        if readers:  # their searches would scan the whole table until the graphs are built again
            bulk = False
            summary.notes.append(f"large backfill loaded with the HNSW indexes in place: {readers:,} other "
                                 "session(s) are connected to this database, whose searches would scan the table "
                                 "while the graphs were dropped (with none connected, embed-runs drops and rebuilds "
                                 "them, which is faster)")
        if owner:
            # Graphs the rule does not want once this load is in (a space not indexed, or one that stays
            # below the threshold) are dropped before it, so the load does not maintain them.
            counts = graphs.vector_counts(conn)
            after = {space: count + summary.pending for space, count in counts.items()}
            unwanted = graphs.present(conn) - graphs.wanted(settings, after)
            graphs.drop(conn, unwanted)
            if any(counts[space] for space, _ in unwanted):  # (the empty graphs of a new schema go quietly)
                summary.notes.append(_dropped_note(unwanted, settings))
        if bulk and graphs.present(conn):
            graphs.drop(conn, graphs.present(conn))
            summary.notes.append("large backfill: HNSW indexes dropped for the load, rebuilt after it")
        _embed_pending(conn, url, target, selection, summary, batch_size, progress)
        orphans = vector_store.drop_orphans(conn)  # entities of runs deleted, or changed, by other programs
        if orphans:
            summary.notes.append(f"removed {orphans:,} distinct branch vector(s) no run references any more")
        _match_graphs(conn, summary, settings, owner=owner, bulk=bulk, index_started=time.perf_counter())
        if summary.embedded >= ANALYZE_MIN or summary.embedded * 10 >= summary.pending + stored_before:
            vector_store.analyze(conn)
        if target != active and run_store.count_pending(conn, target, run_store.Selection()) == 0:
            with conn.transaction():
                summary.switched_from = registry.activate(conn, target)
            summary.notes.append(f"switched to encoder version {target}")
        return (settings, bulk) if owner else None
    finally:
        vector_store.unlock(conn)


def _index_settings(conn, summary: EmbedSummary, spaces: tuple[bool, tuple[str, ...] | None],
                    min_vectors: int | None, graph_type: tuple[bool, str | None], *, owner: bool,
                    dry_run: bool, asof_exact_runs: int | None = None) -> graphs.IndexSettings:
    """The stored choice of indexed spaces, updated with what this call was given (and stored, unless a
    dry run). ``spaces`` and ``graph_type`` are (given, value): a value of None given is the default."""
    settings = graphs.read_settings(conn)
    if not spaces[0] and not graph_type[0] and min_vectors is None and asof_exact_runs is None:
        return settings
    settings = graphs.IndexSettings(spaces[1] if spaces[0] else settings.indexed_spaces,
                                    min_vectors if min_vectors is not None else settings.index_min_vectors,
                                    graph_type[1] if graph_type[0] else settings.graph_type,
                                    asof_exact_runs if asof_exact_runs is not None else settings.asof_exact_runs)
    if dry_run:
        summary.notes.append(f"would store {settings.describe()}")
        return settings
    if not owner:
        raise MetaspaceError("choosing the indexed spaces builds and drops HNSW graphs, which needs the tables' "
                             "owner: run this embed-runs as the role that ran metaspace migrate")
    with conn.transaction():
        graphs.save_settings(conn, settings)
    summary.notes.append(f"stored for this database: {settings.describe()}")
    return settings


def _dropped_note(dropped: set[graphs.Graph], settings: graphs.IndexSettings) -> str:
    return (f"HNSW graph(s) of {graphs.describe(dropped)} dropped: not wanted by the rule "
            f"({settings.describe()}); a space without a graph answers by exact search")


def _match_graphs(conn, summary: EmbedSummary, settings: graphs.IndexSettings, *, owner: bool, bulk: bool,
                  index_started: float) -> None:
    """Build the graphs the rule wants now (a space that crossed the threshold, a choice just made, a
    backfill's rebuild) and drop those it does not; a writer that does not own the tables is told instead."""
    counts = graphs.vector_counts(conn)
    want = graphs.wanted(settings, counts)
    have = graphs.present(conn)
    if not owner:
        summary.graphs = graphs.spaces_of(have)
        if want - have:
            summary.notes.append(f"HNSW graph(s) of {graphs.describe(want - have)} missing: searches there use "
                                 "exact scans until the tables' owner runs metaspace embed-runs")
        return
    if have - want:
        graphs.drop(conn, have - want)
        summary.notes.append(_dropped_note(have - want, settings))
    built = graphs.build(conn, want)
    if built:
        summary.index_seconds = time.perf_counter() - index_started
        summary.index_rebuilt = bulk
    if built and not bulk:
        summary.notes.append(f"HNSW graph(s) built for {graphs.describe(built)} ({settings.describe()})")
    summary.graphs = graphs.spaces_of(want)
    summary.graph_types = {space: kind for space, kind in sorted(want)}


def _sync_prefix_graphs(conn, summary: EmbedSummary, settings: graphs.IndexSettings, bulk: bool) -> None:
    """The as-of prefix graphs the history calls for (``graphs.sync_prefix_graphs``: built CONCURRENTLY on
    this autocommit connection, so writers go on and searches keep the old copies until the new are valid)."""
    started = time.perf_counter()
    try:
        prefixes, _ = graphs.sync_prefix_graphs(conn, settings)
    except graphs.PrefixGraphsBusy as busy:  # left to the other session: worth a note if this run wrote vectors
        if summary.embedded:
            summary.notes.append(str(busy))
        return
    except graphs.PrefixGraphsDeferred as deferred:  # the vectors are written: this run did its work
        summary.notes.append(str(deferred))
        return
    if prefixes:
        summary.index_seconds += time.perf_counter() - started
        summary.index_rebuilt = summary.index_rebuilt or bulk
        summary.notes.append(f"as-of prefix graph(s) built: {graphs.describe_prefix(prefixes)}")


def _target_version(conn, summary: EmbedSummary, *, rebuild: bool, dry_run: bool, schema,
                    fit_until: dt.date | None) -> tuple[int | None, int | None]:
    registered = registry.versions(conn)
    active = next((v.version for v in registered if v.is_active), None)
    pending_rebuild = next((v for v in reversed(registered) if not v.is_active and (active is None or v.version > active)),
                           None)
    if active is not None and not rebuild:
        return active, active
    if rebuild and pending_rebuild is not None and (fit_until is None or pending_rebuild.fit_until == fit_until):
        summary.notes.append(f"resuming the rebuild to encoder version {pending_rebuild.version}")
        return pending_rebuild.version, active
    total = run_store.count_runs(conn, fit_until)
    if total < 2:
        known = f" known by {fit_until}" if fit_until else ""
        summary.notes.append(f"fewer than two runs{known} stored: import runs first (metaspace import-runs)")
        return None, active
    if dry_run:
        summary.notes.append(f"would fit a new encoder version on {min(total, FIT_SAMPLE)} runs")
        return None, active
    runs = run_store.sample_runs(conn, FIT_SAMPLE, fit_until)
    space = MetaSpace(overrides=schema).fit(runs)
    with conn.transaction():
        version = registry.register(conn, space.to_dict(), space.fingerprint_, space.n_fit_runs_,
                                    activate=active is None, fit_until=fit_until,
                                    fitted_through=max(run["as_of_date"] for run in runs))
    if version == active:
        summary.notes.append(f"refitting gave the same state as the active version {version}: nothing to rebuild")
        return version, active
    summary.fitted = True
    summary.fit_summary = space.summary()
    summary.notes.append(f"fitted and registered encoder version {version} on {len(runs)} runs")
    return version, (version if active is None else active)


def _embed_pending(conn, url: str, version: int, selection, summary: EmbedSummary, batch_size: int,
                   progress) -> None:
    """Batches are fetched and encoded by a worker thread on a second (reading) connection while the
    previous batch is written on this one: numpy and PostgreSQL then use both cores. Each batch is
    written in its own transaction, in order; a batch fetched while the previous one is being written
    holds only later run_ids, so it never overlaps it."""
    space = load_space(conn, version)
    legacy = vector_store.has_legacy_bytes(conn)
    with connect(url, autocommit=True) as reader, warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaDriftWarning)  # process-wide: the worker thread encodes
        unseen: Counter[str] = Counter()
        for runs, encoded, encode_seconds, batch_unseen in in_background(
                _fetch_and_encode(reader, space, version, selection, summary.pending, batch_size)):
            unseen.update(batch_unseen)
            started = time.perf_counter()
            with conn.transaction():
                vector_store.write_vectors(conn, version, runs, encoded.ok, encoded.vectors(), legacy)
                entries = [{"run_id": runs[i]["run_id"], "field": error.field, "reason": error.reason,
                            "record_sha256": runs[i]["record_sha256"]} for i, error in sorted(encoded.errors.items())]
                vector_store.quarantine(conn, version, entries)
                summary.quarantined += [{key: e[key] for key in ("run_id", "field", "reason")} for e in entries]
            summary.write_seconds += time.perf_counter() - started
            summary.encode_seconds += encode_seconds
            summary.embedded += int(encoded.ok.sum())
            if progress:
                progress(len(runs), summary.pending)
    summary.unseen_keys = dict(unseen.most_common())
    if unseen:
        shown = ", ".join(f"{key} ({count})" for key, count in unseen.most_common(5))
        summary.notes.append(
            f"{len(unseen)} key(s) that encoder version {version} was not fitted on were ignored in "
            f"{sum(unseen.values())} value(s): {shown}{' ...' if len(unseen) > 5 else ''}; "
            "metaspace embed-runs --rebuild fits a version that uses them")


def _fetch_and_encode(reader, space: MetaSpace, version: int, selection, pending: int,
                      batch_size: int) -> Iterator[tuple[list[dict], EncodedRuns, float, Counter[str]]]:
    after, remaining = "", pending
    while remaining > 0:
        runs = run_store.pending_runs(reader, version, selection, after, min(batch_size, remaining))
        if not runs:
            return
        after = runs[-1]["run_id"]
        remaining -= len(runs)
        started = time.perf_counter()
        encoded = space.encode(runs)
        unseen = Counter({f"{branch}.{key}": count for branch, encoder in space.branches_.items()
                          for key, count in getattr(encoder, "last_unknown_keys_", {}).items()})
        yield runs, encoded, time.perf_counter() - started, unseen


_ONLINE: dict[str, tuple[int, bool, str]] = {}  # database -> active version, legacy bytes column, fingerprint


def embed_run(record: Mapping[str, Any], *, database_url: str | None = None,
              conn: Any = None) -> np.ndarray:
    """Store one new run and its vectors with the active encoder version, right after its backtest.

    Two round trips once warm, on the connection this process keeps (store/session.py): the question's facts,
    then one call of historical_db.store_run with the run and its four vectors, encoded here (the active version
    and the table's form are remembered per database and looked up again only when a rebuild has switched
    versions). Returns the joint vector. Raises
    InvalidRecordError / MetaspaceError naming the field of a bad record.
    """
    run = validate(record)
    if conn is None:
        from metaspace.store.session import session

        with session(database_url) as asked:
            for note in asked.notes:
                warnings.warn(note, stacklevel=2)
            return embed_run(record, conn=asked.conn)
    for attempt in (1, 2):
        version, legacy, fingerprint = _online_target(conn, refresh=attempt == 2)
        space = load_space(conn, version, fingerprint)
        encoded = _encode_one(space, run)
        try:
            vector_store.store_run(conn, run.as_record() | {"extra": run.extra}, run.sha256, version,
                                   space.fingerprint_, {name: v[0] for name, v in encoded.vectors().items()}, legacy)
            return encoded.joint[0]
        except VersionChanged:
            forget_space(conn, version)
            if attempt == 2:
                raise MetaspaceError("the active encoder version keeps changing: is a rebuild switching?") from None
    raise AssertionError("unreachable")


def _online_target(conn, *, refresh: bool) -> tuple[int, bool, str]:
    key = conn.info.dsn
    if refresh or key not in _ONLINE:
        active = next((v for v in registry.versions(conn) if v.is_active), None)
        if active is None:
            raise MetaspaceError("no encoder version is registered yet: run `metaspace embed-runs` first")
        _ONLINE[key] = (active.version, vector_store.has_legacy_bytes(conn), active.fingerprint)
    return _ONLINE[key]


def _encode_one(space: MetaSpace, run: Run) -> EncodedRuns:
    row = run.as_record() | {"as_of_date": run.as_of_date}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaDriftWarning)
        encoded = space.encode([row])
    if encoded.errors:
        raise encoded.errors[0]
    return encoded


__all__ = ["EmbedSummary", "EncodingError", "ImportSummary", "embed_run", "embed_runs", "import_runs"]
