"""A real browser: JupyterLab (headless, loopback, token) + Debian's Chromium driven by Playwright.

Opens widget_builder.ipynb, runs all cells, and checks that the task builder
and the live dashboard render as widgets (no "Loading widget...", no error).
Skipped outside CI when Chromium, Playwright or JupyterLab is missing; in CI
(`CI=true`) a missing piece fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ARTIFACTS, in_ci
from tests.notebooks.conftest import scan_for
from trempy_nb.capture.slot import drop_task_objects
from trempy_nb.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing() -> list[str]:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append("chromium (apt-get install -y chromium)")
    for module in ("playwright", "jupyterlab"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} (pip install {module})")
    return missing


@pytest.fixture
def jupyterlab(hr: dict, tmp_path: Path) -> dict:
    missing = _missing()
    if missing:
        if in_ci():
            pytest.fail("browser test needs " + ", ".join(missing))
        pytest.skip("browser test needs " + ", ".join(missing))
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "widget_builder.ipynb", root / "widget_builder.ipynb")
    # render every cell, also those scrolled out of view (JupyterLab 4 windows long notebooks),
    # so the assertions and screenshots below see the whole notebook; no news pop-up
    settings = tmp_path / "lab-settings"
    for plugin, values in (
        ("notebook-extension/tracker", '{"windowingMode": "none"}'),
        ("apputils-extension/notification", '{"fetchNews": "false"}'),
    ):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(values)
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    env = {
        **os.environ,
        "TREMPY_HOME": str(hr["home"]),
        "TREMPY_NB_SOURCE": hr["source"],
        "TREMPY_NB_TARGET": hr["target"],
        "PYTHONPATH": str(REPO),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=",
        "--ServerApp.terminals_enabled=False",
    ]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2
                ):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "root": root, "log": log, **hr}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_widget_builder_renders_in_jupyterlab(jupyterlab: dict) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "widget_builder_jupyterlab.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(
                f"{jupyterlab['url']}/lab/tree/widget_builder.ipynb?token={jupyterlab['token']}"
            )
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => window.jupyterapp && document.querySelector('.jp-Notebook')"
                " && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=60_000,
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # done when every code cell has an execution count and none is pending ([*])
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""",
                timeout=180_000,
            )
            page.wait_for_selector(".trempy-builder", state="visible", timeout=30_000)
            page.wait_for_selector(
                ".jp-OutputArea .trempy-dashboard", state="visible", timeout=30_000
            )
            page.wait_for_timeout(1500)  # let the last widget updates arrive
            page.screenshot(path=str(shot), full_page=True)
            body = page.inner_text(".jp-Notebook")
            assert "Loading widget" not in body
            assert "Error displaying widget" not in body and "model not found" not in body
            assert not page.query_selector_all(
                "[data-mime-type='application/vnd.jupyter.error']"
            ), body[-3000:]
            assert "Traceback" not in body and "trempy:" not in body
            assert (
                page.query_selector(".trempy-builder .widget-tab, .trempy-builder .lm-TabBar")
                is not None
            )
            dash_text = page.inner_text(".jp-OutputArea .trempy-dashboard")
            assert "task hr_widgets" in dash_text and "throughput" in dash_text
            # polish: the Stop button says the task finished, stats are a plain table
            # (no dtype row, no quoted strings), the plot has labelled axes, the history
            # pane has a time slider
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-OutputArea .trempy-dashboard button')]"
                ".some(b => b.textContent.includes('finished') && b.disabled)",
                timeout=30_000,
            )
            assert "i64" not in dash_text and '"employees.employee"' not in dash_text
            assert page.query_selector(".jp-OutputArea .trempy-dashboard table.trempy-table")
            plot = page.text_content(".jp-OutputArea .trempy-dashboard svg.trempy-plot") or ""
            assert "rows/s" in plot and "lag (s)" in plot and "now" in plot
            assert page.query_selector(".trempy-dashboard .trempy-history .widget-slider")
            dash = page.query_selector(".jp-OutputArea .trempy-dashboard")
            dash.scroll_into_view_if_needed()
            dash.screenshot(path=str(ARTIFACTS / "dashboard_jupyterlab.png"))
            # the connections form: rendered, masked, the test result shown
            form = page.wait_for_selector(".trempy-connections", state="visible", timeout=30_000)
            form.scroll_into_view_if_needed()
            form_text = form.inner_text()
            assert "trempy connections" in form_text and "connected in" in form_text
            assert form.query_selector("input[type='password']") is not None
            form.screenshot(path=str(ARTIFACTS / "connections_form_jupyterlab.png"))
            assert "./hr_widgets.json" in page.inner_text(".jp-Notebook")
            page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_timeout(1500)
        finally:
            browser.close()
    assert shot.exists() and shot.stat().st_size > 10_000
    saved = jupyterlab["root"] / "widget_builder.ipynb"
    assert scan_for(jupyterlab["password"], saved, jupyterlab["log"], jupyterlab["home"]) == []


OPS_CELLS = [
    "%load_ext trempy_nb",
    "%%trempy task hr_ops\n"
    "task: {task_name: hr_ops, source: hr, target: dw, replication_type: full_load_and_cdc,\n"
    "       interval_seconds: 0.2, cdc_settings: {mode: upsert}}\n"
    "tables: [{schema_name: employees, table_name: employee}]",
    "dash = %trempy run hr_ops\ndash",
    "import os, time, psycopg\n"
    "deadline = time.monotonic() + 60\n"
    "while dash.runner.status != 'streaming' and time.monotonic() < deadline:\n"
    "    time.sleep(0.2)\n"
    "with psycopg.connect(os.environ['TREMPY_NB_SOURCE'], autocommit=True) as conn:\n"
    "    conn.execute('UPDATE employees.employee SET salary = salary + 1 WHERE id <= 30')\n"
    "print(dash.runner.stop_when_caught_up(60))",
    "fleet = %trempy dashboard\nfleet",
    "panel = fleet.open('hr_ops')\npanel.logs.w['grep'].value = 'full load'",
    "%trempy slots hr --sample 0",
]


def test_ops_panes_render_in_jupyterlab(jupyterlab: dict) -> None:
    """The run dashboard's log and slots panes, the fleet view and an opened task's panel (#16)."""
    import nbformat
    from playwright.sync_api import sync_playwright

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in OPS_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(jupyterlab["root"] / "ops_panes.ipynb"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{jupyterlab['url']}/lab/tree/ops_panes.ipynb?token={jupyterlab['token']}")
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=60_000,
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""",
                timeout=180_000,
            )
            # the run's dashboard: its log pane tails the run's records
            page.wait_for_selector(".trempy-dashboard .trempy-log-pane", state="visible", timeout=30_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.trempy-dashboard .trempy-log-pane')]"
                ".some(e => e.innerText.includes('run started'))",
                timeout=30_000,
            )
            # the fleet view: one row per task, an open button; the opened task's panel below
            fleet = page.wait_for_selector(".trempy-fleet-view", state="visible", timeout=30_000)
            assert "hr_ops" in fleet.inner_text()
            assert page.query_selector(".trempy-fleet-view .trempy-fleet-open")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.trempy-task-panel .trempy-log-pane')]"
                ".some(e => e.innerText.includes('full load of employees.employee'))",
                timeout=30_000,
            )
            panel = page.query_selector(".trempy-task-panel")
            assert panel is not None and "task hr_ops" in panel.inner_text()
            assert panel.query_selector("svg.trempy-plot"), "throughput/lag plot from the store"
            panel.query_selector(".lm-TabBar-tab:has-text('slots')").click()
            page.wait_for_selector(".trempy-task-panel .trempy-slots-pane .trempy-slots", state="visible",
                                   timeout=15_000)
            assert "trempy_hr_ops" in page.inner_text(".trempy-task-panel .trempy-slots-pane")
            page.wait_for_timeout(1000)
            body = page.inner_text(".jp-Notebook")
            assert "Loading widget" not in body and "Error displaying widget" not in body
            assert not page.query_selector_all("[data-mime-type='application/vnd.jupyter.error']"), body[-3000:]
            assert "Traceback" not in body and "trempy:" not in body
            page.screenshot(path=str(ARTIFACTS / "ops_panes_jupyterlab.png"), full_page=True)
            fleet.scroll_into_view_if_needed()
            fleet.screenshot(path=str(ARTIFACTS / "fleet_view_jupyterlab.png"))
            page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_timeout(1000)
        finally:
            browser.close()
    assert (ARTIFACTS / "ops_panes_jupyterlab.png").stat().st_size > 10_000
    with psycopg.connect(jupyterlab["source"], autocommit=True) as conn:
        drop_task_objects(conn, "hr_ops")
    saved = jupyterlab["root"] / "ops_panes.ipynb"
    assert scan_for(jupyterlab["password"], saved, jupyterlab["log"], jupyterlab["home"]) == []
