#!/usr/bin/env bash
# Docs stage: the documentation site (mkdocs.yml, docs/) built with mkdocs-material in strict mode, so a broken
# link, a missing anchor or page, or a page left out of the nav fails. Installs the docs extra into .venv when
# mkdocs is missing; skips (exit 0), saying why, only when mkdocs-material cannot be installed. The site is
# built into a temporary folder and removed. Extra arguments go to mkdocs build.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
skip() { echo "SKIP docs: $*"; exit 0; }
[ -x "$PY" ] || skip "no .venv here (run .ci/run first)"
have_material() { "$PY" -c 'import material, mkdocs' 2>/dev/null && [ -x .venv/bin/mkdocs ]; }
if ! have_material; then
  LOG=$(mktemp /tmp/metaspace-docs-pip.XXXXXX)
  # the docs extra's requirements, read from pyproject.toml (installing '.[docs]' would reinstall metaspace itself)
  DEPS=$("$PY" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"], sep="\n")' \
    2>/dev/null || echo 'mkdocs-material>=9.5')
  mapfile -t REQ <<<"$DEPS"
  .venv/bin/pip install -q "${REQ[@]}" >"$LOG" 2>&1 \
    || { tail -5 "$LOG"; rm -f "$LOG"; skip "mkdocs-material cannot be installed into .venv"; }
  rm -f "$LOG"
  have_material || skip "mkdocs-material installed but mkdocs or its theme cannot be imported"
fi
echo "docs: $(.venv/bin/mkdocs --version | cut -d' ' -f1-3), mkdocs-material $("$PY" -c 'from importlib.metadata import version; print(version("mkdocs-material"))')"
SITE=$(mktemp -d /tmp/metaspace-docs.XXXXXX)
trap 'rm -rf "$SITE"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$SITE/site" "$@"
