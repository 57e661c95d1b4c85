"""Where the database is, and the one way metaspace connects to it."""

from __future__ import annotations

import os
import re
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg

ENV_URL = "METASPACE_DATABASE_URL"

# What a caller above the store catches to report a database error (with :func:`describe_error`).
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,)


def resolve_url(url: str | None = None) -> str:
    """The URL given, else ``METASPACE_DATABASE_URL``, else the embedded server (started if needed)."""
    if url:
        return url
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    return _embedded("start")


def _embedded(step: str) -> str:
    """The embedded server's URL from ``embedded.start`` or ``embedded.restart``: the server wheel's own
    warnings are not for the user, metaspace's notes (a restart after a crash) are passed on."""
    from metaspace.errors import Note

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        from metaspace.store import embedded

        url = getattr(embedded, step)()
    for warning in said:
        if issubclass(warning.category, Note):
            warnings.warn(str(warning.message), Note, stacklevel=3)
    return url


def connect_resolved(url: str | None, *, autocommit: bool = False) -> tuple[psycopg.Connection, str]:
    """A connection (pgvector types not yet registered) to the URL given, else ``METASPACE_DATABASE_URL``'s,
    else the embedded server's, and the URL it was made with. On the embedded default, a server that refuses
    the connection (killed a moment ago, its ``postmaster.pid`` still there) is started again, once."""
    resolved = resolve_url(url)
    try:
        return connect(resolved, autocommit=autocommit, register=False), resolved
    except psycopg.OperationalError as exc:
        from metaspace.store.embedded import no_listener

        if not embedded_default(url) or not no_listener(exc):  # reached, and refused for a reason of its own
            raise
    resolved = _embedded("restart")
    return connect(resolved, autocommit=autocommit, register=False), resolved


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (in the authority or as ``?password=``), safe to print."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password is None and "password" not in parts.query.lower():
            return url
        query = "&".join("password=***" if pair.partition("=")[0].lower() == "password" else pair
                         for pair in parts.query.split("&"))
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rpartition("@")[2]
            netloc = f"{user}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    params = psycopg.conninfo.conninfo_to_dict(url)
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{key}={value}" for key, value in params.items())


# PostgreSQL 18.0 to 18.4 fail with "no empty local buffer available" when one scan of a temporary staging
# table larger than temp_buffers meets rows stored out of line at a high effective_io_concurrency (fixed
# in 18.6). temp_buffers of at least (effective_io_concurrency + 1) x 128 kB avoids it; it is allocated
# only as temporary tables use it, and must be set before a session's first one. Never lowered.
_TEMP_BUFFERS = (
    "SELECT set_config('temp_buffers', '64MB', false) "
    "WHERE pg_size_bytes(current_setting('temp_buffers')) < 64 * 1024 * 1024"
)


# This process's own connections, so that a writer can tell its own sessions from other programs'
# (:func:`other_sessions`); a closed or collected one drops out.
_OWN: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def connect(url: str, *, autocommit: bool = False, register: bool = True) -> psycopg.Connection:
    """A psycopg connection with the pgvector types registered (numpy arrays in and out), and room for
    the staging tables of the write path."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit)
    except psycopg.Error as exc:
        exc.connecting = True  # type: ignore[attr-defined]  # never made: describe_error says "could not connect"
        raise
    _OWN.add(conn)
    try:
        conn.execute(_TEMP_BUFFERS)
        if not autocommit:
            conn.commit()
        if register:
            from pgvector.psycopg import register_vector

            register_vector(conn)
    except psycopg.Error as exc:
        annotate(exc, conn)
        conn.close()
        raise
    return conn


def other_sessions(conn: psycopg.Connection) -> int:
    """How many client sessions of other programs are connected to this database (this process's own, made by
    :func:`connect`, are not counted): readers that a writer's choices (such as dropping a graph) would slow."""
    # (a role without pg_read_all_stats sees other roles' sessions with backend_type NULL, but their usesysid; on
    # Citus the coordinator's connections to its own placements are client backends named citus_internal)
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND (backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL)) "
                        "AND coalesce(application_name, '') NOT LIKE 'citus\\_internal%%' AND pid <> ALL (%s)",
                        ([own.info.backend_pid for own in list(_OWN) if not own.closed]
                         + [conn.info.backend_pid],)).fetchone()[0]


def embedded_default(url: str | None) -> bool:
    """Whether a command with this URL uses the embedded server (no URL given, none in the environment)."""
    return not url and not os.environ.get(ENV_URL)


def checked(conn: psycopg.Connection, url: str | None, resolved: str) -> None:
    """Check that the schema is at head. On the embedded default, a schema that is missing or behind is
    created or upgraded here (when that is quick), and the command says so in one line (a warning the
    command line prints as a note); on a user's own server it refuses, naming `metaspace migrate`."""
    from metaspace.errors import Note, SchemaBehindError
    from metaspace.store.migrate import require_current, upgrade_embedded

    try:
        require_current(conn)
    except SchemaBehindError:
        if not embedded_default(url):
            raise
        warnings.warn(upgrade_embedded(resolved), Note, stacklevel=3)
        require_current(conn)


@contextmanager
def connection(url: str | None = None, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """Resolve the URL, connect, and check that the schema is at head before handing the connection out (on
    the embedded default, creating or upgrading it first: :func:`checked`)."""
    conn, resolved = connect_resolved(url, autocommit=autocommit)  # (connect() notes its own errors)
    try:
        checked(conn, url, resolved)
        from metaspace.store import citus

        citus.prepare_writer(conn)  # (the commands that open a connection this way write runs or vectors)
        if not autocommit:
            conn.commit()  # (the setting holds for the session, whatever later transactions do)
        from pgvector.psycopg import register_vector

        register_vector(conn)
        yield conn
    except psycopg.Error as exc:
        annotate(exc, conn)
        raise
    finally:
        conn.close()


def annotate(exc: psycopg.Error, conn: psycopg.Connection) -> None:
    """Note on ``exc`` what :func:`describe_error` needs from the session it failed in, read before that closes:
    the login role and, for a cancelled statement, the session's statement_timeout (PostgreSQL reports a timeout
    that fires as a statement ends as "due to user request", so the message alone cannot say it was the timeout)."""
    if isinstance(exc, psycopg.errors.PipelineAborted):  # describe_error reads the statement that failed first
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, psycopg.Error) and cause is not exc:
            annotate(cause, conn)
    if conn.closed or hasattr(exc, "statement_timeout"):
        return
    exc.login_role = conn.info.user  # type: ignore[attr-defined]
    if isinstance(exc, psycopg.errors.QueryCanceled):
        exc.statement_timeout = _statement_timeout(conn)  # type: ignore[attr-defined]


UNKNOWN = "unknown"  # a session's statement_timeout that could not be read


def _statement_timeout(conn: psycopg.Connection) -> str | None:
    """The session's statement_timeout (None: off), read from the server (where every way of setting it meets: the
    options, the role's or database's settings, a SET); at a timeout of a millisecond that read can itself be
    cancelled, so it is tried three times, then taken from the connection's options if they set it, else
    :data:`UNKNOWN`."""
    for _ in range(3):
        try:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()
            value = conn.execute("SELECT current_setting('statement_timeout')").fetchone()[0]
            return None if _zero(value) else value
        except psycopg.errors.QueryCanceled:
            continue
        except psycopg.Error:
            break
    given = re.findall(r"statement[_-]timeout\s*=\s*(\S+)", conn.info.options or "")
    if given:
        return None if _zero(given[-1]) else given[-1]  # (the last one given is the one that holds)
    return UNKNOWN


def _zero(value: str) -> bool:
    """Whether a statement_timeout's text turns it off (0, in any unit)."""
    return re.fullmatch(r"\s*0+(\.0*)?\s*(us|ms|s|min|h|d)?\s*", value) is not None


def _not_made(primary: str) -> bool:
    """Whether libpq's message says a connection could not be made (``connection to server ... failed: ...``),
    rather than that one made was lost mid-command (closed by the server, or left unusable by that)."""
    return "connection to server" in primary and "failed" in primary


def describe_error(exc: Exception, *, embedded: bool = False) -> str:
    """A database error in words a user can act on: could not connect, lost the connection mid-command, ran past
    the user's statement_timeout, out of disk space, lacks a privilege (which role, what to grant), or the server
    refused (its message and SQLSTATE, for a DBA to search). ``embedded``: the command ran on the embedded
    server, whose log then names what ended a lost connection (a PANIC, such as a full disk)."""
    if isinstance(exc, psycopg.errors.PipelineAborted):  # the statement that failed first says why
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, psycopg.Error) and not isinstance(cause, psycopg.errors.PipelineAborted):
            return describe_error(cause, embedded=embedded)
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or str(exc)).strip()
    hint = getattr(diag, "message_hint", None)
    connecting = getattr(exc, "connecting", False) or _not_made(primary)
    if sqlstate in ("57P01", "57P02", "57P03") or (
            isinstance(exc, psycopg.OperationalError) and sqlstate is None and not connecting):
        cause = _embedded_crash_cause() if embedded else None
        return (f"the connection to the database was lost during the command: {primary}"
                + (f"\nThe server's log says: {cause}" if cause else "")
                + "\nEach batch is one transaction: what was written is whole, the rest is absent. Run the command "
                  "again to finish" + (" (it starts the embedded server again)." if embedded else "."))
    if sqlstate is None and not connecting and not isinstance(exc, psycopg.OperationalError):
        return f"the database call failed: {primary}"  # refused by psycopg itself (a NUL byte in text, ...)
    if sqlstate is None or sqlstate.startswith("08"):
        return (f"could not connect to the database: {primary}\n"
                "Check --database-url / METASPACE_DATABASE_URL, or leave both unset to use the embedded server.")
    timeout = getattr(exc, "statement_timeout", None)
    if sqlstate == "57014" and ("statement timeout" in primary or timeout is not None):
        if "statement timeout" in primary:
            cause = f"by statement_timeout{f' ({timeout})' if timeout not in (None, UNKNOWN) else ''}"
        else:  # "user request": another session's cancel, or the timeout firing as a statement ended
            setting = "whose setting could not be read" if timeout == UNKNOWN else f"at {timeout} in this session"
            cause = (f"by another session's cancel (pg_cancel_backend) or by statement_timeout ({setting}: PostgreSQL "
                     "reports a timeout that fires as a statement ends as a user request)")
        return (f"a statement was cancelled ({primary}), {cause}; a statement_timeout is set in PGOPTIONS, the URL's "
                "options, a SET or the role's or database's settings: nothing was answered or written by the "
                "statement. Raise or unset statement_timeout for this command.")
    if sqlstate.startswith("53") and sqlstate != "53300":  # disk full, out of memory
        return (f"the database server ran out of a resource: {primary} (SQLSTATE {sqlstate}). Each batch is one "
                "transaction: what was written is whole, the rest is absent. Free space, then run the command again.")
    if sqlstate == "42501":
        user = getattr(exc, "login_role", None) or "your login role"
        return (f"permission denied (SQLSTATE 42501): {primary}. The role {user} lacks this privilege: a reader "
                f"needs GRANT metaspace_reader TO {user}; import and embed need GRANT metaspace_writer TO {user} "
                "(see README, Roles).")
    return f"the database refused: {primary}{f' (hint: {hint})' if hint else ''} (SQLSTATE {sqlstate})"


def _embedded_crash_cause() -> str | None:
    """The embedded server's last PANIC since it last became ready (a full disk's "could not write ... No
    space left on device"), read from the end of its log; None if there is none."""
    from metaspace.store.embedded import pgdata

    try:
        with open(pgdata() / "log", "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 65536))
            tail = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    cause = None
    for line in tail:
        if "PANIC:" in line:
            cause = line.partition("PANIC:")[2].strip()
        elif "database system is ready to accept connections" in line:
            cause = None
    return cause
