"""The RabbitMQ transport into a MariaDB target: real broker (127.0.0.1:5672), real PostgreSQL source,
the machine's MariaDB. Full load and CDC through the broker must give exactly the source (upsert) and
exactly the versions the local transport writes (SCD2); a poison batch is dead-lettered and its table
held in the MariaDB state database while the other tables go on, then replayed exactly once. In CI a
missing broker or server fails the tests (the `broker` and `server` fixtures).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration import test_rabbitmq as rmq_tests
from tests.integration.test_rabbitmq import T_SQL, caught_up, sql, start, wait_for, workload
from tests.maria_helpers import SERVER, q
from trempy_nb.capture.slot import drop_task_objects
from trempy_nb.task import Task
from trempy_nb.transport import rabbitmq as rmq
from trempy_nb.writer.mariadb.held import HELD
from trempy_nb.writer.mariadb.names import execute as m_execute
from trempy_nb.writer.mariadb.names import qualified

#: the broker (fails in CI when missing) and a task name whose topology and slot are removed after
broker = rmq_tests.broker
task_name = rmq_tests.task_name


def mdoc(name: str, src: str, state: str, data: str, *, mode: str = "upsert", tables: tuple[str, ...] = ("t",),
         transport: str = "rabbitmq", rtype: str = "full_load_and_cdc", start_mode: str = "reload") -> dict[str, Any]:
    return {
        "task": {
            "task_name": name, "source": src, "target": f"{SERVER}/{state}", "replication_type": rtype,
            "start_mode": start_mode, "transport": transport, "interval_seconds": 0.05,
            "cdc_settings": {"mode": mode},
        },
        "error_handling": {"max_retries": 2},
        "tables": [{"schema_name": "public", "table_name": t} for t in tables],
        "transformations": [{"schema_name": "public", "table_name": t, "priority": 0,
                             "transformation_type": "modify_schema_name", "contract": {"target_schema_name": data}}
                            for t in tables],
    }


def src_rows(src: str, table: str = "t") -> list[tuple]:
    with psycopg.connect(src) as c:
        return [tuple(r) for r in c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()]  # type: ignore[arg-type]


def maria_rows(admin: Any, data: str, table: str = "t", scd2: bool = False) -> list[tuple]:
    cols = "id, v, s" + (", scd_start_date, scd_end_date, scd_current" if scd2 else "")
    order = "id, scd_start_date" if scd2 else "id"
    return q(admin, f"SELECT {cols} FROM {qualified(data, table)} ORDER BY {order}")


def loaded(versions: list[tuple]) -> list[tuple]:
    """SCD2 versions with the full load's start time (the earliest) written as 'load'."""
    first = min(r[3] for r in versions)
    return [(*r[:3], "load" if r[3] == first else r[3], *r[4:]) for r in versions]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_full_load_and_cdc_through_the_broker_into_mariadb(
    mode: str, task_name: str, source_uri: str, trempy_home: Path, maria: tuple[str, str, Any],
    dbs: Callable[..., str]
) -> None:
    """Upsert: the source exactly. SCD2: the same versions as the local transport writes."""
    state, data, admin = maria
    local_data = dbs("mdl", create=False)
    local_name = task_name + "_l"
    sql(source_uri, T_SQL, "INSERT INTO t SELECT i, i, 'x' || i FROM generate_series(1, 500) i")
    from trempy_nb.metadata import MetadataStore

    MetadataStore()  # created once up front: two runners creating it at once can hit "database is locked"
    runners = [start(mdoc(task_name, source_uri, state, data, mode=mode))]
    try:
        wait_for(lambda: runners[0].status == "streaming", timeout=60, what="rabbitmq runner streaming")
        runners.append(start(mdoc(local_name, source_uri, state, local_data, mode=mode, transport="local")))
        wait_for(lambda: runners[1].status == "streaming", timeout=60, what="local runner streaming")
        time.sleep(0.5)
        workload(source_uri, base=1000)
        workload(source_uri, base=2000, n=300)
        for r in runners:
            caught_up(r)
    finally:
        for r in runners:
            with contextlib.suppress(Exception):
                r.stop(10)
        with psycopg.connect(source_uri, autocommit=True) as conn:
            drop_task_objects(conn, local_name)
    assert all(r.error is None for r in runners)
    source = src_rows(source_uri)
    if mode == "upsert":
        assert maria_rows(admin, data) == source
    else:
        got = maria_rows(admin, data, scd2=True)
        # versions opened by CDC start at their commit time in both; the loaded ones at each task's load
        assert loaded(got) == loaded(maria_rows(admin, local_data, scd2=True))
        current = [r[:3] for r in got if r[5]]
        assert current == source
        assert len(got) > len(current)
        assert all(r[4] is None for r in got if r[5]) and all(r[4] is not None for r in got if not r[5])
    assert rmq.queue_depth(task_name) == (0, 0)


@pytest.mark.rabbitmq
def test_poison_batch_held_on_mariadb_then_replayed(
    task_name: str, source_uri: str, trempy_home: Path, maria: tuple[str, str, Any],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TREMPY_RABBITMQ_RETRY_SLEEP", "0.01")
    state, data, admin = maria
    sql(source_uri, "CREATE TABLE a (id int PRIMARY KEY, v int)", "CREATE TABLE b (id int PRIMARY KEY, v int)")
    d = mdoc(task_name, source_uri, state, data, tables=("a", "b"), rtype="cdc")
    Task.from_settings(d).run(progress=False)  # creates the target tables
    a, b = qualified(data, "a"), qualified(data, "b")
    with admin.cursor() as cur:
        m_execute(cur, f"ALTER TABLE {a} ADD CONSTRAINT v_small CHECK (v < 100)")
    task = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}})
    runner = task.start()
    try:
        wait_for(lambda: runner.status == "streaming", timeout=60, what="streaming")
        sql(source_uri, "INSERT INTO a VALUES (1, 1)")
        wait_for(lambda: q(admin, f"SELECT id, v FROM {a}") == [(1, 1)], what="a applied")
        sql(source_uri, "INSERT INTO a VALUES (2, 500)")  # poison: violates v_small on MariaDB
        sql(source_uri, "INSERT INTO b VALUES (1, 10)")
        wait_for(lambda: len(rmq.dead_letters(task_name)) == 1, what="the poison dead-lettered")
        # the table is held in the MariaDB state database, where a restart finds it
        held = q(admin, f"SELECT schema_name, table_name FROM {qualified(state, HELD)} WHERE task = %s",
                 (task_name,))
        assert held == [("public", "a")]
        sql(source_uri, "UPDATE a SET v = 7 WHERE id = 1", "INSERT INTO b VALUES (2, 20)")  # a is held
        sql(source_uri, "INSERT INTO b VALUES (3, 30)")
        wait_for(lambda: q(admin, f"SELECT id, v FROM {b} ORDER BY id") == src_rows(source_uri, "b"),
                 what="table b applied past the poison")
        wait_for(lambda: len(rmq.dead_letters(task_name)) == 2, what="two dead letters")
    finally:
        with contextlib.suppress(Exception):
            runner.stop(30)
    assert q(admin, f"SELECT id, v FROM {a} ORDER BY id") == [(1, 1)]
    assert rmq.dead_letters(task_name)["reason"].to_list() == ["apply_failed", "held"]
    with admin.cursor() as cur:  # fix the cause, replay: everything lands in order, exactly once
        m_execute(cur, f"ALTER TABLE {a} DROP CONSTRAINT v_small")
    assert task.replay_dead_letters() == 2
    runner = task.start()
    try:
        wait_for(lambda: q(admin, f"SELECT id, v FROM {a} ORDER BY id") == src_rows(source_uri, "a"),
                 what="replayed rows")
        sql(source_uri, "UPDATE a SET v = 8 WHERE id = 2")  # the table is released: live again
        wait_for(lambda: q(admin, f"SELECT id, v FROM {a} ORDER BY id") == src_rows(source_uri, "a"),
                 what="live after replay")
    finally:
        runner.stop(30)
    assert q(admin, f"SELECT COUNT(*) FROM {qualified(state, HELD)} WHERE task = %s", (task_name,)) == [(0,)]
    replays = q(admin, f"SELECT task FROM {qualified(state, 'trempy_checkpoints')} WHERE task LIKE %s",
                (task_name + "#replay:%",))
    assert replays == [(f"{task_name}#replay:public.a",)]
    assert rmq.dead_letters(task_name).height == 0


@pytest.mark.rabbitmq
def test_separate_producer_and_consumer_processes_into_mariadb(
    task_name: str, source_uri: str, tmp_path: Path, trempy_home: Path, maria: tuple[str, str, Any]
) -> None:
    """`trempy-nb run --role consumer` and `--role producer` as two processes, until caught up."""
    state, data, admin = maria
    sql(source_uri, T_SQL)
    d = mdoc(task_name, source_uri, state, data, rtype="cdc")
    Task.from_settings(d).run(progress=False)  # the slot and the target tables
    workload(source_uri)
    path = tmp_path / "task.json"
    path.write_text(json.dumps({**d, "task": {**d["task"], "start_mode": "continue"}}))
    env = {**os.environ, "TREMPY_HOME": str(trempy_home)}
    cmd = [sys.executable, "-m", "trempy_nb.cli", "run", str(path), "--until-caught-up", "-q", "--role"]
    cons = subprocess.Popen([*cmd, "consumer"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        prod = subprocess.run([*cmd, "producer"], env=env, capture_output=True, text=True, timeout=120)
        assert prod.returncode == 0, prod.stderr
        _out, err = cons.communicate(timeout=120)
    finally:
        if cons.poll() is None:
            cons.kill()
    assert cons.returncode == 0, err
    assert maria_rows(admin, data) == src_rows(source_uri)
