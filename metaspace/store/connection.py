"""Where the database is, and the one way metaspace connects to it."""

from __future__ import annotations

import os
import warnings
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metaspace.store import embedded

        return embedded.start()


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


def connect(url: str, *, autocommit: bool = False, register: bool = True) -> psycopg.Connection:
    """A psycopg connection with the pgvector types registered (numpy arrays in and out), and room for
    the staging tables of the write path."""
    conn = psycopg.connect(url, autocommit=autocommit)
    try:
        conn.execute(_TEMP_BUFFERS)
        if not autocommit:
            conn.commit()
        if register:
            from pgvector.psycopg import register_vector

            register_vector(conn)
    except psycopg.Error:
        conn.close()
        raise
    return conn


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
    resolved = resolve_url(url)
    conn = connect(resolved, autocommit=autocommit, register=False)
    try:
        checked(conn, url, resolved)
        from pgvector.psycopg import register_vector

        register_vector(conn)
        yield conn
    except psycopg.Error as exc:
        exc.login_role = conn.info.user  # type: ignore[attr-defined]  # for describe_error, after the close
        raise
    finally:
        conn.close()


def describe_error(exc: Exception) -> str:
    """A database error in words a user can act on: could not connect, lacks a privilege (which role,
    what to grant), or the server refused (its message and SQLSTATE, for a DBA to search)."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or str(exc)).strip()
    hint = getattr(diag, "message_hint", None)
    if sqlstate is None or sqlstate.startswith("08"):
        return (f"could not connect to the database: {primary}\n"
                "Check --database-url / METASPACE_DATABASE_URL, or leave both unset to use the embedded server.")
    if sqlstate == "42501":
        user = getattr(exc, "login_role", None) or "your login role"
        return (f"permission denied (SQLSTATE 42501): {primary}. The role {user} lacks this privilege: a reader "
                f"needs GRANT metaspace_reader TO {user}; import and embed need GRANT metaspace_writer TO {user} "
                "(see README, Roles).")
    return f"the database refused: {primary}{f' (hint: {hint})' if hint else ''} (SQLSTATE {sqlstate})"
