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
    """The URL with any password replaced by ``***``, safe to print or log."""
    if "://" in url:
        parts = urlsplit(url)
        if not parts.password:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    params = psycopg.conninfo.conninfo_to_dict(url)
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{key}={value}" for key, value in params.items())


def connect(url: str, *, autocommit: bool = False, register: bool = True) -> psycopg.Connection:
    """A psycopg connection with the pgvector types registered (numpy arrays in and out)."""
    conn = psycopg.connect(url, autocommit=autocommit)
    if register:
        from pgvector.psycopg import register_vector

        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            conn.close()
            raise
    return conn


@contextmanager
def connection(url: str | None = None, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """Resolve the URL, connect, and check that the schema is at head before handing the connection out."""
    from metaspace.store.migrate import require_current

    conn = connect(resolve_url(url), autocommit=autocommit, register=False)
    try:
        require_current(conn)
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
