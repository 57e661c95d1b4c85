"""The schema from Python: :func:`migrate` does what ``metaspace migrate`` does, with the same options."""

from __future__ import annotations

from typing import Any

from metaspace.store import migrate as migrations
from metaspace.store.connection import resolve_url


def migrate(*, to: str = "head", downgrade: str | None = None, status: bool = False, sql: bool = False,
            concurrently: bool = False, allow_data_loss: bool = False, database_url: str | None = None) -> Any:
    """Upgrade the schema to ``to`` (the default: head); or downgrade to a revision; or, with ``status``,
    return where it stands (a ``Status``); or, with ``sql``, return the upgrade's SQL for a DBA without
    touching any database. An upgrade or downgrade returns the migrations' messages."""
    if sql:
        return migrations.sql(to)
    url = resolve_url(database_url)
    if status:
        return migrations.status(url)
    if downgrade:
        return migrations.downgrade(url, downgrade, allow_data_loss=allow_data_loss)
    return migrations.upgrade(url, to, concurrently=concurrently)
