"""Fencing of a task's target writes (writer.fence, engine.fencing), on real servers and processes.

(a) On a real target (PostgreSQL, and MariaDB at 127.0.0.1:3306): a batch applied with epoch 1,
    epoch 2 claimed, a batch of epoch 1 is refused with `Fenced` and writes nothing (rows and
    checkpoint unchanged); eviction ends a session that holds the fence row so a claim goes through.
(b) A real zombie: process A runs an SCD2 CDC task with Fence(epoch=1) and freezes itself (SIGSTOP)
    inside an apply transaction; process B starts with Fence(epoch=2), evicts A and goes on; A is
    SIGCONTed: its late write is refused, it exits non-zero saying so, and every key ends with
    exactly 1 + its committed updates versions.
(c) The same with a full-load table commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.cdc_helpers import drop_task, execute, rows, settings, with_start_mode, write_settings
from tests.conftest import in_ci
from trempy_nb.catalog import ColumnInfo
from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED
from trempy_nb.db import task_app_name
from trempy_nb.engine import fencing
from trempy_nb.errors import ConnectionFailed, Fenced
from trempy_nb.settings import ErrorHandling
from trempy_nb.writer.apply import TableApply
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.dialect import POSTGRES, TargetDialect
from trempy_nb.writer.fence import Fence
from trempy_nb.writer.mariadb import uri as maria_uri
from trempy_nb.writer.mariadb.dialect import MARIADB
from trempy_nb.writer.mariadb.names import execute as m_execute
from trempy_nb.writer.mariadb.names import quote

REPO = Path(__file__).resolve().parents[2]
STOP = ErrorHandling()
COLUMNS = (ColumnInfo("id", "integer", False, 1), ColumnInfo("name", "text", True, 2))
MARIA_SERVER = "mysql://root@127.0.0.1:3306"
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def batch(values: list[tuple[int, str]], lsn: int) -> pl.DataFrame:
    data = {"id": [str(v[0]) for v in values], "name": [v[1] for v in values]}
    meta = {OP: ["I"] * len(values), LSN: [lsn] * len(values), TS: [T0] * len(values),
            SEQ: list(range(len(values))), UNCHANGED: [None] * len(values)}
    return pl.DataFrame(data | meta, schema={"id": pl.String(), "name": pl.String()} | META_SCHEMA)


# -- (a) the check on a real target, both dialects -------------------------------------------------


def _maria() -> Iterator[tuple[TargetDialect, str, str]]:
    try:
        admin = maria_uri.connect(f"{MARIA_SERVER}/mysql", timeout=3)
    except ConnectionFailed as exc:
        if in_ci():
            pytest.fail(f"MariaDB is not running on 127.0.0.1:3306 (CI needs it): {exc}")
        pytest.skip(f"MariaDB is not running: {exc}")
    db = f"mfe_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        m_execute(cur, f"CREATE DATABASE {quote(db)}")
    try:
        yield MARIADB, f"{MARIA_SERVER}/{db}", db
    finally:
        with admin.cursor() as cur:
            m_execute(cur, f"DROP DATABASE IF EXISTS {quote(db)}")
        admin.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[TargetDialect, str, str]]:
    """(dialect, target uri, schema of the data table)."""
    if request.param == "postgresql":
        yield POSTGRES, request.getfixturevalue("target_uri"), "dw"
    else:
        yield from _maria()


def fence_of(d: TargetDialect, conn: Any, key: str) -> int | None:
    value = d.read_fence(conn, key)
    conn.commit()
    return value


def _items(d: TargetDialect, conn: Any, spec: TargetSpec) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, name FROM {spec.schema}.{spec.table} ORDER BY id")
        out = [tuple(r) for r in cur.fetchall()]
    conn.commit()
    return out


def test_an_older_epoch_writes_nothing(target: tuple[TargetDialect, str, str]) -> None:
    d, uri, schema = target
    task = "f" + uuid.uuid4().hex[:8]
    spec = TargetSpec(schema, "items", COLUMNS, ("id",), "upsert")
    conn = d.connect(uri, application_name=task_app_name(task, "test"))
    try:
        d.ensure_state_tables(conn)
        d.ensure_target(conn, spec)
        conn.commit()
        one = Fence(1, key=task)
        d.apply_batch(conn, task, [TableApply(spec, batch([(1, "a"), (2, "b")], 100))], 100,
                      error_handling=STOP, fence=one)
        assert fence_of(d, conn, task) == 1
        d.claim_target(conn, task, 2)
        assert fence_of(d, conn, task) == 2
        with pytest.raises(Fenced, match=f"task {task}: lease lost to epoch 2"):
            d.apply_batch(conn, task, [TableApply(spec, batch([(3, "zombie"), (1, "zombie")], 200))], 200,
                          error_handling=STOP, fence=one)
        assert _items(d, conn, spec) == [(1, "a"), (2, "b")]
        assert d.read_checkpoint(conn, task) == 100
        conn.commit()
        # an expired lease (valid() false) writes nothing either, even with the current epoch
        with pytest.raises(Fenced, match="expired"):
            d.apply_batch(conn, task, [TableApply(spec, batch([(3, "late")], 300))], 300,
                          error_handling=STOP, fence=Fence(2, valid=lambda: False, key=task))
        assert d.read_checkpoint(conn, task) == 100
        conn.commit()
        # the new owner writes; an older claim is refused
        d.apply_batch(conn, task, [TableApply(spec, batch([(3, "c")], 400))], 400,
                      error_handling=STOP, fence=Fence(2, key=task))
        assert _items(d, conn, spec) == [(1, "a"), (2, "b"), (3, "c")]
        assert d.read_checkpoint(conn, task) == 400
        conn.commit()
        with pytest.raises(Fenced):
            d.claim_target(conn, task, 1)
        assert fence_of(d, conn, task) == 2
        # no fence: today's behaviour
        d.apply_batch(conn, task, [TableApply(spec, batch([(4, "d")], 500))], 500, error_handling=STOP)
        assert d.read_checkpoint(conn, task) == 500
        conn.commit()
    finally:
        conn.close()


def test_eviction_frees_the_fence_row_a_frozen_owner_holds(target: tuple[TargetDialect, str, str]) -> None:
    """A session of the task in the middle of a write (it holds the fence row's lock) would make a
    claim wait forever: eviction ends it (rolling it back) and the claim goes through."""
    d, uri, _ = target
    task = "f" + uuid.uuid4().hex[:8]
    zombie = d.connect(uri, application_name=task_app_name(task, "apply"))
    bystander = d.connect(uri, application_name=task_app_name("other" + task, "apply"))
    try:
        d.ensure_state_tables(zombie)
        zombie.commit()
        d.claim_target(zombie, task, 1)
        d.check_fence(zombie, Fence(1, key=task), task)  # the row lock, held: the zombie freezes here
        gone = fencing.evict(task, None, uri, dialect=d)["target"]
        assert d.backend_id(zombie) in gone and d.backend_id(bystander) not in gone
        fencing.claim(d, uri, task, task, 2, wait_s=10)
        check = d.connect(uri)
        try:
            assert d.read_fence(check, task) == 2
        finally:
            check.close()
        assert d.usable(bystander)
    finally:
        for c in (zombie, bystander):
            try:
                c.close()
            except Exception:  # noqa: S110 - the zombie's connection is gone
                pass


# -- (b), (c): real processes --------------------------------------------------------------------


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "fz" + uuid.uuid4().hex[:8]
    yield name
    drop_task(source_uri, name)


class Proc:
    def __init__(self, settings_path: Path, epoch: int, log: Path, pause_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TREMPY_CRASH_AT"}
        env["TREMPY_BATCH_CHANGES"] = "200"
        if pause_at:
            env["TREMPY_CRASH_AT"] = f"pause:{pause_at}"
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in wait
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fence_proc", str(settings_path), str(epoch)],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                     start_new_session=True)

    def state(self) -> str:
        try:
            return Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "gone"

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not finish in {timeout}s:\n{self.text()[-3000:]}") from None
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(pred: Callable[[], Any], timeout: float, what: str, procs: tuple[Proc, ...] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    logs = "\n".join(p.text()[-2000:] for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


N = 30


def _update(source_uri: str, keys: range, updates: dict[int, int]) -> None:
    for k in keys:  # one transaction each: each is one committed update of its key
        execute(source_uri, "UPDATE t SET v = v + 1 WHERE id = %s", (k,))
        updates[k] += 1


class ZombieTarget:
    """Where the zombie test's task writes: its settings, SCD2 versions and stored epoch."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        if kind == "postgresql":
            self.uri = request.getfixturevalue("target_uri")
            self._maria: Any = None
        else:
            self._maria = _maria()
            _, self.uri, self.db = next(self._maria)

    def settings(self, name: str, source_uri: str) -> dict[str, Any]:
        doc = settings(name, source_uri, self.uri, rtype="full_load_and_cdc", mode="scd2")
        if self.kind == "mariadb":  # the source schema `public` lands in the test's database
            doc["transformations"] = [{"schema_name": "public", "table_name": "t", "priority": 0,
                                       "transformation_type": "modify_schema_name",
                                       "contract": {"target_schema_name": self.db}}]
        return doc

    def _query(self, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "postgresql":
            return rows(self.uri, text, params)
        conn = maria_uri.connect(self.uri)
        try:
            with conn.cursor() as cur:
                cur.execute(text, params)
                return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def versions(self) -> dict[int, tuple[int, int]]:
        table = "public.t" if self.kind == "postgresql" else f"`{self.db}`.t"
        try:
            got = self._query(f"SELECT id, count(*), sum(scd_current) FROM {table} GROUP BY id"
                              if self.kind == "mariadb" else
                              f"SELECT id, count(*), sum(scd_current::int) FROM {table} GROUP BY id")
        except Exception:
            return {}
        return {int(r[0]): (int(r[1]), int(r[2])) for r in got}

    def epoch(self, task: str) -> list[tuple[Any, ...]]:
        table = "trempy.fences" if self.kind == "postgresql" else "trempy_fences"
        return self._query(f"SELECT epoch FROM {table} WHERE task = %s", (task,))

    def close(self) -> None:
        if self._maria is not None:
            next(self._maria, None)


@pytest.fixture(params=["postgresql", "mariadb"])
def zombie_target(request: pytest.FixtureRequest) -> Iterator[ZombieTarget]:
    t = ZombieTarget(request.param, request)
    try:
        yield t
    finally:
        t.close()


def test_a_frozen_cdc_owner_is_evicted_and_its_late_write_refused(
    source_uri: str, zombie_target: ZombieTarget, task_name: str, tmp_path: Path, trempy_home: Path
) -> None:
    tgt = zombie_target
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    execute(source_uri, "INSERT INTO t SELECT g, 0 FROM generate_series(1, %s) g", (N,))
    doc = tgt.settings(task_name, source_uri)
    first = write_settings(tmp_path / "a.json", doc)
    again = write_settings(tmp_path / "b.json", with_start_mode(doc, "continue"))
    updates = dict.fromkeys(range(1, N + 1), 0)
    a = Proc(first, 1, tmp_path / "a.log", pause_at="apply_before_checkpoint")
    b: Proc | None = None
    try:
        wait_for(lambda: len(tgt.versions()) == N, 90, "A's full load", (a,))
        _update(source_uri, range(1, 11), updates)
        wait_for(lambda: a.state() == "T", 90, "A frozen inside its first apply", (a,))
        b = Proc(again, 2, tmp_path / "b.log")
        _update(source_uri, range(5, 21), updates)
        expected = {k: (1 + n, 1) for k, n in updates.items()}
        wait_for(lambda: tgt.versions() == expected, 120, "B applying every update", (a, b))
        os.kill(a.proc.pid, signal.SIGCONT)
        rc = a.wait(90)
        assert rc == 3, a.text()[-3000:]
        assert f"task {task_name}: lease lost to epoch 2; this copy (epoch 1) stops" in a.text()
        _update(source_uri, range(25, 31), updates)  # B still owns the task and applies
        expected = {k: (1 + n, 1) for k, n in updates.items()}
        wait_for(lambda: tgt.versions() == expected, 120, "B applying after A's exit", (b,))
        os.kill(b.proc.pid, signal.SIGTERM)
        assert b.wait(90) == 0, b.text()[-3000:]
        assert tgt.versions() == expected  # nothing lost, nothing applied twice
        assert tgt.epoch(task_name) == [(2,)]
    finally:
        a.kill()
        if b is not None:
            b.kill()


def test_a_frozen_full_load_commit_is_refused(
    source_uri: str, target_uri: str, task_name: str, tmp_path: Path, trempy_home: Path
) -> None:
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    execute(source_uri, "INSERT INTO t SELECT g, 0 FROM generate_series(1, %s) g", (N,))
    doc = settings(task_name, source_uri, target_uri, rtype="full_load")
    path = write_settings(tmp_path / "fl.json", doc)
    a = Proc(path, 1, tmp_path / "a.log", pause_at="full_load_before_table_commit")
    b: Proc | None = None
    try:
        wait_for(lambda: a.state() == "T", 90, "A frozen before its table commit", (a,))
        b = Proc(path, 2, tmp_path / "b.log")
        assert b.wait(120) == 0, b.text()[-3000:]
        assert rows(target_uri, "SELECT count(*) FROM public.t") == [(N,)]
        os.kill(a.proc.pid, signal.SIGCONT)
        assert a.wait(90) == 3, a.text()[-3000:] + "\n--- B:\n" + b.text()[-3000:] + str(
            rows(target_uri, "SELECT * FROM trempy.fences"))
        assert f"task {task_name}: lease lost to epoch 2; this copy (epoch 1) stops" in a.text()
        assert rows(target_uri, "SELECT count(*) FROM public.t") == [(N,)]
        assert rows(target_uri, "SELECT status FROM trempy.load_state WHERE task = %s", (task_name,)) == [("done",)]
    finally:
        a.kill()
        if b is not None:
            b.kill()
