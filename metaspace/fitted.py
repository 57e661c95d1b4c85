"""Fitted encoder versions as objects: a registered state from the store, built into the joint model.

Cached per process (the last few): a registered version never changes. A database rebuilt under a running
process is caught by store_run_v3's fingerprint check, after which :func:`forget_space` drops the entry.
"""

from __future__ import annotations

from typing import Any

from metaspace.encoders import MetaSpace
from metaspace.store import registry

_SPACES: dict[tuple[str, int], MetaSpace] = {}
_KEPT = 8


def load_space(conn: Any, version: int) -> MetaSpace:
    """The fitted joint model of a registered version."""
    key = (conn.info.dsn, version)
    if key not in _SPACES:
        while len(_SPACES) >= _KEPT:
            _SPACES.pop(next(iter(_SPACES)))
        state, fingerprint = registry.load_state(conn, version)
        space = MetaSpace.from_dict(state)
        if space.fingerprint_ != fingerprint:
            raise ValueError(f"encoder version {version}: stored state does not match its fingerprint")
        _SPACES[key] = space
    return _SPACES[key]


def forget_space(conn: Any, version: int) -> None:
    _SPACES.pop((conn.info.dsn, version), None)
