"""Per-table lifecycle on a running task, on real PostgreSQL under a concurrent writer.

- add-table then resync (SCD2: history appended; then --baseline) while another SCD2 table streams:
  the added table ends equal to the source (checked with the reconcile diff), and the other table's
  history has exactly one version per committed update of each key, chained with no gap and no
  overlap, one current version per key.
- upsert resync (truncate + reload in one transaction) of a table whose target drifted: equal after.
- pause/resume under writes (upsert and SCD2): while paused the target table does not move but the
  others do and the slot advances; after resume nothing is lost and order is kept (a counter column
  incremented in sequence ends equal to the source; SCD2 versions carry increasing counters).
- CLI bad inputs: unknown task (exit 2, known ones listed), a table not in the task (exit 2, its
  tables named), add-table of a missing table (exit 2); a request for a task running nowhere waits;
  diff --repair of a task leased by a live worker is refused with the owner named.
Sizes are small; every wait is bounded.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import connect, drop_task, execute, rows, run_cli, settings, with_start_mode
from trempy_nb.engine import lifecycle as lc
from trempy_nb.engine.runner import Runner
from trempy_nb.metadata import MetadataStore
from trempy_nb.task import Task

WAIT = 120.0


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "POLL_S", 0.2)


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "l" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def _table(src: str, name: str, n: int) -> None:
    execute(src, f"CREATE TABLE {name} (id int PRIMARY KEY, n int NOT NULL, v text)")
    execute(src, f"INSERT INTO {name} SELECT i, 0, 'v' || i FROM generate_series(1, {n}) i")


class Writer:
    """Updates (n = n + 1, one transaction each) on the given tables, and inserts and deletes on the
    `churn` ones, until stopped; counts the update transactions of each key of each table."""

    def __init__(self, src: str, tables: list[str], *, churn: tuple[str, ...] = (), pause_s: float = 0.005) -> None:
        self.src, self.tables, self.churn, self.pause_s = src, tables, churn, pause_s
        self.updates: dict[str, Counter[int]] = {t: Counter() for t in tables}
        self.ops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        rnd = random.Random(7)
        next_id = 100_000
        try:
            with connect(self.src) as c:
                while not self._stop.is_set():
                    t = rnd.choice(self.tables)
                    r = rnd.random()
                    if t in self.churn and r < 0.1:
                        next_id += 1
                        c.execute(f"INSERT INTO {t} VALUES (%s, 0, 'new')", (next_id,))
                    elif t in self.churn and r < 0.15:
                        c.execute(f"DELETE FROM {t} WHERE id = (SELECT min(id) FROM {t} WHERE id > %s)",
                                  (rnd.randint(1, 200),))
                    else:
                        row = c.execute(f"UPDATE {t} SET n = n + 1 WHERE id = (SELECT id FROM {t} ORDER BY"
                                        " random() LIMIT 1) RETURNING id").fetchone()
                        if row:
                            self.updates[t][int(row[0])] += 1
                    self.ops += 1
                    time.sleep(self.pause_s)
        except BaseException as exc:
            self.error = exc


def _wait_for(what: str, check: Any, timeout: float = WAIT, diag: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {diag()}" if diag else ""))
        time.sleep(0.2)


def _done(task: Task, out: dict[str, Any]) -> None:
    assert out["state"] == "done", out


def _history(tgt: str, table: str) -> dict[int, list[tuple[Any, Any, bool, int]]]:
    got: dict[int, list[tuple[Any, Any, bool, int]]] = {}
    for i, n, start, end, cur in rows(tgt, f"SELECT id, n, scd_start_date, scd_end_date, scd_current FROM {table}"
                                           " ORDER BY id, scd_start_date"):
        got.setdefault(i, []).append((start, end, cur, n))
    return got


def _check_chain(history: dict[int, list[tuple[Any, Any, bool, int]]], table: str) -> None:
    """Per key: versions chained end == next start, only the last may be current, counters increase."""
    for key, versions in history.items():
        for (_s1, e1, c1, n1), (s2, _e2, _c2, n2) in zip(versions, versions[1:], strict=False):
            assert not c1 and e1 == s2, f"{table} key {key}: gap or overlap between versions {versions}"
            assert n2 > n1, f"{table} key {key}: versions out of order {versions}"
        assert sum(1 for v in versions if v[2]) <= 1, f"{table} key {key}: two current versions"


def _equal(task: Task, table: str) -> None:
    diff = task.diff(table=table, wait=60)
    assert diff.height == 0, diff


def _stop(runner: Runner) -> None:
    runner.stop_when_caught_up(timeout=WAIT)
    assert not runner.running


def test_add_table_and_resync_under_writes_keep_the_other_scd2_history_exact(
        source_uri: str, target_uri: str, task_name: str, trempy_home: Path) -> None:
    src, tgt = source_uri, target_uri
    _table(src, "a", 40)
    _table(src, "b", 300)
    doc = settings(task_name, src, tgt, rtype="full_load_and_cdc", mode="scd2", tables=[("public", "a")])
    MetadataStore().save_task(task_name, doc)
    task = Task.from_settings(doc)
    runner = task.start()
    try:
        _wait_for("the full load", lambda: runner.status == "streaming")
        with Writer(src, ["a", "b"], churn=("b",)) as w:
            time.sleep(1.0)
            out = task.add_table("public.b", wait=WAIT)
            _done(task, out)
            assert "added" in out["message"] and "held change(s)" in out["message"]
            time.sleep(1.0)
            _done(task, task.resync("public.b", wait=WAIT))  # SCD2 default: history appended
            time.sleep(1.0)
            _done(task, task.resync("public.b", baseline=True, wait=WAIT))
            time.sleep(0.5)
        assert w.ops > 50
        _stop(runner)
    finally:
        if runner.running:
            runner.stop(timeout=30)
    # b equals its source (current versions), a's history is exact
    cont = Task.from_settings(with_start_mode(task.settings.to_dict(), "continue"))
    _equal(cont, "public.b")
    _equal(cont, "public.a")
    hist = _history(tgt, "a")
    assert set(hist) == set(range(1, 41))
    for key, versions in hist.items():
        assert len(versions) == 1 + w.updates["a"][key], f"a key {key}: {len(versions)} versions"
    _check_chain(hist, "a")
    _check_chain(_history(tgt, "b"), "b")
    # the stored settings have b; the store shows both tables streaming and the last diffs
    assert ["public", "b"] in [[t["schema_name"], t["table_name"]] for t in MetadataStore().load_task(task_name)["tables"]]
    states = cont.table_states()
    assert dict(zip(states["table"], states["state"], strict=True)) == {"public.a": "streaming", "public.b": "streaming"}
    assert set(states["last_diff"]) == {"equal"}
    assert rows(tgt, "SELECT count(*) FROM trempy.held_changes")[0][0] == 0


def test_upsert_resync_truncates_and_reloads_a_drifted_table(
        source_uri: str, target_uri: str, task_name: str, trempy_home: Path) -> None:
    src, tgt = source_uri, target_uri
    _table(src, "c", 300)
    _table(src, "d", 50)
    doc = settings(task_name, src, tgt, rtype="full_load_and_cdc", mode="upsert",
                   tables=[("public", "c"), ("public", "d")])
    task = Task.from_settings(doc)
    runner = task.start()
    try:
        _wait_for("the full load", lambda: runner.status == "streaming")
        execute(tgt, "DELETE FROM c WHERE id <= 20")
        execute(tgt, "UPDATE c SET v = 'drift' WHERE id BETWEEN 21 AND 30")
        execute(tgt, "INSERT INTO c VALUES (999999, 1, 'extra')")
        with Writer(src, ["c", "d"], churn=("c", "d")):
            time.sleep(0.5)
            out = task.resync("public.c", wait=WAIT)
            _done(task, out)
            time.sleep(0.5)
        _stop(runner)
    finally:
        if runner.running:
            runner.stop(timeout=30)
    cont = Task.from_settings(with_start_mode(doc, "continue"))
    _equal(cont, "public.c")
    _equal(cont, "public.d")


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_pause_and_resume_hold_changes_in_order(
        source_uri: str, target_uri: str, task_name: str, trempy_home: Path, mode: str) -> None:
    src, tgt = source_uri, target_uri
    _table(src, "p", 30)
    _table(src, "q", 30)
    doc = settings(task_name, src, tgt, rtype="full_load_and_cdc", mode=mode,
                   tables=[("public", "p"), ("public", "q")])
    task = Task.from_settings(doc)
    runner = task.start()
    cur = " WHERE scd_current" if mode == "scd2" else ""
    try:
        _wait_for("the full load", lambda: runner.status == "streaming")
        with Writer(src, ["p", "q"]) as w:
            time.sleep(0.5)
            _done(task, task.pause_table("public.p", wait=WAIT))
            frozen = rows(tgt, f"SELECT id, n FROM p{cur} ORDER BY id")
            q_before = rows(tgt, f"SELECT sum(n) FROM q{cur}")[0][0]
            slot_before = rows(src, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                               (f"trempy_{task_name}",))[0][0]
            time.sleep(2.0)
            _wait_for("q to move while p is paused", lambda: rows(tgt, f"SELECT sum(n) FROM q{cur}")[0][0] > q_before)
            assert rows(tgt, f"SELECT id, n FROM p{cur} ORDER BY id") == frozen  # p holds still
            held = rows(tgt, "SELECT count(*) FROM trempy.held_changes WHERE table_name = 'p'")[0][0]
            assert held > 0
            _wait_for("the slot to advance", lambda: rows(
                src, "SELECT confirmed_flush_lsn > %s FROM pg_replication_slots WHERE slot_name = %s",
                (slot_before, f"trempy_{task_name}"))[0][0])
            states = task.table_states()
            assert dict(zip(states["table"], states["state"], strict=True))["public.p"] == "paused"
            out = task.resume_table("public.p", wait=WAIT)
            _done(task, out)
            assert "held change(s) applied in order" in out["message"]
            time.sleep(0.5)
        _stop(runner)
    finally:
        if runner.running:
            runner.stop(timeout=30)
    assert rows(tgt, f"SELECT id, n FROM p{cur} ORDER BY id") == rows(src, "SELECT id, n FROM p ORDER BY id")
    assert rows(tgt, f"SELECT id, n FROM q{cur} ORDER BY id") == rows(src, "SELECT id, n FROM q ORDER BY id")
    assert rows(tgt, "SELECT count(*) FROM trempy.held_changes")[0][0] == 0
    if mode == "scd2":
        hist = _history(tgt, "p")
        for key, versions in hist.items():
            assert len(versions) == 1 + w.updates["p"][key]
            assert [v[3] for v in versions] == list(range(len(versions)))  # 0, 1, 2, ...: in order
        _check_chain(hist, "p")


def test_cli_bad_inputs_waiting_requests_and_repair_refused_under_a_lease(
        source_uri: str, target_uri: str, task_name: str, trempy_home: Path) -> None:
    src, tgt = source_uri, target_uri
    _table(src, "a", 20)
    _table(src, "b", 20)
    doc = settings(task_name, src, tgt, rtype="full_load_and_cdc", mode="upsert", tables=[("public", "a")])
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    store = MetadataStore()
    store.save_task(task_name, with_start_mode(doc, "continue"))
    env = {"TREMPY_HOME": str(trempy_home)}

    r = run_cli(["pause-table", "nosuchtask", "public.a"], env=env)
    assert r.returncode == 2 and task_name in r.stderr and "unknown task" in r.stderr
    r = run_cli(["resync", task_name, "public.zzz"], env=env)
    assert r.returncode == 2 and "public.a" in r.stderr and "not in task" in r.stderr
    r = run_cli(["add-table", task_name, "public.nope"], env=env)
    assert r.returncode == 2 and "nope" in r.stderr
    r = run_cli(["pause-table", task_name, "a"], env=env)  # a bare name: public
    assert r.returncode == 0 and "not running" in r.stdout and "waits" in r.stdout, r.stderr
    r = run_cli(["add-table", task_name, "public.b"], env=env)
    assert r.returncode == 0 and "next run loads" in r.stdout, r.stderr

    # the next run (from the stored settings) pauses a, loads b in step, then streams it
    stored = Task.from_settings(store.load_task(task_name))
    assert [t.key for t in stored.settings.tables] == [("public", "a"), ("public", "b")]
    runner = stored.start()
    try:
        _wait_for("the waiting requests", lambda: store.table_requests(task_name)["state"].to_list() == ["done"] * 2,
                  diag=lambda: (runner.status, runner.error, store.table_requests(task_name).to_dicts(),
                                store.logs(task_name)["message"].to_list()[-5:]))
        execute(src, "UPDATE b SET n = n + 5")
        execute(src, "UPDATE a SET n = n + 5")
        _wait_for("b to stream", lambda: rows(tgt, "SELECT min(n) FROM b")[0][0] == 5)
        assert rows(tgt, "SELECT max(n) FROM a")[0][0] == 0  # a is paused
        stored.resume_table("public.a", wait=WAIT)
        _stop(runner)
    finally:
        if runner.running:
            runner.stop(timeout=30)
    assert rows(tgt, "SELECT min(n) FROM a")[0][0] == 5

    # diff --repair of a task leased by a live worker elsewhere: refused, the owner named
    store.submit(task_name, with_start_mode(doc, "continue"))
    store.register_worker("w-elsewhere", "host-x", 4242, ["both"], ttl_s=60)
    assert store.claim(task_name, "both", "w-elsewhere", ttl_s=60) is not None
    r = run_cli(["diff", task_name, "--repair"], env=env)
    assert r.returncode == 1, r.stderr
    assert "w-elsewhere" in r.stderr and "host-x" in r.stderr and "4242" in r.stderr and "repair refused" in r.stderr
    r = run_cli(["diff", task_name, "--json"], env=env)  # a plain diff is fine
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_a_paused_table_stays_held_across_a_restart(
        source_uri: str, target_uri: str, task_name: str, trempy_home: Path) -> None:
    """The hold is on the target: a new runner keeps holding the table (its changes of the stopped
    period included) until resume-table, then applies everything in order."""
    src, tgt = source_uri, target_uri
    _table(src, "p", 20)
    _table(src, "q", 20)
    doc = settings(task_name, src, tgt, rtype="full_load_and_cdc", mode="upsert",
                   tables=[("public", "p"), ("public", "q")])
    first = Task.from_settings(doc)
    runner = first.start()
    try:
        _wait_for("the full load", lambda: runner.status == "streaming")
        _done(first, first.pause_table("public.p", wait=WAIT))
        execute(src, "UPDATE p SET n = n + 1")
        _stop(runner)
    finally:
        if runner.running:
            runner.stop(timeout=30)
    execute(src, "UPDATE p SET n = n * 10")  # while nothing runs
    execute(src, "UPDATE q SET n = n + 3")
    second = Task.from_settings(with_start_mode(doc, "continue"))
    runner = second.start()
    try:
        _wait_for("q to stream", lambda: rows(tgt, "SELECT min(n) FROM q")[0][0] == 3)
        assert rows(tgt, "SELECT max(n) FROM p")[0][0] == 0  # still held
        out = second.resume_table("public.p", wait=WAIT)
        _done(second, out)
        _stop(runner)
    finally:
        if runner.running:
            runner.stop(timeout=30)
    assert rows(tgt, "SELECT id, n FROM p ORDER BY id") == rows(src, "SELECT id, n FROM p ORDER BY id")
    assert {r[0] for r in rows(tgt, "SELECT n FROM p")} == {10}  # (0 + 1) * 10: both updates, in order


def test_an_owner_in_another_process_carries_requests_out(
        source_uri: str, target_uri: str, task_name: str, trempy_home: Path, tmp_path: Path) -> None:
    """`trempy-nb run` in a child process owns the task; this process asks through the store."""
    import signal
    import subprocess
    import sys

    src, tgt = source_uri, target_uri
    _table(src, "p", 20)
    doc = settings(task_name, src, tgt, rtype="full_load_and_cdc", mode="upsert", tables=[("public", "p")])
    path = tmp_path / "task.json"
    path.write_text(json.dumps(doc))
    child = subprocess.Popen([sys.executable, "-m", "trempy_nb.cli", "run", str(path), "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for("the child's full load", lambda: rows(
            tgt, "SELECT count(*) FROM pg_tables WHERE schemaname = 'trempy' AND tablename = 'checkpoints'")[0][0]
            and rows(tgt, "SELECT count(*) FROM trempy.checkpoints WHERE task = %s", (task_name,))[0][0])
        task = Task.from_settings(with_start_mode(doc, "continue"))
        out = task.pause_table("public.p", wait=WAIT)
        assert out["owner"] == "a runner holding its lock" and out["state"] == "done", out
        execute(src, "UPDATE p SET n = n + 1")
        _wait_for("the change to be held", lambda: rows(tgt, "SELECT count(*) FROM trempy.held_changes")[0][0] > 0)
        assert rows(tgt, "SELECT max(n) FROM p")[0][0] == 0
        _done(task, task.resume_table("public.p", wait=WAIT))
        assert rows(tgt, "SELECT min(n) FROM p")[0][0] == 1
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
