"""SQL kept as files under the top-level ``sql/`` folder, shipped in the wheel as ``metaspace.sql``."""

from __future__ import annotations

from importlib import resources


def read_sql(name: str) -> str:
    return (resources.files("metaspace.sql") / name).read_text(encoding="utf-8")


def statements(name: str) -> list[str]:
    """The statements of a plain DDL file (no function bodies), one per ``;`` at a line's end."""
    text = read_sql(name)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";\n") if part.strip().rstrip(";").strip()]
