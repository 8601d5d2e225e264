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

import pytest

from tests.conftest import ARTIFACTS, in_ci
from tests.notebooks.conftest import scan_for
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
