"""The HTML map works offline and its hover names what it was coloured by.

The first tests read the written page. The browser tests open it in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, software WebGL for plotly's ``scattergl``) with the network off; they run where
``METASPACE_BROWSER_TESTS`` is set, as ``.ci/browser.sh`` does, and skip, saying why, where Chromium, its driver
or selenium is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from metaspace import landscape
from metaspace.store.clusters import Points

COLOURS = ["outcome.max_drawdown", "strategy", "config.strategy", "cluster"]
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1200,900",
]
# every error the page raises, a script or resource that failed to load among them (capture phase)
RECORD_ERRORS = ("window.__errors = []; addEventListener('error', e => __errors.push(String(e.message || "
                 "(e.target && (e.target.src || e.target.href)))), true);")
GRAPH = "document.querySelector('.js-plotly-plot')"


def _browser_missing() -> str | None:
    if not os.environ.get("METASPACE_BROWSER_TESTS"):
        return "set METASPACE_BROWSER_TESTS=1 to open the map in headless Chromium (.ci/browser.sh does)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    if importlib.util.find_spec("plotly") is None:
        return "plotly is not installed (pip install 'metaspace[html]')"
    for program, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(program) is None:
            return f"no {program} on PATH (apt-get install {package})"
    return None


browser_test = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


# -- the written page --------------------------------------------------------------------------------


def _made_up_points(n: int = 60) -> tuple[Points, np.ndarray, list[int | None]]:
    rng = np.random.default_rng(0)
    drawdown = list(rng.uniform(0.01, 0.5, n))
    drawdown[3] = None
    points = Points(run_ids=[f"run-{i:03d}" for i in range(n)], vectors=np.zeros((n, 2)),
                    config_ids=[f"cfg-{i % 7}" for i in range(n)], strategies=[("trend", "carry")[i % 2] for i in range(n)],
                    objective=rng.normal(size=n), version=1, colors=drawdown)
    return points, rng.normal(size=(n, 2)), [i % 3 if i % 10 else None for i in range(n)]


def _figure(page: str) -> list[dict]:
    """The traces plotly.newPlot is given in a written page."""
    start = page.index("Plotly.newPlot(")
    data = page[page.index("[", start):]
    return json.JSONDecoder().raw_decode(data)[0]


@pytest.mark.parametrize("color", ["outcome.max_drawdown", "strategy", "cluster"])
def test_html_map_carries_plotly_js_and_its_hover_names_the_colour_key(tmp_path: Path, color: str) -> None:
    pytest.importorskip("plotly")
    from metaspace.landscape import plots

    points, coords, labels = _made_up_points()
    out = tmp_path / "map.html"
    plots.html(str(out), coords, ["PC1", "PC2"], "a map", points, color, labels)
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # no script from the network (cdn.plot.ly or any other)
    assert re.search(r"plotly\.js v\d", page)  # the library itself, inline
    traces = _figure(page)
    rows = [row for trace in traces for row in trace["customdata"]]
    assert sorted(row[0] for row in rows) == points.run_ids
    template = traces[0]["hovertemplate"]
    assert {trace["hovertemplate"] for trace in traces} == {template}
    names = [line.split(" %{")[0] for line in template.removesuffix("<extra></extra>").split("<br>")]
    assert names[:3] == ["run", "config", "strategy"] and color in names
    shown = {row[0]: row[names.index(color)] for row in rows}
    expected = {"outcome.max_drawdown": lambda i: "(none)" if points.colors[i] is None else f"{points.colors[i]:.4g}",
                "strategy": lambda i: points.strategies[i],
                "cluster": lambda i: "unlabelled" if labels[i] is None else str(labels[i])}[color]
    assert shown == {run_id: expected(i) for i, run_id in enumerate(points.run_ids)}


# -- in the browser, offline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    with tempfile.TemporaryDirectory(prefix="metaspace-chromium-") as profile:
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
                "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_ERRORS})
            yield driver
        finally:
            driver.quit()


def _open(driver, path: Path) -> list[str]:
    """Load a page and wait until plotly has drawn it or the page has failed; the page's errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # what earlier pages logged
    driver.get(path.as_uri())
    WebDriverWait(driver, 30, poll_frequency=0.05).until(lambda d: d.execute_script(
        f"var g = {GRAPH}; return document.readyState === 'complete' && "
        "(window.__errors.length > 0 || !!(g && g._fullLayout && g._fullData && g.calcdata));"))
    errors = driver.execute_script("return window.__errors;")
    return errors + [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _hover_lines(driver, trace: int, point: int) -> list[str]:
    """Move the mouse onto a point and read the lines of the hover label plotly shows."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script(f"Plotly.Fx.unhover({GRAPH});")
    x, y = driver.execute_script(
        f"var g = {GRAPH}, t = g._fullData[arguments[0]], L = g._fullLayout, box = g.getBoundingClientRect();"
        "return [box.left + L.xaxis._offset + L.xaxis.d2p(t.x[arguments[1]]),"
        "        box.top + L.yaxis._offset + L.yaxis.d2p(t.y[arguments[1]])];", trace, point)
    actions = ActionBuilder(driver, duration=0)
    actions.pointer_action.move_to_location(round(x), round(y))
    actions.perform()
    return WebDriverWait(driver, 10, poll_frequency=0.05).until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.hoverlayer .hovertext tspan.line'), l => l.textContent);"))


def _stored(sample_db: str, color: str, clustering_id: int | None) -> dict[str, str]:
    """Each run's value of the colour key, as the hover should show it, read from the database."""
    with psycopg.connect(sample_db) as conn:
        if color == "cluster":
            rows = conn.execute("SELECT run_id, label::text FROM historical_db.run_clusters WHERE clustering_id = %s",
                                (clustering_id,)).fetchall()
        elif color == "outcome.max_drawdown":
            rows = [(run_id, f"{value:.4g}") for run_id, value in conn.execute(
                "SELECT run_id, (outcome->>'max_drawdown')::float8 FROM historical_db.runs").fetchall()]
        else:
            column = {"strategy": "strategy_id", "config.strategy": "config->>'strategy'"}[color]
            rows = conn.execute(f"SELECT run_id, {column} FROM historical_db.runs").fetchall()  # noqa: S608
    return dict(rows)


@browser_test
def test_offline_browser_fails_a_page_that_needs_the_cdn(browser, tmp_path: Path) -> None:
    import plotly.graph_objects as go

    out = tmp_path / "cdn.html"
    go.Figure([go.Scattergl(x=[0, 1], y=[1, 0])]).write_html(out, include_plotlyjs="cdn")
    errors = _open(browser, out)
    assert errors and browser.execute_script(f"return typeof Plotly === 'undefined' && !{GRAPH};")


@browser_test
@pytest.mark.parametrize("color", COLOURS)
def test_html_map_works_offline_with_a_point_per_run_and_hovers_its_run_and_colour_key(
        browser, sample_db: str, tmp_path: Path, color: str) -> None:
    clustering_id = landscape.cluster(space="joint", k=5, database_url=sample_db).clustering_id \
        if color == "cluster" else None
    out = tmp_path / "map.html"
    landscape.map_space(out=str(out), color=color, database_url=sample_db)
    assert _open(browser, out) == []
    assert browser.execute_script(f"return !!{GRAPH}._fullLayout._glcanvas;")  # drawn by WebGL (scattergl)
    runs = browser.execute_script(f"return {GRAPH}.data.map(t => t.customdata.map(row => row[0]));")
    drawn = browser.execute_script(f"return {GRAPH}._fullData.map(t => t._length);")
    with psycopg.connect(sample_db) as conn:
        stored = sorted(run_id for (run_id,) in conn.execute("SELECT run_id FROM historical_db.runs").fetchall())
    assert sorted(run_id for trace in runs for run_id in trace) == stored
    assert drawn == [len(trace) for trace in runs]
    value = _stored(sample_db, color, clustering_id)
    # the points at either end of the first axis: no other point is near enough to take the hover from them
    xs = browser.execute_script(f"return {GRAPH}._fullData.map(t => Array.from(t.x));")
    points = [(t, i, x) for t, trace in enumerate(xs) for i, x in enumerate(trace)]
    for trace, point, _ in (min(points, key=lambda p: p[2]), max(points, key=lambda p: p[2])):
        run_id = runs[trace][point]
        lines = _hover_lines(browser, trace, point)
        assert f"run {run_id}" in lines and f"{color} {value[run_id]}" in lines, lines
