"""Schema migrations run from code: users run ``metaspace migrate``, never ``alembic``."""

from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg

from metaspace.errors import MetaspaceError, SchemaBehindError

VERSION_TABLE = "public.metaspace_schema_version"


def _script_location() -> str:
    """The migrations folder shipped in the package (``alembic/`` in the repository)."""
    env_py = resources.files("metaspace.migrations").joinpath("env.py")
    return str(env_py.parent)


def _config(url: str | None, **attributes: object):
    from alembic.config import Config

    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", _script_location())
    cfg.attributes["url"] = url
    cfg.attributes.update(attributes)
    return cfg


_DECLARED = re.compile(r'^(revision|down_revision)\s*=\s*(?:"([^"]*)"|None)', re.MULTILINE)


@functools.cache
def revisions() -> tuple[str, ...]:
    """All revision ids, oldest first: read from the revision files' declarations, without loading Alembic
    (every command checks the schema before it starts; that check should cost a millisecond, not Alembic's
    start-up). tests/test_migrations.py checks this chain against Alembic's own."""
    parent: dict[str | None, str] = {}
    for path in Path(_script_location(), "versions").glob("[0-9]*.py"):
        declared = dict((name, value or None) for name, value in _DECLARED.findall(path.read_text(encoding="utf-8")))
        parent[declared.get("down_revision")] = declared["revision"]
    chain, at = [], None
    while at in parent:
        at = parent[at]
        chain.append(at)
    return tuple(chain)


def head() -> str:
    return revisions()[-1]


def current(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()[0]
    if not exists:
        return None
    row = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()  # noqa: S608
    return row[0] if row else None


def require_current(conn: psycopg.Connection) -> None:
    """Refuse to work on a database whose schema is not at this version's head, naming the fix."""
    at = current(conn)
    target = head()
    conn.rollback()
    if at == target:
        return
    if at is None:
        raise SchemaBehindError("this database has no metaspace schema yet: run `metaspace migrate` first")
    if at in revisions():
        raise SchemaBehindError(
            f"the database schema is at {at}, this metaspace needs {target}: run `metaspace migrate` to upgrade"
        )
    raise SchemaBehindError(
        f"the database schema is at {at}, which this metaspace does not know (it is newer): upgrade metaspace"
    )


# Revisions that rewrite a table that grows with the runs, with the time it took per row (docs/scaling.md,
# "Cost, measured": 31 s for 100,000 joint rows on 2 cores). On the embedded default a command upgrades a
# schema itself only when that is quick; otherwise it names `metaspace migrate` and the time to expect.
# 0019 copies every run's branch vectors into entities: 2.9 s for 46,410 branch rows (15,470 runs) here.
REWRITES = {"0016_joint_run_id": ("historical_db.joint_embeddings", 0.31e-3),
            "0019_branch_entities": ("historical_db.branch_embeddings", 0.07e-3)}
QUICK_SECONDS = 10.0


def upgrade_embedded(url: str) -> str:
    """Bring the embedded default's schema to head, as a command does on first use: created when there is none,
    upgraded when the upgrade is quick. Returns what it did, in one line; raises SchemaBehindError naming
    `metaspace migrate` and the time to expect when a pending revision would rewrite a large table."""
    with psycopg.connect(url, autocommit=True) as conn:
        at = current(conn)
        chain = list(revisions())
        pending = chain if at is None else chain[chain.index(at) + 1:] if at in chain else []
        if at is not None and at not in chain:
            require_current(conn)
        expected = 0.0
        for revision in pending:
            if revision in REWRITES:
                table, per_row = REWRITES[revision]
                rows = conn.execute("SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = to_regclass(%s)",
                                    (table,)).fetchone()
                expected += float(rows[0] if rows and rows[0] else 0) * per_row
    if expected > QUICK_SECONDS:
        raise SchemaBehindError(
            f"the embedded database's schema is at {at}, this metaspace needs {head()}, and the upgrade rewrites "
            f"large tables (about {expected / 60:.0f} minutes here): run `metaspace migrate` when that suits you")
    upgrade(url)
    if at is None:
        return f"created metaspace's schema in the embedded database (metaspace migrate, {head()})"
    return f"upgraded the embedded database's schema from {at} to {head()} (metaspace migrate)"


def _run(action, url: str, *args, **attributes) -> list[str]:
    """Run an Alembic command; return the log lines of the migrations (conversion reports and the like)."""
    logger = logging.getLogger("metaspace.migrations")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    from alembic.util import CommandError

    try:
        action(_config(url, **attributes), *args)
    except CommandError as exc:
        raise MetaspaceError(f"{exc}; known revisions: {', '.join(revisions())}") from exc
    except (RuntimeError, psycopg.Error) as exc:
        raise MetaspaceError(f"migration failed: {_root_message(exc)}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            raise MetaspaceError(f"migration failed: {_root_message(exc)}") from exc
        raise
    finally:
        logger.removeHandler(handler)
    return [line for line in stream.getvalue().splitlines() if line]


def _root_message(exc: BaseException) -> str:
    while exc.__cause__ is not None or getattr(exc, "orig", None) is not None:
        exc = getattr(exc, "orig", None) or exc.__cause__
    diag = getattr(exc, "diag", None)
    hint = getattr(diag, "message_hint", None) if diag is not None else None
    return f"{exc}".strip() + (f" (hint: {hint})" if hint else "")


# The oldest PostgreSQL metaspace runs on: the functions use pg_input_is_valid (16). Tested on 16 and 18.
MIN_SERVER = 160000


def check_server(conn: psycopg.Connection) -> None:
    """Refuse a server older than :data:`MIN_SERVER`, naming both versions."""
    number, shown = conn.execute("SELECT current_setting('server_version_num')::integer, "
                                 "current_setting('server_version')").fetchone()
    if number < MIN_SERVER:
        raise MetaspaceError(
            f"this server is PostgreSQL {shown.split()[0]}; metaspace needs PostgreSQL {MIN_SERVER // 10000} or "
            "newer (with pgvector 0.8 or newer). Upgrade the server, or leave --database-url and "
            "METASPACE_DATABASE_URL unset to use metaspace's embedded PostgreSQL")


def upgrade(url: str, to: str = "head", *, concurrently: bool = False) -> list[str]:
    """Upgrade the schema to ``to`` (head by default), on PostgreSQL 16 or newer."""
    from alembic import command

    with psycopg.connect(url) as conn:
        check_server(conn)
        from metaspace.store import citus

        on_citus = citus.installed(conn)
    messages = _run(command.upgrade, url, to, concurrently=concurrently)
    if on_citus and to in ("head", head()):  # (a table of a later revision may be missing before head)
        try:
            messages += citus.distribute(url)
        except psycopg.Error as exc:
            raise MetaspaceError(f"the schema is at {head()}, but distributing its tables on Citus failed: "
                                 f"{_root_message(exc)}") from exc
    return messages


def downgrade(url: str, to: str, *, allow_data_loss: bool = False) -> list[str]:
    """Downgrade the schema to ``to`` (a revision id or ``base``)."""
    from alembic import command

    from metaspace.store import citus

    with psycopg.connect(url) as conn:
        if citus.installed(conn) and citus.layout(conn):
            raise MetaspaceError(
                "this schema's tables are distributed by Citus, and metaspace does not downgrade a distributed "
                "schema (its revisions' DDL is written for one server): restore a dump taken before the upgrade")
    return _run(command.downgrade, url, to, allow_data_loss=allow_data_loss)


def sql(to: str = "head", start: str | None = None) -> str:
    """The SQL an upgrade would run, for a DBA to review and apply (offline mode)."""
    from alembic import command

    cfg = _config(None)
    out = io.StringIO()
    cfg.stdout = out
    cfg.output_buffer = out
    command.upgrade(cfg, f"{start}:{to}" if start else to, sql=True)
    return out.getvalue()


@dataclass
class Status:
    current: str | None
    head: str
    pending: list[str] = field(default_factory=list)
    pgvector: str | None = None
    server: str | None = None
    invalid_indexes: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def status(url: str) -> Status:
    with psycopg.connect(url) as conn:
        at = current(conn)
        pgvector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        server = conn.execute("SHOW server_version").fetchone()[0]
        invalid = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'historical_db' AND NOT i.indisvalid"
        ).fetchall()
    chain = list(revisions())
    pending = chain if at is None else chain[chain.index(at) + 1 :] if at in chain else []
    return Status(
        current=at,
        head=head(),
        pending=pending,
        pgvector=pgvector[0] if pgvector else None,
        server=server,
        invalid_indexes=[name for (name,) in invalid],
    )
