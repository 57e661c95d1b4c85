"""What the importers share: their summary, and how they report runs they skip."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from metaspace.pipeline import ImportSummary
from metaspace.store.connection import redact

Progress = Callable[[int], None]


@dataclass
class SourceImportSummary(ImportSummary):
    """import-runs' counts (read, inserted, updated, unchanged, rejected), plus the runs of the source that
    were not read as records (still running, pruned, failed), each with the reason."""

    skipped: int = 0
    skips: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, summary: ImportSummary, skips: list[dict[str, Any]], notes: list[str]) -> SourceImportSummary:
        return cls(**asdict(summary), skipped=len(skips), skips=skips[:100], notes=notes)


def local_file(uri: str, scheme: str) -> str | None:
    """The path of a ``sqlite:///path`` URI (None for other URIs and for in-memory SQLite)."""
    prefix = f"{scheme}:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        return None
    return path


def shown(uri: str) -> str:
    """The URI safe to print: a password hidden; any other URI (a path, sqlite:////abs/path) as given."""
    return redact(uri) if "://" in uri and ("@" in uri or "password=" in uri.lower()) else uri


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
