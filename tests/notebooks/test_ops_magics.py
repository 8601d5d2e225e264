"""`%trempy logs` with the CLI's filters, `%trempy slots`, `%trempy dashboard` (fleet view and a
task's panel) against a real store; and the fleet view and log pane with 50 tasks and 100k log
records: every refresh reads a bounded page (the time it took is printed, not asserted)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from tests.notebooks.conftest import hr_settings
from trempy_nb.connections import save_connection
from trempy_nb.metadata import MetadataStore
from trempy_nb.notebook.fleetview import FleetView, TaskPanel
from trempy_nb.notebook.magics import TrempyMagicError
from trempy_nb.notebook.panes import LogPane


def run(shell: Any, line: str) -> Any:
    result = shell.run_line_magic("trempy", line[len("%trempy "):])
    return result


def test_logs_magic_filters(shell: Any, trempy_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = MetadataStore()
    store.save_task("alpha", {"task": {"task_name": "alpha"}})
    for i in range(12):
        store.log("alpha", None, ["INFO", "WARNING", "ERROR"][i % 3], f"m{i} {'slot' if i % 2 else 'batch'}",
                  table="public.t" if i % 4 == 0 else None, fields={"i": i})
    boundary = datetime.now(timezone.utc)
    time.sleep(0.02)
    store.log("alpha", None, "ERROR", "m12 slot late", table="public.t", fields={"i": 12})

    def ids(frame: pl.DataFrame) -> list[int]:
        return [json.loads(f)["i"] for f in frame["fields"]]

    assert ids(run(shell, "%trempy logs alpha")) == list(range(13))
    assert ids(run(shell, "%trempy logs alpha --level error")) == [2, 5, 8, 11, 12]
    assert ids(run(shell, "%trempy logs alpha --grep SLOT")) == [1, 3, 5, 7, 9, 11, 12]
    assert ids(run(shell, "%trempy logs alpha --table public.t")) == [0, 4, 8, 12]
    assert ids(run(shell, f"%trempy logs alpha --since {boundary.isoformat()}")) == [12]
    assert ids(run(shell, "%trempy logs --level warning --grep slot --table public.t --since 1h")) == [12]
    assert ids(run(shell, "%trempy logs alpha -n 2")) == [11, 12]
    records = run(shell, "%trempy logs alpha --json -n 1")
    assert records[0]["message"] == "m12 slot late" and records[0]["fields"] == {"i": 12}
    with pytest.raises(TrempyMagicError, match="30s, 15m, 1h"):
        run(shell, "%trempy logs alpha --since someday")
    # --follow: the matching page, then what is written while it runs (here: until --timeout)
    capsys.readouterr()

    def later() -> None:
        time.sleep(0.5)
        MetadataStore().log("alpha", None, "ERROR", "m13 followed", fields={"i": 13})

    threading.Thread(target=later).start()
    run(shell, "%trempy logs alpha --level error -n 1 --follow --timeout 3")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "ERROR" in out[0] and "m12 slot late" in out[0] and "m13 followed" in out[1]


def test_slots_and_dashboard_magics(shell: Any, hr: dict[str, Any]) -> None:
    store = MetadataStore()
    store.save_task("t_hr", hr_settings())
    with psycopg.connect(hr["source"], autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('trempy_nb_orphan_x', 'pgoutput')")
    try:
        frame = run(shell, "%trempy slots hr --sample 0")
        row = frame.filter(pl.col("slot_name") == "trempy_nb_orphan_x").to_dicts()[0]
        assert row["orphan"] is True and row["task"] == "nb_orphan_x" and row["retained_bytes"] >= 0
        fleet = run(shell, "%trempy dashboard")
        assert isinstance(fleet, FleetView) and [r["task"] for r in fleet.rows] == ["t_hr"]
        assert "t_hr" in fleet.html() and "t_hr" in repr(fleet)
        panel = fleet.open("t_hr")
        assert isinstance(panel, TaskPanel) and "trempy_nb_orphan_x" in panel.slots.text()
        assert "trempy-slots" in panel.html() and "trempy-logs" in panel.html()
        one = run(shell, "%trempy dashboard t_hr")
        assert isinstance(one, TaskPanel)
    finally:
        with psycopg.connect(hr["source"], autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('trempy_nb_orphan_x')")


def test_fleet_of_50_tasks_and_100k_log_records(trempy_home: Path) -> None:
    store = MetadataStore()
    for n in range(50):
        store.save_task(f"task{n:02d}", {"task": {"task_name": f"task{n:02d}"}})
    assert store.path is not None
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    rows = []
    for i in range(100_000):
        task = f"task{(i // 10 if i % 10 == 0 else i) % 50:02d}"
        ts = (start + timedelta(milliseconds=18 * i)).isoformat(timespec="microseconds")
        if i % 10 == 0:  # a batch summary every 10 records: the sparklines' points
            rows.append((ts, task, "INFO", f"batch applied: {i % 97} change(s)", "public.t", None,
                         json.dumps({"event": "batch", "changes": i % 97, "lag_s": (i % 13) / 2, "ms": 3})))
        else:
            rows.append((ts, task, "WARNING" if i % 17 == 0 else "INFO", f"event {i}", None, None, None))
    with sqlite3.connect(store.path) as db:  # bulk fixture data straight into the store's table
        db.executemany('INSERT INTO logs (time, task, level, message, "table", worker, fields)'
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    t0 = time.perf_counter()
    view = FleetView(use_widgets=False)
    t_fleet = time.perf_counter() - t0
    assert len(view.rows) == 50 and len(view.sparks) == 50 and view.error == ""
    assert all(len(points) >= 2 for points in view.sparks.values())
    t0 = time.perf_counter()
    pane = LogPane("task07")
    pane.search()
    t_search = time.perf_counter() - t0
    assert len(pane.records) == 200 and {r["task"] for r in pane.records} == {"task07"}
    pane.grep, pane.level = "event 99", "WARNING"
    t0 = time.perf_counter()
    pane.search()
    t_filtered = time.perf_counter() - t0
    assert all("event 99" in r["message"] and r["level"] == "WARNING" for r in pane.records)
    MetadataStore().log("task07", None, "WARNING", "event 99999 new")
    t0 = time.perf_counter()
    assert pane.tail() == 1
    t_tail = time.perf_counter() - t0
    t0 = time.perf_counter()
    panel = TaskPanel("task07", use_widgets=False)
    t_panel = time.perf_counter() - t0
    assert "svg" in panel.plot and len(panel.logs.records) == 200
    print(f"\n50 tasks, 100k log records: fleet view {t_fleet * 1000:.0f} ms, log page {t_search * 1000:.0f} ms,"
          f" filtered page {t_filtered * 1000:.0f} ms, live tail {t_tail * 1000:.0f} ms, task panel {t_panel * 1000:.0f} ms")
