#!/usr/bin/env bash
# Browser stage: the HTML map opened in headless Chromium with the network off (tests/test_landscape_browser.py):
# the page draws from the file alone (plotly.js inside it), plotly's data holds one point per run of the database,
# and hovering a point shows its run id and the colour key the map was drawn by. Debian's chromium and
# chromium-driver (installed when missing, where apt-get exists and we are root; software WebGL, swiftshader, for
# plotly's scattergl) driven by selenium in .venv (installed when missing). Skips (exit 0), saying why, when
# Chromium cannot be had. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
skip() { echo "SKIP browser: $*"; exit 0; }
[ -x "$PY" ] || skip "no .venv here (run .ci/run first)"
have() { command -v "$1" >/dev/null 2>&1; }
if ! { have chromium && have chromedriver; }; then
  have apt-get && [ "$(id -u)" = 0 ] || skip "no chromium or chromedriver, and no apt-get as root to install them"
  LOG=$(mktemp /tmp/metaspace-browser-apt.XXXXXX)
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } >"$LOG" 2>&1 \
    || { tail -5 "$LOG"; rm -f "$LOG"; skip "apt-get install chromium chromium-driver failed"; }
  rm -f "$LOG"
fi
have chromium || skip "no chromium on PATH after installing it"
have chromedriver || skip "no chromedriver on PATH after installing chromium-driver"
"$PY" -c 'import selenium' 2>/dev/null || .venv/bin/pip install -q 'selenium>=4.51' >/dev/null 2>&1 \
  || skip "selenium cannot be installed into .venv"
echo "browser: $(chromium --version 2>/dev/null), $("$PY" -c 'import selenium; print("selenium", selenium.__version__)')"
METASPACE_BROWSER_TESTS=1 .venv/bin/pytest tests/test_landscape_browser.py -q -p no:cacheprovider "$@"
