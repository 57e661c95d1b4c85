"""The layers' rules, checked on the source: the store is the only door to PostgreSQL, and the encoders
never open it."""

from __future__ import annotations

import ast
from pathlib import Path

import metaspace

PACKAGE = Path(metaspace.__file__).parent


def _imports(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, relative imports resolved against its package (``metaspace.store`` for a
    file in metaspace/store/; given, or read from where the file lies under the package)."""
    if package is None:
        package = ".".join(("metaspace", *path.relative_to(PACKAGE).parent.parts))
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _modules(under: Path = PACKAGE) -> list[Path]:
    return [p for p in under.rglob("*.py") if "migrations" not in p.relative_to(PACKAGE).parts[:1]]


def _importers_of(prefix: str, modules: list[Path]) -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in modules
                  if any(name == prefix or name.startswith(prefix + ".") for name in _imports(p)))


def test_only_the_store_imports_psycopg() -> None:
    outside = [p for p in _modules() if p.relative_to(PACKAGE).parts[0] != "store"]
    assert _importers_of("psycopg", outside) == []
    assert _importers_of("psycopg", _modules(PACKAGE / "store")), "the rule's own check found no importer at all"


def test_the_encoders_never_import_the_store() -> None:
    assert _importers_of("metaspace.store", _modules(PACKAGE / "encoders")) == []
    assert _importers_of("psycopg", _modules(PACKAGE / "encoders")) == []


def test_the_store_imports_nothing_above_it() -> None:
    above = ("metaspace.pipeline", "metaspace.queries", "metaspace.landscape", "metaspace.cli", "metaspace.encoders",
             "metaspace.fitted", "metaspace.demo", "metaspace.sources")
    store = _modules(PACKAGE / "store")
    assert [(layer, _importers_of(layer, store)) for layer in above if _importers_of(layer, store)] == []


def test_the_rule_check_sees_an_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from psycopg import sql\nimport numpy\n")
    assert "psycopg" in _imports(bad, "metaspace.encoders")


def test_the_rule_check_sees_a_relative_import_across_layers(tmp_path: Path) -> None:
    """An encoder that reached the store by ``from ..store import runs`` is caught like an absolute import."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..store import runs\nfrom . import features\nfrom .. import names\n")
    found = _imports(bad, "metaspace.encoders")
    assert {"metaspace.store", "metaspace.store.runs", "metaspace.encoders.features", "metaspace.names"} <= found
