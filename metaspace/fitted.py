"""Fitted encoder versions as objects: a registered state from the store, built into the joint model.

Cached per process (the last few), by database, version and fingerprint: a registered version never changes,
but a database can be rebuilt under a long-running process (a new version 1 with another state). A caller
that read the active version's fingerprint with its question's facts (store/session.py) passes it, and a
cached state of another fingerprint is loaded again, without a round trip of its own on every call.
"""

from __future__ import annotations

from typing import Any

from metaspace.encoders import MetaSpace
from metaspace.store import registry

_SPACES: dict[tuple[str, int], MetaSpace] = {}
_KEPT = 8


def load_space(conn: Any, version: int, fingerprint: str | None = None) -> MetaSpace:
    """The fitted joint model of a registered version. ``fingerprint``: the version's, as the caller read it
    (when not given, it is read here: one query)."""
    key = (conn.info.dsn, version)
    if fingerprint is None:
        fingerprint = registry.fingerprint(conn, version)
    cached = _SPACES.get(key)
    if cached is None or cached.fingerprint_ != fingerprint:
        _SPACES.pop(key, None)
        while len(_SPACES) >= _KEPT:
            _SPACES.pop(next(iter(_SPACES)))
        state, stored = registry.load_state(conn, version)
        space = MetaSpace.from_dict(state)
        if space.fingerprint_ != stored:
            raise ValueError(f"encoder version {version}: stored state does not match its fingerprint")
        _SPACES[key] = cached = space
    return cached


def forget_space(conn: Any, version: int) -> None:
    _SPACES.pop((conn.info.dsn, version), None)
