"""`trempy-nb logs` against a real store: each filter (task, level, grep, table, since, limit)
returns exactly the records a plain Python filter of what the test wrote selects; --json keys;
--follow prints records written after it started; a bad --since exits 2 listing the forms.
Then a real CDC run: its structured events (run start/end, full-load table end with rows,
one summary per applied batch with rows per operation) are found by the same search."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from tests.cdc_helpers import drop_task, execute, run_cli, settings, write_settings
from trempy_nb.connections import save_connection
from trempy_nb.metadata import MetadataStore

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def cli_json(*args: str) -> list[dict[str, Any]]:
    res = run_cli(["logs", *args, "--json"])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def written(trempy_home: Path) -> dict[str, Any]:
    """Two tasks' records over levels, tables and messages; `boundary` splits them in time."""
    store = MetadataStore()
    store.save_task("alpha", {"task": {"task_name": "alpha"}})
    store.save_task("beta", {"task": {"task_name": "beta"}})
    mine: list[dict[str, Any]] = []

    def write(i: int) -> None:
        task = "alpha" if i % 3 else "beta"
        level = LEVELS[i % 4]
        table = [None, "public.orders", "sales.orders", "public.items"][i % 4 if i % 5 else 0]
        message = f"record {i} " + ("Slot WARNING about WAL" if i % 7 == 0 else "batch applied")
        store.log(task, None, level, message, table=table, fields={"i": i})
        mine.append({"task": task, "level": level, "table": table, "message": message, "i": i})

    for i in range(40):
        write(i)
    time.sleep(0.05)
    boundary = datetime.now(timezone.utc)
    time.sleep(0.05)
    for i in range(40, 60):
        write(i)
    return {"store": store, "records": mine, "boundary": boundary}


def expect(records: list[dict[str, Any]], *, task: str | None = None, level: str | None = None,
           grep: str | None = None, table: str | None = None, since_i: int | None = None) -> list[int]:
    out = []
    for r in records:
        if task and r["task"] != task:
            continue
        if level and LEVELS.index(r["level"]) < LEVELS.index(level):
            continue
        if grep and grep.lower() not in r["message"].lower():
            continue
        if table and r["table"] != table:
            continue
        if since_i is not None and r["i"] < since_i:
            continue
        out.append(r["i"])
    return out


def got(rows: list[dict[str, Any]]) -> list[int]:
    return [r["fields"]["i"] for r in rows]


def test_filters_return_exactly_the_matching_records(written: dict[str, Any]) -> None:
    recs, boundary = written["records"], written["boundary"].isoformat()
    assert got(cli_json("--limit", "1000")) == expect(recs)
    assert got(cli_json("alpha", "--limit", "1000")) == expect(recs, task="alpha")
    assert got(cli_json("--level", "warning", "--limit", "1000")) == expect(recs, level="WARNING")
    assert got(cli_json("beta", "--level", "error", "--limit", "1000")) == expect(recs, task="beta", level="ERROR")
    assert got(cli_json("--grep", "slot warning", "--limit", "1000")) == expect(recs, grep="slot warning")
    assert got(cli_json("--table", "public.orders", "--limit", "1000")) == expect(recs, table="public.orders")
    assert got(cli_json("--since", boundary, "--limit", "1000")) == expect(recs, since_i=40)
    assert got(cli_json("--since", "2d", "--limit", "1000")) == expect(recs)
    combined = cli_json("alpha", "--level", "info", "--grep", "BATCH", "--table", "public.items",
                        "--since", boundary)
    assert got(combined) == expect(recs, task="alpha", level="INFO", grep="batch", table="public.items", since_i=40)
    assert combined  # the combination selects something
    # --limit: the newest N, oldest first
    assert got(cli_json("--limit", "5")) == expect(recs)[-5:]
    row = cli_json("--limit", "1")[0]
    assert {"ts", "level", "task", "table", "message"} <= set(row) and row["ts"].endswith("+00:00")
    text = run_cli(["logs", "alpha", "--grep", "record 59"])
    assert text.returncode == 0 and text.stdout.count("\n") == 1 and "record 59" in text.stdout


def test_bad_inputs(written: dict[str, Any]) -> None:
    res = run_cli(["logs", "--since", "last tuesday"])
    assert res.returncode == 2 and "30s, 15m, 1h, 2d" in res.stderr and "ISO" in res.stderr
    res = run_cli(["logs", "--level", "loud"])
    assert res.returncode == 2 and "warning" in res.stderr
    res = run_cli(["logs", "no_such_task"])
    assert res.returncode == 2 and "alpha" in res.stderr


def test_follow_prints_new_records(written: dict[str, Any]) -> None:
    store: MetadataStore = written["store"]
    proc = subprocess.Popen([sys.executable, "-m", "trempy_nb.cli", "logs", "alpha", "--follow", "--json",
                             "--limit", "3", "--grep", "tail", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: Queue[str] = Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    try:
        store.log("alpha", None, "INFO", "written first")  # no match: grep
        time.sleep(1.0)  # the command is polling by now (it prints nothing until a match)
        for n in range(3):
            store.log("alpha", None, "INFO", f"tail {n}", table="public.orders")
            store.log("beta", None, "INFO", f"tail {n} of another task")
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            try:
                seen.append(json.loads(lines.get(timeout=1)))
            except Empty:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert [r["message"] for r in seen] == ["tail 0", "tail 1", "tail 2"]
        assert all(r["task"] == "alpha" and r["table"] == "public.orders" for r in seen)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def cdc_run(source_uri: str, target_uri: str, trempy_home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = "l" + uuid.uuid4().hex[:10]
    save_connection("src", source_uri)
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    execute(source_uri, "INSERT INTO t SELECT i, i FROM generate_series(1, 25) i")
    path = write_settings(tmp_path / "task.json", settings(name, "src", target_uri, rtype="full_load_and_cdc"))
    first = run_cli(["run", str(path), "--until-caught-up", "-q"])
    assert first.returncode == 0, first.stderr
    execute(source_uri, "INSERT INTO t SELECT i, i FROM generate_series(26, 30) i")
    execute(source_uri, "UPDATE t SET v = 0 WHERE id <= 4")
    execute(source_uri, "DELETE FROM t WHERE id = 25")
    second = run_cli(["run", str(path), "--until-caught-up", "--start-mode", "continue", "-q"])
    assert second.returncode == 0, second.stderr
    yield {"name": name}
    drop_task(source_uri, name)


def test_structured_events_of_a_real_run(cdc_run: dict[str, Any]) -> None:
    name = cdc_run["name"]
    events = cli_json(name, "--limit", "1000")
    kinds = [e["fields"]["event"] for e in events if isinstance(e["fields"], dict) and "event" in e["fields"]]
    assert kinds.count("run_start") == 2 and kinds.count("run_end") == 2
    loaded = [e for e in events if (e["fields"] or {}).get("event") == "full_load_table_end"]
    assert len(loaded) == 1 and loaded[0]["table"] == "public.t" and loaded[0]["fields"]["rows_written"] == 25
    batches = cli_json(name, "--grep", "batch applied", "--table", "public.t", "--limit", "1000")
    assert batches and all(b["fields"]["event"] == "batch" for b in batches)
    totals: dict[str, int] = {}
    for b in batches:
        for op, n in b["fields"]["rows"]["public.t"].items():
            totals[op] = totals.get(op, 0) + n
        assert b["fields"]["first_lsn"] and b["fields"]["end_lsn"] and b["fields"]["ms"] >= 0
    assert totals == {"insert": 5, "update": 4, "delete": 1}
    # the summaries are per batch, never per row
    assert len(batches) <= 3
    assert all(e["level"] != "WARNING" for e in cli_json(name, "--level", "warning"))
