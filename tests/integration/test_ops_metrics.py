"""Prometheus metrics scraped over HTTP (`trempy-nb metrics --port P`, a process of its own that
only reads the metadata store) while another process runs a CDC task: the counters grow by
exactly the changes the test made at the source, by operation; a port in use exits 1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cdc_helpers import drop_task, execute, rows, run_cli, settings, write_settings
from trempy_nb.connections import save_connection
from trempy_nb.metadata import MetadataStore

ALL_OFF = {f"stop_if_{op}_error": False for op in ("insert", "update", "delete", "upsert", "scd2")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trempy_nb.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def applied(m: dict[Any, float], task: str, op: str) -> float:
    return m.get(("trempy_changes_applied_total", (("op", op), ("table", "public.t"), ("task", task))), 0.0)


def wait_for(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture
def running(source_uri: str, target_uri: str, trempy_home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = "m" + uuid.uuid4().hex[:10]
    save_connection("src", source_uri)
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    execute(source_uri, "INSERT INTO t SELECT i, i FROM generate_series(1, 10) i")
    doc = settings(name, "src", target_uri, rtype="full_load_and_cdc", error_handling=ALL_OFF)
    path = write_settings(tmp_path / "task.json", doc)
    MetadataStore().save_task(name, doc)  # a saved task: the metrics find its source, so its slot
    port = free_port()
    runner = spawn("run", str(path), "-q")
    server = spawn("metrics", "--port", str(port), "--host", "127.0.0.1")
    try:
        yield {"name": name, "port": port, "source": source_uri, "target": target_uri, "server": server}
    finally:
        for proc in (runner, server):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        drop_task(source_uri, name)


def test_counters_grow_by_the_applied_changes(running: dict[str, Any]) -> None:
    name, port, src, tgt = running["name"], running["port"], running["source"], running["target"]
    wait_for(lambda: rows(tgt, "SELECT count(*) FROM public.t")[0][0] == 10
             if rows(tgt, "SELECT to_regclass('public.t') IS NOT NULL")[0][0] else False, "the full load")

    def loaded() -> Any:
        try:
            m = scrape(port)
        except OSError:
            return None
        return m if m.get(("trempy_rows_loaded_total", (("table", "public.t"), ("task", name)))) == 10 else None

    before = wait_for(loaded, "the metrics server and the full-load figure")
    execute(tgt, "ALTER TABLE public.t ADD CONSTRAINT v_small CHECK (v < 1000)")
    execute(src, "INSERT INTO t SELECT i, i FROM generate_series(11, 17) i")  # 7 inserts
    execute(src, "UPDATE t SET v = -v WHERE id IN (1, 2, 3)")  # 3 updates
    execute(src, "UPDATE t SET v = 5000 WHERE id = 6")  # rejected by the target: recorded, skipped
    execute(src, "DELETE FROM t WHERE id IN (4, 5)")  # 2 deletes
    wait_for(lambda: rows(tgt, "SELECT count(*), count(*) FILTER (WHERE v < 0) FROM public.t")[0] == (15, 3),
             "the changes on the target")
    expected = {"insert": 7, "update": 3, "delete": 2}
    errors = ("trempy_errors_total", (("task", name),))

    def grown() -> Any:
        m = scrape(port)
        ok = all(applied(m, name, op) - applied(before, name, op) == n for op, n in expected.items())
        return m if ok and m.get(errors) == 1 else None

    after = wait_for(grown, "the counters")
    for op, n in expected.items():
        assert applied(after, name, op) - applied(before, name, op) == n
    assert before.get(errors, 0) == 0 and after[errors] == 1
    assert ("trempy_takeovers_total", ()) in after
    slot = after[("trempy_slot_retained_bytes", (("slot", f"trempy_{name}"),))]
    assert slot >= 0 and slot == int(slot)
    assert after[("trempy_slot_warn_threshold_bytes", ())] == 1024**3
    # idle for a while: no record per idle checkpoint, one summary per batch of changes only
    time.sleep(2)
    summaries = MetadataStore().search_logs(name, grep="batch applied", limit=1000)
    assert 1 <= summaries.height <= 4  # four source transactions


def test_port_in_use_exits_1_naming_it(trempy_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = run_cli(["metrics", "--port", str(port), "--host", "127.0.0.1"], timeout=60)
    assert res.returncode == 1 and str(port) in res.stderr
