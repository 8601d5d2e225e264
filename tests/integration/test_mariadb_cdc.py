"""CDC into a MariaDB target end to end: PostgreSQL source (a throwaway cluster), the real MariaDB
server on 127.0.0.1:3306 (root, no password), runs through `Task` and the `trempy-nb` CLI.

Expectations are computed from what the source committed (a single writer, so execution order is
commit order; every update writes a unique counter into `v`), never from the engine's code: an
upsert target equals the source table; an SCD2 key's versions carry exactly its committed `v`
values in order (nothing lost, nothing applied twice), the last one current.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import (
    drop_task,
    execute,
    rows,
    run_cli,
    settings,
    with_start_mode,
    write_settings,
)
from tests.maria_helpers import SERVER, q
from trempy_nb.errors import SlotLost
from trempy_nb.task import Task
from trempy_nb.writer.mariadb.names import execute as m_execute
from trempy_nb.writer.mariadb.names import qualified, quote

T_SQL = "CREATE TABLE t (id int PRIMARY KEY, v int, s text)"
MODES = ["upsert", "scd2"]


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "m" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def doc_for(name: str, source_uri: str, state: str, data: str, **kw: Any) -> dict:
    """A task into MariaDB: the source schema `public` lands in database `data`."""
    return settings(name, source_uri, f"{SERVER}/{state}", transformations=[
        {"schema_name": "public", "table_name": "t", "priority": 0, "transformation_type": "modify_schema_name",
         "contract": {"target_schema_name": data}}], **kw)


def run(doc: dict, start_mode: str | None = None) -> None:
    if start_mode:
        doc = with_start_mode(doc, start_mode)
    Task.from_settings(doc).run(until_caught_up=True, progress=False)


def source_rows(source_uri: str) -> list[tuple]:
    return [tuple(r) for r in rows(source_uri, "SELECT id, v, s FROM t ORDER BY id")]


def chains(admin: Any, data: str) -> dict[int, list[tuple[int, bool]]]:
    """{id: [(v, current), ...]} in version order (start date, then end date)."""
    out: dict[int, list[tuple[int, bool]]] = {}
    for k, v, cur in q(admin, f"SELECT id, v, scd_current FROM {qualified(data, 't')}"
                       " ORDER BY id, scd_start_date, scd_end_date IS NULL, scd_end_date"):
        out.setdefault(int(k), []).append((int(v), bool(cur)))
    return out


class Writer:
    """Single-row source transactions in one thread (execution order = commit order), bounded."""

    def __init__(self, source_uri: str, history: dict[int, list[int]], *, keys: int, n: int) -> None:
        self.source_uri, self.history, self.keys, self.n = source_uri, history, keys, n
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        rng = random.Random(11)
        try:
            for i in range(1, self.n + 1):
                v = 1_000_000 + i
                if i % 10:
                    k = rng.randint(1, self.keys)
                    execute(self.source_uri, "UPDATE t SET v = %s WHERE id = %s", (v, k))
                else:
                    k = 100_000 + i
                    execute(self.source_uri, "INSERT INTO t VALUES (%s, %s, 'new')", (k, v))
                self.history.setdefault(k, []).append(v)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)


@pytest.mark.parametrize("mode", MODES)
def test_full_load_and_cdc_under_a_concurrent_writer(source_uri: str, trempy_home: Path, task_name: str,
                                                     maria: tuple[str, str, Any], mode: str) -> None:
    """The handoff at the slot's snapshot while the writer commits: no change lost or doubled."""
    state, data, admin = maria
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, i, md5(i::text) FROM generate_series(1, 5000) i")
    history: dict[int, list[int]] = {k: [k] for k in range(1, 5001)}
    doc = doc_for(task_name, source_uri, state, data, rtype="full_load_and_cdc", mode=mode)
    writer = Writer(source_uri, history, keys=300, n=400)
    writer.thread.start()
    try:
        time.sleep(0.1)
        run(doc)  # full load + catch-up, while the writer commits
    finally:
        writer.thread.join()
    assert not writer.errors, writer.errors
    run(doc, "continue")
    if mode == "upsert":
        assert q(admin, f"SELECT id, v, s FROM {qualified(data, 't')} ORDER BY id") == source_rows(source_uri)
        return
    got = chains(admin, data)
    assert set(got) == set(history)
    for k, vs in history.items():
        chain = got[k]
        assert [c for _, c in chain] == [False] * (len(chain) - 1) + [True], (k, chain)
        values = [v for v, _ in chain]
        # the full load opened the version the snapshot saw; every later update is one more version
        assert values == vs[len(vs) - len(values):], (k, values, vs)
    assert q(admin, f"SELECT COUNT(*) FROM {qualified(data, 't')} WHERE scd_current") == [(len(history),)]
    assert sum(len(c) for c in got.values()) > len(history)  # the stream opened versions too


@pytest.mark.parametrize("mode", MODES)
def test_continue_after_kill_9_with_exact_versions(source_uri: str, trempy_home: Path, task_name: str,
                                                   tmp_path: Path, maria: tuple[str, str, Any], mode: str) -> None:
    """kill -9 of `trempy-nb run` while it streams; a `continue --until-caught-up` run ends exact."""
    state, data, admin = maria
    execute(source_uri, T_SQL)
    doc = doc_for(task_name, source_uri, state, data, mode=mode)
    run(doc)  # cdc: creates the slot, the target table and the checkpoint
    path = write_settings(tmp_path / "t.json", with_start_mode(doc, "continue"))
    env = {**os.environ, "TREMPY_BATCH_CHANGES": "20", "TREMPY_HOME": str(trempy_home)}
    proc = subprocess.Popen([sys.executable, "-m", "trempy_nb.cli", "run", str(path), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history: dict[int, list[int]] = {}
    try:
        execute(source_uri, "INSERT INTO t SELECT i, 0, 'k' FROM generate_series(1, 40) i")
        history.update({k: [0] for k in range(1, 41)})
        rng = random.Random(3)
        for n in range(1, 301):
            k = rng.randint(1, 40)
            execute(source_uri, "UPDATE t SET v = %s WHERE id = %s", (n, k))
            history[k].append(n)
            if n == 150:
                _wait_for(lambda: _applied(admin, data))
                proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    res = run_cli(["run", str(path), "--until-caught-up", "-q"], env=env)
    assert res.returncode == 0, res.stderr
    if mode == "upsert":
        assert q(admin, f"SELECT id, v, s FROM {qualified(data, 't')} ORDER BY id") == source_rows(source_uri)
        return
    got = chains(admin, data)
    assert set(got) == set(history)
    for k, vs in history.items():
        assert got[k] == [(v, i == len(vs) - 1) for i, v in enumerate(vs)], (k, got[k], vs)
    total = sum(len(vs) for vs in history.values())
    assert q(admin, f"SELECT COUNT(*), SUM(scd_current) FROM {qualified(data, 't')}") == [(total, Decimal(40))]


def _applied(admin: Any, data: str) -> bool:
    """The killed run applied part of the stream (the 40 inserts and some updates)."""
    return int(q(admin, f"SELECT COUNT(*) FROM {qualified(data, 't')}")[0][0]) >= 40


def _wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", MODES)
def test_added_source_column_reaches_the_target(source_uri: str, trempy_home: Path, task_name: str,
                                                maria: tuple[str, str, Any], mode: str) -> None:
    state, data, admin = maria
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')")
    doc = doc_for(task_name, source_uri, state, data, rtype="full_load_and_cdc", mode=mode)
    run(doc)
    execute(source_uri, "UPDATE t SET v = 10 WHERE id = 1")
    execute(source_uri, "ALTER TABLE t ADD COLUMN w numeric(6,2)")
    execute(source_uri, "INSERT INTO t VALUES (3, 3, 'c', 3.5)")
    execute(source_uri, "UPDATE t SET w = 2.25 WHERE id = 2")
    run(doc, "continue")
    execute(source_uri, "UPDATE t SET w = w + 1, v = 4 WHERE id = 3")
    run(doc, "continue")
    assert q(admin, "SELECT column_type FROM information_schema.columns WHERE table_schema = %s"
             " AND table_name = 't' AND column_name = 'w'", (data,)) == [("decimal(6,2)",)]
    cur = " WHERE scd_current" if mode == "scd2" else ""
    assert q(admin, f"SELECT id, v, s, w FROM {qualified(data, 't')}{cur} ORDER BY id") == [
        tuple(r) for r in rows(source_uri, "SELECT id, v, s, w FROM t ORDER BY id")]
    if mode == "scd2":  # 1: load + update; 2: load + w; 3: insert + update
        assert q(admin, f"SELECT id, COUNT(*) FROM {qualified(data, 't')} GROUP BY id ORDER BY id") == [
            (1, 2), (2, 2), (3, 2)]


@pytest.mark.parametrize("mode", MODES)
def test_column_added_while_streaming_reaches_the_target(source_uri: str, trempy_home: Path, task_name: str,
                                                         maria: tuple[str, str, Any], mode: str) -> None:
    """The running applier meets the new shape in the stream: ALTER TABLE ... ADD COLUMN on MariaDB."""
    state, data, admin = maria
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')")
    doc = doc_for(task_name, source_uri, state, data, rtype="full_load_and_cdc", mode=mode)
    runner = Task.from_settings(doc).start()
    try:
        execute(source_uri, "UPDATE t SET v = 10 WHERE id = 1")
        _wait_for(lambda: bool(q(admin, "SELECT 1 FROM information_schema.tables WHERE table_schema = %s",
                                 (data,))) and (10,) in q(admin, f"SELECT v FROM {qualified(data, 't')}"))
        execute(source_uri, "ALTER TABLE t ADD COLUMN w numeric(6,2)")
        execute(source_uri, "INSERT INTO t VALUES (3, 3, 'c', 3.5)")
        execute(source_uri, "UPDATE t SET w = 2.25 WHERE id = 2")
    finally:
        runner.stop_when_caught_up(timeout=120)
    assert not runner.running
    cur = " WHERE scd_current" if mode == "scd2" else ""
    assert q(admin, f"SELECT id, v, s, w FROM {qualified(data, 't')}{cur} ORDER BY id") == [
        tuple(r) for r in rows(source_uri, "SELECT id, v, s, w FROM t ORDER BY id")]
    if mode == "scd2":  # 1: load (+ update, unless the snapshot saw it); 2: load + w; 3: insert
        counts = dict(q(admin, f"SELECT id, COUNT(*) FROM {qualified(data, 't')} GROUP BY id"))
        assert counts[1] in (1, 2) and (counts[2], counts[3]) == (2, 1), counts


def test_cli_cdc_then_drop_resets_the_checkpoint(source_uri: str, trempy_home: Path, task_name: str,
                                                 tmp_path: Path, maria: tuple[str, str, Any]) -> None:
    state, data, admin = maria
    execute(source_uri, T_SQL)
    path = write_settings(tmp_path / "d.json", doc_for(task_name, source_uri, state, data))
    env = {"TREMPY_HOME": str(trempy_home)}
    assert run_cli(["run", str(path), "--until-caught-up", "-q"], env=env).returncode == 0
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'x')")
    res = run_cli(["run", str(path), "--until-caught-up", "--start-mode", "continue", "-q"], env=env)
    assert res.returncode == 0, res.stderr
    assert q(admin, f"SELECT id, v, s FROM {qualified(data, 't')}") == [(1, 1, "x")]
    checkpoints = f"SELECT COUNT(*) FROM {qualified(state, 'trempy_checkpoints')} WHERE task = %s"
    assert q(admin, checkpoints, (task_name,)) == [(1,)]
    res = run_cli(["drop", str(path)], env=env)
    assert res.returncode == 0, res.stderr
    assert q(admin, checkpoints, (task_name,)) == [(0,)]
    assert rows(source_uri, "SELECT slot_name FROM pg_replication_slots") == []


def test_cdc_run_checks_the_target_before_writing(source_uri: str, trempy_home: Path, task_name: str,
                                                  tmp_path: Path, maria: tuple[str, str, Any]) -> None:
    """A user without the writer's privileges: one line, exit 2, no slot, no state table."""
    state, data, admin = maria
    user = f"tr_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        m_execute(cur, "CREATE USER %s@'%%' IDENTIFIED BY 'Weak!Pw9'", (user,))
        m_execute(cur, f"GRANT SELECT ON {quote(state)}.* TO %s@'%%'", (user,))
    try:
        execute(source_uri, T_SQL)
        doc = doc_for(task_name, source_uri, state, data)
        doc["task"]["target"] = f"mysql://{user}:Weak!Pw9@127.0.0.1:3306/{state}"
        res = run_cli(["run", str(write_settings(tmp_path / "v.json", doc)), "-q"],
                      env={"TREMPY_HOME": str(trempy_home)})
        assert res.returncode == 2 and "lacks privilege" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Weak!Pw9" not in res.stderr + res.stdout
        assert rows(source_uri, "SELECT slot_name FROM pg_replication_slots") == []
        assert q(admin, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s",
                 (state,)) == [(0,)]
    finally:
        with admin.cursor() as cur:
            m_execute(cur, "DROP USER IF EXISTS %s@'%%'", (user,))


def test_slot_recreated_while_stopped_is_slot_lost(source_uri: str, trempy_home: Path, task_name: str,
                                                   maria: tuple[str, str, Any]) -> None:
    """The slot position recorded on the MariaDB target unmasks a recreated slot."""
    state, data, admin = maria
    execute(source_uri, T_SQL)
    doc = doc_for(task_name, source_uri, state, data)
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'x')")
    run(doc, "continue")
    execute(source_uri, "SELECT pg_drop_replication_slot(%s)", (f"trempy_{task_name}",))
    execute(source_uri, "INSERT INTO t VALUES (2, 2, 'lost')")
    execute(source_uri, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"trempy_{task_name}",))
    execute(source_uri, "INSERT INTO t VALUES (3, 3, 'after')")
    with pytest.raises(SlotLost, match="recreated"):
        run(doc, "continue")
    assert q(admin, f"SELECT id FROM {qualified(data, 't')} ORDER BY id") == [(1,)]
