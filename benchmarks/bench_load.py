"""Readers under load while writers write: latency at a fixed offered rate against idle, exact counts after
the writers, saturation throughput, and a soak for leaks (issue 28).

    python benchmarks/bench_load.py --n 200000                           # builds 200,000 sample runs, measures
    python benchmarks/bench_load.py --reuse bench_load_200000            # measures a database kept by a run before
    python benchmarks/bench_load.py --reuse bench_load_200000 --soak-minutes 60            # the soak instead
    python benchmarks/bench_load.py --n 20000 --new-runs 5000 --seconds 8                  # a smoke run
    python benchmarks/bench_load.py --reuse bench_load_20000 --soak-minutes 2 --warmup-minutes 0.5

**Readers**: 16 processes, each on its own connection, four of each kind by default (``--suggest-readers K``: K
suggest, the rest search, for a search-heavy mix), asking about records not in the database (``sample_runs`` seed
99) in turn:

- ``sql search``: ``historical_db.search_record(record, 10)`` from psycopg (the stable names of docs/sql.md);
- ``sql suggest``: ``historical_db.suggest_for_env(env)`` from psycopg;
- ``python search``: ``metaspace.search(record=..., k=10)``; ``python suggest``: ``metaspace.suggest(env)``.

**Open loop.** At an offered rate R (requests a second in all), request m of a window is due at its start +
m / R and is asked by reader m mod 16, so each reader offers R / 16. A reader sleeps until a request is due, or
asks at once when it is late. Latency is measured from when the request was due, not from when it was sent: a
slow server cannot hide the queue it causes (coordinated omission), since a reader that falls behind counts
its wait in every later request. A request not sent by the end of the window plus a drain as long again is
unsent; a percentile that falls on one prints as ``> t`` (t: the least wait of an unsent request).

**Steps**: a warm-up (not measured); the idle baseline, no writer, at ``--idle-rate`` for 2 x ``--seconds``;
saturation, no writer, closed loop (each reader asks as fast as it can) for ``--seconds``; then the writer
starts and each rate of ``--rates`` runs ``--seconds`` while it writes:

- ``metaspace import-runs`` of ``--new-runs`` new runs, then ``metaspace embed-runs``; while a rate's window is
  still to come, another batch (new run ids; outcomes moved) is imported and embedded;
- at the same time, ``metaspace import-runs`` upserting ``--changed-runs`` existing runs with a changed outcome
  (same run_id), round after round, until the new runs are in; then a last ``embed-runs``.

Each window lists the writer steps it overlapped. After the writer, the exact counts: every run has exactly one
joint vector of the active encoder version and its three entities; no joint vector without its run; nothing
pending or quarantined; no orphan entity (no run references it); as many runs as were imported; no invalid
index; and ``metaspace db check`` finds no fault.
Printed: per rate and kind, p50 / p95 against the idle p50 / p95, p95 / idle p95 against the 3x limit, errors
(must be 0; the first messages follow the table), unsent requests; the highest rate at which every kind's p95
is within 3x its idle p95; saturation throughput. Exit 1 on an error, a failed writer step or a wrong count.

**Soak** (``--soak-minutes M``, instead of the steps): the readers at ``--soak-rate`` while a writer loops
small batches (``--soak-batch`` new runs and as many changed ones imported, then embed-runs; one batch every
30 s), sampled every ``--sample-seconds``: the server's memory, the readers' RSS, and the connections
(``pg_stat_activity``; the readers' own judged flat). The server's memory is judged by what its processes hold of
their own, where a leak grows: their anonymous pages (``Pss_Anon`` of /proc/PID/smaps_rollup: the heap), swapped
or not, and the dynamic shared memory segments they map; the postmaster and its steady processes, without the
transient ones (the writer's backends, autovacuum and parallel workers). Printed beside it, not judged: the shared
buffers holding a page (``pg_buffercache``), a pool of a fixed size that fills as the database is read and grows;
and RSS summed over the processes (and PSS), which counts each shared page once per process that touched it, so
that it grows as the readers touch more of the cache, leak or not (the hour-long soak of 2026-12-07: RSS +18.4%,
then +34.1% after a prewarm). Before the readers start, the soak reads the database into shared buffers with
``pg_prewarm`` (``--no-prewarm``: not). After ``--warmup-minutes`` (default M / 6), PASS or FAIL for each
criterion, growth measured from the median of the first three samples after the warm-up to that of the last
three: the server's memory and the client's RSS within 10%, a flat connection count, no invalid index in
historical_db, no error, and the exact counts above. Stops, saying why, where the server's processes' memory
cannot be read (another user's server). Runs on the embedded server (or ``METASPACE_DATABASE_URL``'s), in a database of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from metaspace import pipeline
from metaspace.sample import sample_runs, write_runs
from metaspace.store import migrate
from metaspace.store.connection import resolve_url

KINDS = ("sql search", "sql suggest", "python search", "python suggest")
LIMIT = 3.0  # p95 under load against idle p95
GROWTH_LIMIT = 0.10  # the soak's memory growth after warm-up
WRITER = "bench_load_writer"  # the writer's connections' application_name (PGAPPNAME)
SQL = {"sql search": "SELECT * FROM historical_db.search_record(%s, 10)",
       "sql suggest": "SELECT * FROM historical_db.suggest_for_env(%s)"}


def _database(name: str, fresh: bool) -> str:
    server = resolve_url(None)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not fresh and not exists:
            sys.exit(f"--reuse {name}: no such database on {server}")
        if fresh and exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        if fresh:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server, dbname=name)


def _build(url: str, n: int, workdir: Path) -> None:
    migrate.upgrade(url)
    path = write_runs(sample_runs(n, seed=7), workdir / "base.jsonl.gz")
    started = time.perf_counter()
    pipeline.import_runs([str(path)], database_url=url)
    pipeline.embed_runs(database_url=url)
    print(f"built {n:,} runs in {time.perf_counter() - started:.0f} s", flush=True)


# -- readers (each in its own process) --------------------------------------------------------------------


def _asker(kind: str, url: str):
    """One request of this kind, on this process's own connection."""
    if kind in SQL:
        held = [psycopg.connect(url, autocommit=True)]

        def ask(record: dict) -> None:
            if held[0].closed or held[0].broken:
                held[0] = psycopg.connect(url, autocommit=True)
            argument = record if kind == "sql search" else record["env"]
            held[0].execute(SQL[kind], (Jsonb(argument),)).fetchall()
        return ask
    import metaspace

    if kind == "python search":
        return lambda record: metaspace.search(record=record, k=10, database_url=url)
    return lambda record: metaspace.suggest(record["env"], database_url=url)


def _sleep_until(moment: float) -> None:
    while (wait := moment - time.monotonic()) > 0:
        time.sleep(wait)


def _run_phase(phase: dict, ask, probes: list[dict], index: int, readers: int) -> dict:
    out = {"latencies": [], "unsent": [], "errors": 0, "messages": [], "notes": Counter()}
    turn = [index]

    def timed(due: float) -> None:
        record = probes[turn[0] % len(probes)]
        turn[0] += 1
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                ask(record)
            out["latencies"].append((time.monotonic() - due) * 1000)
            out["notes"].update(str(w.message)[:160] for w in said)
        except Exception as exc:  # noqa: BLE001 (every error is counted and its message reported)
            out["errors"] += 1
            if len(out["messages"]) < 3:
                out["messages"].append(f"{type(exc).__name__}: {exc}".strip()[:400])

    start, seconds = phase["start"], phase["seconds"]
    _sleep_until(start)
    if phase["mode"] == "warm":
        for _ in range(phase["count"]):
            timed(time.monotonic())
    elif phase["mode"] == "closed":
        while time.monotonic() < start + seconds:
            timed(time.monotonic())
    else:
        rate, deadline = phase["rate"], phase["deadline"]
        for m in range(index, math.ceil(seconds * rate), readers):
            due = start + m / rate
            _sleep_until(due)
            if time.monotonic() > deadline:
                out["unsent"].append((deadline - due) * 1000)
            else:
                timed(due)
    out["ended"] = time.monotonic()
    return out


def _reader(index: int, kind: str, url: str, probes: list[dict], readers: int, commands, results) -> None:
    ask = _asker(kind, url)
    results.put(("ready", index, os.getpid()))
    while (phase := commands.get()) is not None:
        results.put((phase["id"], index, _run_phase(phase, ask, probes, index, readers)))


class Readers:
    """The reader processes, and phases sent to all of them at once."""

    def __init__(self, url: str, probes: list[dict], count: int, suggesting: int) -> None:
        context = multiprocessing.get_context("spawn")  # nothing of this process's state (connections) is shared
        self.count, self.results, self.next_id, self.early = count, context.Queue(), 0, []
        # the first ``suggesting`` readers suggest (sql and python in turn), the others search: request m goes to
        # reader m mod count, so suggests are suggesting / count of the requests
        self.kinds = [("sql suggest", "python suggest")[i % 2] if i < suggesting
                      else ("sql search", "python search")[(i - suggesting) % 2] for i in range(count)]
        self.commands = [context.Queue() for _ in range(count)]
        self.processes = [context.Process(target=_reader, daemon=True,
                                          args=(i, self.kinds[i], url, probes, count, self.commands[i], self.results))
                          for i in range(count)]
        for process in self.processes:
            process.start()
        self.pids = {}
        while len(self.pids) < count:
            _, index, pid = self._get()
            self.pids[index] = pid

    def _get(self, timeout: float = math.inf):
        """The next result; a reader that died stops the benchmark, naming it."""
        until = time.monotonic() + timeout
        while True:
            try:
                return self.results.get(timeout=max(0.0, min(5.0, until - time.monotonic())))
            except queue.Empty:
                dead = [i for i, p in enumerate(self.processes) if not p.is_alive()]
                if dead:
                    sys.exit(f"reader {dead[0]} ({self.kinds[dead[0]]}) exited with {self.processes[dead[0]].exitcode}")
                if time.monotonic() >= until:
                    return None

    def wait_until(self, moment: float) -> None:
        """Sleep until then, taking the results that come meanwhile (a reader's queue never backs up)."""
        while (item := self._get(max(0.0, moment - time.monotonic()))) is not None:
            self.early.append(item)

    def send(self, mode: str, seconds: float = 0.0, rate: float = 0.0, count: int = 0, start: float | None = None,
             drain: float | None = None) -> int:
        start = time.monotonic() + 1.0 if start is None else start
        self.next_id += 1
        phase = {"id": self.next_id, "mode": mode, "start": start, "seconds": seconds, "rate": rate,
                 "count": count, "deadline": start + seconds + (seconds if drain is None else drain)}
        for commands in self.commands:
            commands.put(phase)
        return self.next_id

    def collect(self, phase_id: int) -> dict[str, dict]:
        """Every reader's result of one phase, merged by kind."""
        got = [item for item in self.early if item[0] == phase_id]
        self.early = [item for item in self.early if item[0] != phase_id]
        while len(got) < self.count:
            item = self._get()
            (got if item[0] == phase_id else self.early).append(item)
        return _by_kind([(self.kinds[index], result) for _, index, result in got])

    def run(self, mode: str, **phase) -> dict[str, dict]:
        return self.collect(self.send(mode, **phase))

    def rss(self) -> float:
        return sum(_rss(pid) for pid in self.pids.values())

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


def _by_kind(results: list[tuple[str, dict]]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for kind, result in results:
        into = merged.setdefault(kind, {"latencies": [], "unsent": [], "errors": 0, "messages": [],
                                        "notes": Counter(), "ended": 0.0})
        for key in ("latencies", "unsent", "messages"):
            into[key] += result[key]
        into["errors"] += result["errors"]
        into["notes"].update(result["notes"])
        into["ended"] = max(into["ended"], result["ended"])
    return merged


def _rss(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0.0


# -- figures ----------------------------------------------------------------------------------------------


def _quantile(stat: dict, q: float) -> float:
    """Nearest rank; an unsent request counts as infinitely late."""
    values = sorted(stat["latencies"]) + [math.inf] * len(stat["unsent"])
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else math.nan


def _ms(stat: dict, q: float) -> str:
    value = _quantile(stat, q)
    return f"> {min(stat['unsent']) / 1000:.0f} s" if math.isinf(value) else f"{value:.1f}"


def _pair(stat: dict) -> str:
    return f"{_ms(stat, 0.5)} / {_ms(stat, 0.95)}"


def _ratio(stat: dict, idle: dict) -> float:
    return _quantile(stat, 0.95) / _quantile(idle, 0.95)


def _ratio_text(stat: dict, idle: dict) -> str:
    ratio = _ratio(stat, idle)
    if math.isinf(ratio):  # at least the least wait of an unsent request
        return f"> {min(stat['unsent']) / _quantile(idle, 0.95):.0f}x"
    return f"{ratio:.1f}x"


def _messages(label: str, stats: dict[str, dict], shown: list[str]) -> None:
    for kind, stat in stats.items():
        shown += [f"{label}, {kind}: {message}" for message in stat["messages"]]


# -- the writer (metaspace commands, as a user runs them) --------------------------------------------------


class Writer:
    """import-runs and embed-runs as subprocesses, each step logged with its time and JSON summary."""

    def __init__(self, url: str, workdir: Path, tag: str, fresh: list[dict], changed: list[dict]) -> None:
        self.url, self.workdir, self.tag, self.fresh, self.changed = url, workdir, tag, fresh, changed
        self.steps: list[dict] = []
        self.stop_new, self.new_done, self.stop = threading.Event(), threading.Event(), threading.Event()
        self.batches, self.origin = 0, time.monotonic()

    def step(self, name: str, *args: str) -> dict:
        step = {"name": name, "start": time.monotonic(), "end": None, "rc": None, "summary": {}, "stderr": ""}
        self.steps.append(step)  # listed while it runs: the windows it overlaps see it
        done = subprocess.run([sys.executable, "-m", "metaspace", *args, "--database-url", self.url,
                               "--format", "json"], capture_output=True, text=True,
                              env={**os.environ, "PGAPPNAME": WRITER})
        try:
            step["summary"] = json.loads(done.stdout) if done.returncode == 0 else {}
        except ValueError:
            pass
        step.update(end=time.monotonic(), rc=done.returncode, stderr=done.stderr.strip())
        return step

    def new_batch(self, batch: int) -> Path:
        """The new runs of one batch: fresh run ids; after the first, outcomes moved so records differ."""
        records = [{**r, "run_id": f"LOAD_{self.tag}_{batch}_{i:07d}",
                    "outcome": {**r["outcome"], "sharpe": round(r["outcome"]["sharpe"] + batch * 1e-4, 6)}}
                   for i, r in enumerate(self.fresh)]
        return write_runs(records, self.workdir / f"new_{batch}.jsonl.gz")

    def changed_round(self, round_: int) -> Path:
        records = [{**r, "outcome": {**r["outcome"], "sharpe": round(r["outcome"]["sharpe"] + (round_ + 1) * 1e-4, 6)}}
                   for r in self.changed]
        return write_runs(records, self.workdir / "changed.jsonl")

    def new_runs(self) -> None:
        """Batches of new runs, imported then embedded, until told to stop (after the batch under way)."""
        batch = 0
        path = self.new_batch(0)
        while True:
            self.step("import new", "import-runs", str(path))
            self.step("embed", "embed-runs")
            self.batches = batch = batch + 1
            if self.stop_new.is_set():
                break
            path = self.new_batch(batch)
        self.new_done.set()

    def upserts(self, pause: float) -> None:
        round_ = 0
        while not self.new_done.is_set():
            self.step("upsert", "import-runs", str(self.changed_round(round_)))
            round_ += 1
            self.new_done.wait(pause)

    def soak(self, every: float) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.step("import new", "import-runs", str(self.new_batch(self.batches)))
            self.step("upsert", "import-runs", str(self.changed_round(self.batches)))
            self.step("embed", "embed-runs")
            self.batches += 1
            self.stop.wait(max(0.0, every - (time.monotonic() - started)))

    def failures(self) -> list[str]:
        return [f"{s['name']} exited {s['rc']}: {s['stderr'][-600:]}" for s in self.steps if s["rc"] != 0]

    def inserted(self, name: str) -> int:
        return sum(s["summary"].get("inserted", 0) for s in self.steps if s["name"] == name)

    def overlap(self, start: float, end: float) -> str:
        parts = []
        for name in ("import new", "embed", "upsert"):
            spans = [(max(s["start"], start), min(s["end"] or time.monotonic(), end))
                     for s in self.steps if s["name"] == name]
            covered = sum(max(0.0, b - a) for a, b in spans)  # steps of one name never overlap each other
            if covered:
                parts.append(f"{name} {covered / (end - start):.0%}")
        return ", ".join(parts) or "none (the writer had finished)"

    def report(self, measured: list[tuple], new_runs: int) -> None:
        """Which steps each window overlapped, and each step's summary (the upsert rounds summed)."""
        origin = self.origin
        print("\nWriter overlap (seconds from the writer's start)")
        print("| rate req/s | window | writer steps overlapping it (share of the window) |\n| --- | --- | --- |")
        for rate, _, started, ended, overlap in measured:
            print(f"| {rate:g} | {started - origin:.0f}-{ended - origin:.0f} s | {overlap} |")
        print("| step | from-to (s) | summary |\n| --- | --- | --- |")
        for step in self.steps:
            if step["name"] != "upsert":
                s = step["summary"]
                what = (f"inserted {s.get('inserted', 0):,}, updated {s.get('updated', 0):,}" if "inserted" in s else
                        f"embedded {s.get('embedded', 0):,} in {s.get('seconds', 0):.0f} s" if "embedded" in s
                        else f"exit {step['rc']}")
                notes = "; ".join(s.get("notes", []))[:300]
                print(f"| {step['name']} | {step['start'] - origin:.0f}-{step['end'] - origin:.0f} | {what}"
                      f"{'; ' + notes if notes else ''} |")
        upserts = [s for s in self.steps if s["name"] == "upsert"]
        print(f"| upsert x {len(upserts)} | {min((s['start'] for s in upserts), default=origin) - origin:.0f}-"
              f"{max((s['end'] for s in upserts), default=origin) - origin:.0f} | updated "
              f"{sum(s['summary'].get('updated', 0) for s in upserts):,}, inserted {self.inserted('upsert'):,} "
              f"(each round {len(self.changed):,} runs) |")
        first = next(s["end"] for s in self.steps if s["name"] == "embed")
        last_window = measured[-1][3]
        print(f"The first batch ({new_runs:,} new runs) was written by {first - origin:.0f} s, "
              + ("after the last window ended." if first >= last_window else
                 f"before the last window ended ({last_window - origin:.0f} s): {self.batches - 1} more batch(es) "
                 "kept the writer going."))


def _stored_records(url: str, count: int, tag: str) -> list[dict]:
    """Existing runs, as records import-runs takes (their extra fields at the top level)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT run_id, config_id, strategy_id, as_of_date::text, config, env, outcome, extra "
            "FROM historical_db.runs WHERE run_id NOT LIKE 'LOAD%%' ORDER BY md5(run_id || %s) LIMIT %s",
            (tag, count)).fetchall()
    return [{"run_id": r[0], "config_id": r[1], "strategy_id": r[2], "as_of_date": r[3], "config": r[4],
             "env": r[5], "outcome": r[6], **(r[7] or {})} for r in rows]


# -- checks -----------------------------------------------------------------------------------------------

def _checks(url: str, expected_runs: int) -> list[tuple[str, bool, str]]:
    """The exact counts after the writers, as ``metaspace db check`` counts them (store/integrity.py)."""
    done = subprocess.run([sys.executable, "-m", "metaspace", "db", "check", "--database-url", url, "--format", "json"],
                          capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}
    got = {name: report.get(name, -1) for name in ("runs", "embedded", "pending", "quarantined", "duplicate_joint",
                                                    "orphan_joint", "partial_entities", "orphan_entities",
                                                    "invalid_indexes")}
    runs = got["runs"]
    return [
        ("runs stored = runs imported", runs == expected_runs, f"{runs:,} stored, {expected_runs:,} imported"),
        ("every run has exactly one joint vector (active version)",
         got["embedded"] == runs and got["duplicate_joint"] == 0,
         f"{got['embedded']:,} embedded, {got['duplicate_joint']:,} duplicated"),
        ("nothing pending", got["pending"] == 0, f"{got['pending']:,} pending"),
        ("no joint vector without its run", got["orphan_joint"] == 0, f"{got['orphan_joint']:,} without"),
        ("every run has its three entities", got["partial_entities"] == 0,
         f"{got['partial_entities']:,} runs lack one"),
        ("nothing quarantined", got["quarantined"] == 0, f"{got['quarantined']:,} quarantined"),
        ("no orphan entity", got["orphan_entities"] == 0, f"{got['orphan_entities']:,} orphans"),
        ("no invalid index in historical_db", got["invalid_indexes"] == 0, f"{got['invalid_indexes']:,} invalid"),
        ("`metaspace db check` finds no fault", done.returncode == 0 and not report.get("faults"),
         f"exit {done.returncode}, faults {report.get('faults', done.stderr.strip()[-300:])}"),
    ]


def _print_checks(checks: list[tuple[str, bool, str]]) -> None:
    print("| check | result | |\n| --- | --- | --- |")
    for name, ok, detail in checks:
        print(f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |")


# -- the two modes ----------------------------------------------------------------------------------------


def _load(args, url: str, readers: Readers, workdir: Path, tag: str) -> bool:
    idle = readers.run("open", seconds=2 * args.seconds, rate=args.idle_rate)
    saturation = readers.run("closed", seconds=args.seconds)
    with psycopg.connect(url) as conn:
        runs_before = conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
    writer = Writer(url, workdir, tag, sample_runs(args.new_runs, seed=8),
                    _stored_records(url, args.changed_runs, tag))
    threads = [threading.Thread(target=writer.new_runs), threading.Thread(target=writer.upserts, args=(5.0,))]
    writer.origin = time.monotonic()
    for thread in threads:
        thread.start()
    measured = []
    for rate in (float(r) for r in args.rates.split(",")):
        started = time.monotonic() + 1.0
        stats = readers.run("open", seconds=args.seconds, rate=rate, start=started)
        ended = max(stat["ended"] for stat in stats.values())
        measured.append((rate, stats, started, ended, writer.overlap(started, ended)))
        print(f"rate {rate:g}/s done ({ended - started:.0f} s; writer: {measured[-1][4]})", flush=True)
    writer.stop_new.set()
    threads[0].join()
    threads[1].join()
    writer.step("final embed", "embed-runs")
    checks = _checks(url, runs_before + writer.inserted("import new"))

    print(f"\nIdle (no writer) at {args.idle_rate:g} req/s for {2 * args.seconds:g} s, and saturation (no writer, "
          f"closed loop, {readers.count} readers, {args.seconds:g} s); ms p50 / p95")
    print("| kind | idle p50 / p95 | saturation req/s | saturation p50 / p95 | errors (idle + saturation) |\n"
          "| --- | --- | --- | --- | --- |")
    for kind in KINDS:
        s = saturation[kind]
        print(f"| {kind} | {_pair(idle[kind])} | {len(s['latencies']) / args.seconds:.1f} | {_pair(s)} | "
              f"{idle[kind]['errors']} + {s['errors']} |")
    print(f"| all | | {sum(len(s['latencies']) for s in saturation.values()) / args.seconds:.1f} | | |")

    print(f"\nUnder the writer, {args.seconds:g} s a rate (open loop, latency from when each request was due); ms")
    print("| rate req/s | kind | p50 / p95 | idle p50 / p95 | p95 / idle p95 | errors | unsent |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    shown: list[str] = []
    for rate, stats, *_ in measured:
        for kind in KINDS:
            print(f"| {rate:g} | {kind} | {_pair(stats[kind])} | {_pair(idle[kind])} | "
                  f"{_ratio_text(stats[kind], idle[kind])} | {stats[kind]['errors']} | {len(stats[kind]['unsent'])} |")
        _messages(f"rate {rate:g}", stats, shown)
    _messages("idle", idle, shown)
    _messages("saturation", saturation, shown)
    within = [rate for rate, stats, *_ in measured if all(_ratio(stats[k], idle[k]) <= LIMIT for k in KINDS)]
    print(f"\nHighest rate with every kind's p95 within {LIMIT:g}x its idle p95: "
          f"{f'{max(within):g} req/s' if within else 'none of the rates'} (rates within: "
          f"{', '.join(f'{r:g}' for r in within) or 'none'})")
    writer.report(measured, args.new_runs)
    print("\nAfter the writer")
    _print_checks(checks)
    shown += writer.failures()
    if shown:
        print("\nErrors (first messages):")
        for message in shown[:12]:
            print(f"- {message}")
    _notes({f"rate {m[0]:g}, {k}": m[1][k] for m in measured for k in KINDS})
    return not shown and all(ok for _, ok, _ in checks)


def _notes(stats: dict[str, dict]) -> None:
    """The notes (warnings) the Python API gave, summed: one that appears only under load is worth a look."""
    notes: Counter = Counter()
    for stat in stats.values():
        notes.update(stat["notes"])
    if notes:
        print("\nNotes the Python API gave under load (count: note)")
        for note, count in notes.most_common(6):
            print(f"- {count}: {note}")


def _server(conn) -> psutil.Process:
    """The postmaster: the parent of this connection's backend."""
    return psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0]).parent()


def _smaps(pid: int) -> dict[str, float]:
    """/proc/PID/smaps_rollup's fields, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = float(value.split()[0]) * 1024
    return fields


def _dsm(pid: int) -> set[str]:
    """The dynamic shared memory segments (``/dev/shm/PostgreSQL.*``: parallel query's, some extensions') a
    process maps."""
    return {line.split(maxsplit=5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if " /dev/shm/PostgreSQL." in line}


def _transient(conn) -> set[int]:
    return {pid for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
        "OR backend_type IN ('autovacuum worker', 'parallel worker')", (WRITER,))}


def _server_memory(conn, postmaster: psutil.Process, buffers_sql: str | None) -> dict[str, float]:
    """The server's memory. Judged: ``private``, what its steady processes (not the transient: the writer's
    backends, autovacuum and parallel workers, read before and after the walk) hold of their own: their
    anonymous pages (``Pss_Anon``: the heap, where a leak grows; pages a fork shares, in proportion) and those
    swapped out (``SwapPss``), plus the dynamic shared memory segments they map (each once). Not USS: a page of the
    buffer cache that one process alone has touched counts in its USS. Beside it, not judged: ``buffers``, the
    shared buffers holding a page (``buffers_sql``; NaN without pg_buffercache), a pool of a fixed size
    (shared_buffers) that fills as the database is read and grows; RSS of all the processes and RSS and PSS of the
    steady ones, which count each shared page once per process that touched it."""
    transient = _transient(conn)
    processes = [postmaster, *postmaster.children(recursive=True)]
    transient |= _transient(conn)
    memory = dict.fromkeys(("rss_all", "rss", "pss", "private"), 0.0)
    segments: set[str] = set()
    for process in processes:
        try:
            rss = process.memory_info().rss
            memory["rss_all"] += rss
            if process.pid not in transient:
                fields = _smaps(process.pid)
                memory["rss"] += rss
                memory["pss"] += fields["Pss"]
                memory["private"] += fields["Pss_Anon"] + fields.get("SwapPss", 0.0)
                segments |= _dsm(process.pid)
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue  # (a process that ended during the walk)
    for path in segments:
        try:
            memory["private"] += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            continue
    memory["buffers"] = float(conn.execute(buffers_sql).fetchone()[0]) if buffers_sql else math.nan
    return memory


def _readable(postmaster: psutil.Process) -> None:
    """Stop, saying why, where the server's processes' memory cannot be read (another user's server, a kernel
    without Pss_Anon): a soak that skipped them would judge nothing."""
    try:
        fields = _smaps(postmaster.pid)
        _dsm(postmaster.pid)
    except OSError as exc:
        sys.exit(f"the soak cannot read the server's memory ({exc}): run it as the server's user or as root")
    if "Pss_Anon" not in fields:
        sys.exit("the soak cannot read the server's memory: /proc/PID/smaps_rollup has no Pss_Anon "
                 "(Linux 5.9 or later)")


def _buffers_sql(conn) -> str | None:
    """The query of the shared buffers holding a page, through pg_buffercache (created if missing, and tried
    once here), or None with a line saying why not."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        schema = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                              "WHERE e.extname = 'pg_buffercache'").fetchone()[0]
        query = sql.SQL("SELECT b.buffers_used::bigint * current_setting('block_size')::bigint "
                        "FROM {}.pg_buffercache_summary() b").format(sql.Identifier(schema)).as_string(conn)
        conn.execute(query).fetchone()
        return query
    except psycopg.Error as exc:
        print(f"pg_buffercache cannot be read ({exc.diag.message_primary}): the shared buffers are not shown",
              flush=True)
        return None


def _prewarm(conn) -> str:
    """Read every table of historical_db, its TOAST and their valid indexes into shared buffers, where pg_prewarm
    may be created; say what was read against shared_buffers, or why nothing was."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        schema = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                              "WHERE e.extname = 'pg_prewarm'").fetchone()[0]
        blocks = conn.execute(sql.SQL("""
            WITH tables AS (
                SELECT c.oid, c.reltoastrelid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'historical_db' AND c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
            ), heaps AS (
                SELECT oid FROM tables UNION ALL SELECT reltoastrelid FROM tables WHERE reltoastrelid <> 0
            ), relations AS (
                SELECT oid FROM heaps
                UNION ALL
                SELECT i.indexrelid FROM pg_index i JOIN heaps h ON h.oid = i.indrelid WHERE i.indisvalid
            )
            SELECT coalesce(sum({}.pg_prewarm(oid)), 0) FROM relations""").format(
            sql.Identifier(schema))).fetchone()[0]
    except psycopg.Error as exc:
        return f"not prewarmed: pg_prewarm cannot be used ({exc.diag.message_primary})"
    size, limit = conn.execute("SELECT current_setting('block_size')::bigint, "
                               "pg_size_bytes(current_setting('shared_buffers'))").fetchone()
    return (f"prewarmed {blocks * size / 2**20:,.0f} MB of historical_db into shared_buffers of "
            f"{limit / 2**20:,.0f} MB" + ("" if blocks * size <= limit else
                                          " (more than they hold: the cache turns over)"))


def _soak(args, url: str, readers: Readers, workdir: Path, tag: str) -> bool:
    every, total = args.sample_seconds, args.soak_minutes * 60
    warmup = (args.warmup_minutes if args.warmup_minutes is not None else args.soak_minutes / 6) * 60
    with psycopg.connect(url) as conn:
        runs_before = conn.execute("SELECT count(*) FROM historical_db.runs").fetchone()[0]
    writer = Writer(url, workdir, tag, sample_runs(args.soak_batch, seed=8),
                    _stored_records(url, args.soak_batch, tag))
    with psycopg.connect(url, autocommit=True) as conn:
        _readable(_server(conn))
        print(_prewarm(conn) if args.prewarm else "not prewarmed (--no-prewarm)", flush=True)
        buffers_sql = _buffers_sql(conn)
    thread = threading.Thread(target=writer.soak, args=(30.0,))
    origin = time.monotonic() + 1.0
    phases = [readers.send("open", seconds=every, rate=args.soak_rate, start=origin + i * every)
              for i in range(math.ceil(total / every))]
    thread.start()
    samples = []
    with psycopg.connect(url, autocommit=True) as conn:
        postmaster = _server(conn)
        for i in range(len(phases) + 1):
            readers.wait_until(origin + i * every)
            memory = _server_memory(conn, postmaster, buffers_sql)
            connections, own = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE backend_type = 'client backend' AND application_name <> %s "
                "AND pid <> pg_backend_pid()) FROM pg_stat_activity", (WRITER,)).fetchone()
            samples.append({"t": i * every, **memory,
                            "client": readers.rss(), "connections": connections, "own": own,
                            "batches": writer.batches})
        stats = [readers.collect(phase) for phase in phases]
    writer.stop.set()
    thread.join()
    writer.step("final embed", "embed-runs")
    checks = _checks(url, runs_before + writer.inserted("import new"))

    mb = 1024 * 1024
    print(f"\nSoak: {args.soak_minutes:g} min at {args.soak_rate:g} req/s, the writer every 30 s ({args.soak_batch} "
          f"new + {args.soak_batch} changed runs, embed-runs); warm-up {warmup / 60:g} min")
    print("| t (min) | server private MB (judged) | shared buffers holding a page, MB | server RSS MB steady (all) "
          "| server PSS MB "
          "| client RSS MB | connections all / readers | p95 ms search / suggest, the interval before | errors "
          "| batches |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, s in enumerate(samples):
        merged = _by_kind([(kind.split()[1], stat) for kind, stat in stats[i - 1].items()]) if i else {}
        p95 = f"{_ms(merged['search'], 0.95)} / {_ms(merged['suggest'], 0.95)}" if merged else ""
        errors = sum(stat["errors"] for stat in merged.values()) if merged else ""
        print(f"| {s['t'] / 60:.1f} | {s['private'] / mb:.0f} | {s['buffers'] / mb:.0f} | "
              f"{s['rss'] / mb:.0f} ({s['rss_all'] / mb:.0f}) | {s['pss'] / mb:.0f} | "
              f"{s['client'] / mb:.0f} | {s['connections']} / {s['own']} | {p95} | {errors} | {s['batches']} |")
    after = [s for s in samples if s["t"] >= warmup] or samples[-1:]
    warm = [phase for i, phase in enumerate(stats) if i * every >= warmup] or stats
    by_kind = {kind: _by_kind([(kind, phase[kind]) for phase in warm])[kind] for kind in KINDS}
    print("\n| kind (after warm-up) | p50 / p95 ms | errors | unsent |\n| --- | --- | --- | --- |")
    for kind, stat in by_kind.items():
        print(f"| {kind} | {_pair(stat)} | {stat['errors']} | {len(stat['unsent'])} |")
    if any(stat["unsent"] for stat in by_kind.values()):
        print(f"{args.soak_rate:g} req/s is more than this server answers here: a backlog grew (requests unsent); "
              "a lower --soak-rate soaks without a queue")

    def growth(key: str) -> float:
        """From the first samples after the warm-up to the last (the median of three at each end: one sample of a
        process's heap moves by a few percent)."""
        first = float(np.median([s[key] for s in after[:3]]))
        last = float(np.median([s[key] for s in after[-3:]]))
        return last / first - 1 if first > 0 else math.nan

    errors = sum(stat["errors"] for phase in stats for stat in phase.values())
    own = [s["own"] for s in after]
    criteria = [
        (f"server memory growth after warm-up within {GROWTH_LIMIT:.0%} (its processes' own: heap, swapped, "
         "dynamic shared memory)", growth("private") <= GROWTH_LIMIT,
         f"{growth('private'):+.1%} (not judged: the shared buffers holding a page {growth('buffers'):+.1%}, a pool "
         f"of a fixed size; RSS {growth('rss'):+.1%} steady, {growth('rss_all'):+.1%} all processes, PSS "
         f"{growth('pss'):+.1%})"),
        (f"client RSS growth after warm-up within {GROWTH_LIMIT:.0%}", growth("client") <= GROWTH_LIMIT,
         f"{growth('client'):+.1%}"),
        ("connection count flat", max(own) == min(own),
         f"readers' {min(own)}-{max(own)}; all {min(s['connections'] for s in after)}-"
         f"{max(s['connections'] for s in after)} (the writer's come and go)"),
        ("no error", errors == 0 and not writer.failures(), f"{errors} reader error(s), "
         f"{len(writer.failures())} failed writer step(s)"),
        *checks,
    ]
    print(f"\nCriteria (from {after[0]['t'] / 60:.1f} to {after[-1]['t'] / 60:.1f} min)")
    _print_checks(criteria)
    shown = writer.failures()
    for i, phase in enumerate(stats):
        _messages(f"interval {i}", phase, shown)
    if shown:
        print("\nErrors (first messages):")
        for message in shown[:12]:
            print(f"- {message}")
    _notes({f"{i} {k}": phase[k] for i, phase in enumerate(stats) for k in KINDS})
    return all(ok for _, ok, _ in criteria)


def _machine(url: str) -> str:
    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, PostgreSQL {server}, pgvector "
            f"{vector[0] if vector else '?'}, commit {commit or '?'}, load average {load}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="sample runs in the database built")
    parser.add_argument("--reuse", metavar="NAME", help="measure this existing database instead of building one")
    parser.add_argument("--new-runs", type=int, default=100_000, help="new runs a writer's batch imports and embeds")
    parser.add_argument("--changed-runs", type=int, default=1000, help="existing runs each upsert round changes")
    parser.add_argument("--seconds", type=float, default=30.0, help="the window of each rate")
    parser.add_argument("--rates", default="10,20,40,80,160", help="offered rates, requests a second in all")
    parser.add_argument("--idle-rate", type=float, default=4.0, help="the idle baseline's rate")
    parser.add_argument("--readers", type=int, default=16, help="reader processes (a quarter of each kind)")
    parser.add_argument("--suggest-readers", type=int, help="readers that suggest (sql and python in turn; the rest "
                        "search): the mix; default half")
    parser.add_argument("--soak-minutes", type=float, help="run the soak for this long instead of the load steps")
    parser.add_argument("--warmup-minutes", type=float, help="the soak's warm-up (default: a sixth of it)")
    parser.add_argument("--soak-rate", type=float, default=40.0, help="the soak's offered rate")
    parser.add_argument("--no-prewarm", dest="prewarm", action="store_false",
                        help="the soak: do not read the database into shared buffers first")
    parser.add_argument("--soak-batch", type=int, default=200, help="new (and changed) runs of a soak batch")
    parser.add_argument("--sample-seconds", type=float, default=30.0, help="the soak's sampling interval")
    args = parser.parse_args()
    began = time.monotonic()
    name = args.reuse or f"bench_load_{args.n}"
    url = _database(name, fresh=not args.reuse)
    workdir = Path(tempfile.mkdtemp(prefix="bench_load_"))
    if not args.reuse:
        _build(url, args.n, workdir)
    tag = time.strftime("%Y%m%d%H%M%S")
    command = shlex.join(["python", "benchmarks/bench_load.py", *sys.argv[1:]])
    machine = _machine(url)
    print(f"command: {command}\nmachine: {machine}", flush=True)
    with psycopg.connect(url) as conn:
        runs, version = conn.execute("SELECT count(*), historical_db.active_encoder_version_v1() "
                                     "FROM historical_db.runs").fetchone()
    print(f"{runs:,} runs in {name}, encoder version {version}; starting {args.readers} readers", flush=True)
    probes = [{key: r[key] for key in ("config", "env", "outcome")} for r in sample_runs(64, seed=99)]
    suggesting = args.readers // 2 if args.suggest_readers is None else args.suggest_readers
    if not 2 <= suggesting <= args.readers - 2:
        parser.error("--suggest-readers must leave at least two readers of each kind (search and suggest)")
    readers = Readers(url, probes, args.readers, suggesting)
    try:
        readers.run("warm", count=3)
        ok = (_soak if args.soak_minutes else _load)(args, url, readers, workdir, tag)
        print(f"\nclient RSS at the end: {readers.rss() / 2**20:.0f} MB ({args.readers} readers)")
    finally:
        readers.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ncommand: {command}\nmachine: {machine}\nload average at the end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; wall time {time.monotonic() - began:.0f} s; "
          f"database {name} kept (--reuse {name})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
