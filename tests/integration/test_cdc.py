"""Change data capture end to end on real PostgreSQL: every operation in both target modes, for
`cdc` and `full_load_and_cdc`, filters, key changes, unchanged TOAST, TRUNCATE, big transactions,
stop/start, crashes, handoff under load, slot loss, schema changes, the CLI and bad input.

Every test compares the WHOLE target with an expectation computed independently (see
tests/cdc_helpers.py): upsert targets against the source table; SCD2 targets against a ledger
of the source transactions with their exact commit times (this module runs its own cluster
with track_commit_timestamp=on, so version boundaries are compared for equality).
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
from pathlib import Path

import psycopg
import pytest

from tests.cdc_helpers import (
    Ledger,
    assert_scd2_suffix,
    assert_scd2_target,
    assert_upsert_target,
    drop_task,
    execute,
    expected_scd2,
    expected_upsert,
    ledger,
    publications,
    rows,
    run_cli,
    settings,
    slots,
    with_start_mode,
    write_settings,
)
from trempy_nb.embedded import Cluster, start_cluster
from trempy_nb.errors import RowError, SchemaChanged, SlotLost, ValidationFailed
from trempy_nb.task import Task

MODES = ["upsert", "scd2"]


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Cluster]:
    """This module's own cluster: track_commit_timestamp=on gives the ledger exact commit times."""
    cluster = start_cluster(conf={"track_commit_timestamp": "on"})
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "c" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def run(doc: dict, start_mode: str | None = None) -> None:
    if start_mode:
        doc = with_start_mode(doc, start_mode)
    Task.from_settings(doc).run(until_caught_up=True, progress=False)


T_SQL = "CREATE TABLE t (id int PRIMARY KEY, v int, s text)"


def _ops(led: Ledger, base: int) -> None:
    """Inserts, updates (also to equal values), deletes, several changes of a key in one
    transaction, delete + re-insert, multi-row statements."""
    b = base
    led.txn(f"INSERT INTO t VALUES ({b + 1}, 1, 'a'), ({b + 2}, 2, 'b'), ({b + 3}, 3, NULL)")
    led.txn(f"UPDATE t SET v = v + 10 WHERE id = {b + 1}")
    led.txn(f"UPDATE t SET s = s WHERE id = {b + 2}")  # same values: still a new version
    led.txn(f"DELETE FROM t WHERE id = {b + 3}")
    led.txn(
        f"INSERT INTO t VALUES ({b + 4}, 4, 'd')",
        f"UPDATE t SET s = 'dd' WHERE id = {b + 4}",
        f"UPDATE t SET v = 44 WHERE id = {b + 4}",
    )
    led.txn(f"INSERT INTO t VALUES ({b + 5}, 5, 'e')", f"DELETE FROM t WHERE id = {b + 5}")
    led.txn(f"DELETE FROM t WHERE id = {b + 2}", f"INSERT INTO t VALUES ({b + 2}, 22, 'b2')")
    led.txn(f"UPDATE t SET v = -v WHERE id BETWEEN {b + 1} AND {b + 4}")
    led.txn(f"INSERT INTO t SELECT i, i, 'x' || i FROM generate_series({b + 10}, {b + 60}) i")
    led.txn(f"UPDATE t SET s = NULL WHERE id % 3 = 0 AND id > {b + 9}")
    led.txn(f"DELETE FROM t WHERE id % 5 = 0 AND id > {b + 9}")
    led.txn(f"INSERT INTO t VALUES ({b + 3}, 33, 'back')")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rtype", ["cdc", "full_load_and_cdc"])
def test_every_operation(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str, rtype: str
) -> None:
    execute(source_uri, T_SQL)
    execute(
        source_uri, "INSERT INTO t SELECT i, i * 100, 'pre' || i FROM generate_series(1000, 1020) i"
    )
    doc = settings(task_name, source_uri, target_uri, rtype=rtype, mode=mode)
    run(doc)  # cdc: creates the slot (pre-existing rows are not captured); fl+cdc: loads them
    with ledger(source_uri) as led:
        if rtype == "cdc":
            led.initial = {}
        _ops(led, 0)
        led.txn("UPDATE t SET v = v + 1 WHERE id BETWEEN 1000 AND 1005")
        led.txn("DELETE FROM t WHERE id BETWEEN 1006 AND 1008")
        run(doc, "continue")
        _ops(led, 100)  # a second run continues from the checkpoint
        run(doc, "continue")
        if mode == "upsert":
            exp = expected_upsert(source_uri)
            if rtype == "cdc":  # untouched pre-existing rows were never captured
                touched = {k for ev in led.events for k in ev.changes}
                exp = {k: r for k, r in exp.items() if k in touched}
            assert_upsert_target(target_uri, "public.t", exp)
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=rtype != "cdc"))


def _upper_s(r: dict) -> dict:
    return {**r, "s": r["s"].upper() if r["s"] is not None else None}


def _in_filter(r: dict) -> bool:
    return r["v"] is not None and r["v"] > 50


@pytest.mark.parametrize("mode", MODES)
def test_filters_rows_move_in_and_out_and_deletes_under_a_non_key_filter(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, i, 'pre' || i FROM generate_series(1, 100) i")
    tb = {"schema_name": "public", "table_name": "t"}
    doc = settings(
        task_name,
        source_uri,
        target_uri,
        rtype="full_load_and_cdc",
        mode=mode,
        filters=[{**tb, "column_name": "v", "filter_type": "greater_than", "value": 50}],
        transformations=[
            {
                **tb,
                "priority": 0,
                "transformation_type": "modify_table_name",
                "contract": {"target_table_name": "t_f"},
            },
            {
                **tb,
                "priority": 1,
                "transformation_type": "modify_column_value",
                "contract": {"operation": "uppercase", "column_name": "s"},
            },
        ],
    )
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET v = 10 WHERE id IN (60, 61, 62)")  # out of the filter
        led.txn("UPDATE t SET v = 90 WHERE id IN (1, 2, 3)")  # into the filter
        led.txn("UPDATE t SET s = 'still in' WHERE id = 70")  # stays in
        led.txn("UPDATE t SET s = 'still out' WHERE id = 5")  # stays out: nothing on the target
        led.txn("DELETE FROM t WHERE id IN (80, 81)")  # delete of rows in the filter
        led.txn("DELETE FROM t WHERE id IN (6, 7)")  # delete of rows outside it
        led.txn(
            "UPDATE t SET v = 99 WHERE id = 60", "UPDATE t SET v = 0 WHERE id = 60"
        )  # in and out in one txn
        led.txn(
            "UPDATE t SET v = 0 WHERE id = 90", "UPDATE t SET v = 95 WHERE id = 90"
        )  # out and in in one txn
        led.txn("INSERT INTO t VALUES (200, 200, 'new in'), (201, 1, 'new out')")
        led.txn("UPDATE t SET v = NULL WHERE id = 95")  # NULL fails the filter
        led.txn("UPDATE t SET v = 51 WHERE id = 201", "DELETE FROM t WHERE id = 61")
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(
                target_uri,
                "public.t_f",
                expected_upsert(source_uri, pred=_in_filter, transform=_upper_s),
            )
        else:
            exp = expected_scd2(led, loaded=True, pred=_in_filter, transform=_upper_s)
            assert_scd2_target(target_uri, "public.t_f", exp)


def _in_group(r: dict) -> bool:
    """(v > 50 OR s starts with 'vip') AND id < 1000, computed here, not by the engine."""
    either = (r["v"] is not None and r["v"] > 50) or (r["s"] is not None and r["s"].startswith("vip"))
    return either and r["id"] < 1000


@pytest.mark.parametrize("mode", MODES)
def test_rows_move_in_and_out_across_an_or_group(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    """A row enters through one branch of the group, stays while any branch holds, and leaves
    (a delete on the target, a closed version in SCD2) only when no branch holds."""
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, i, 'pre' || i FROM generate_series(1, 100) i")
    tb = {"schema_name": "public", "table_name": "t"}
    doc = settings(
        task_name,
        source_uri,
        target_uri,
        rtype="full_load_and_cdc",
        mode=mode,
        filters=[
            {**tb, "column_name": "v", "filter_type": "greater_than", "value": 50, "or_group": "hot"},
            {**tb, "column_name": "id", "filter_type": "less_than", "value": 1000},
            {**tb, "column_name": "s", "filter_type": "starts_with", "value": "vip", "or_group": "hot"},
        ],
    )
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET s = 'vip5' WHERE id = 5")  # in through the second branch only
        led.txn("UPDATE t SET v = 90 WHERE id = 5")  # both branches hold
        led.txn("UPDATE t SET s = 'plain' WHERE id = 5")  # the first branch still holds: stays
        led.txn("UPDATE t SET v = 1 WHERE id = 5")  # no branch holds: out
        led.txn("UPDATE t SET v = 10 WHERE id = 70")  # in by v only: out
        led.txn("UPDATE t SET v = 10, s = 'vip71' WHERE id = 71")  # swaps branch: stays in
        led.txn("UPDATE t SET v = NULL, s = 'vip' WHERE id = 3")  # NULL branch, the other holds: in
        led.txn("UPDATE t SET s = NULL WHERE id = 4")  # stays out
        led.txn("UPDATE t SET s = 'vip8' WHERE id = 8", "UPDATE t SET s = 'x' WHERE id = 8")  # in and out
        led.txn("INSERT INTO t VALUES (300, 1, 'vip new'), (301, 1, 'x'), (2000, 99, 'vip big')")
        led.txn("DELETE FROM t WHERE id IN (71, 90)")  # deletes of rows in, by either branch
        run(doc, "continue")
        led.txn("UPDATE t SET s = 'vip again' WHERE id = 5")  # back in after a move-out
        led.txn("UPDATE t SET id = 1500 WHERE id = 300")  # leaves by the ANDed filter alone
        run(doc, "continue")
        if mode == "upsert":
            exp = expected_upsert(source_uri, pred=_in_group)
            assert {(3,), (5,)} <= set(exp) and not {(70,), (8,), (300,), (1500,), (2000,)} & set(exp)
            assert_upsert_target(target_uri, "public.t", exp)
        else:
            exp = expected_scd2(led, loaded=True, pred=_in_group)
            assert_scd2_target(target_uri, "public.t", exp)
            versions = rows(target_uri, "SELECT count(*), count(*) FILTER (WHERE scd_current) FROM public.t WHERE id = 5")
            assert versions == [(4, 1)]  # vip5, v=90, plain (closed at v=1), vip again (current)


@pytest.mark.parametrize("mode", MODES)
def test_primary_key_change(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, i, 's' || i FROM generate_series(1, 10) i")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode)
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET id = 100 WHERE id = 1")
        led.txn("UPDATE t SET id = id + 1000, v = -v WHERE id BETWEEN 2 AND 4")
        led.txn("UPDATE t SET id = 1 WHERE id = 100")  # back to a key that has history
        led.txn("UPDATE t SET id = 50 WHERE id = 5", "UPDATE t SET s = 'after move' WHERE id = 50")
        led.txn(
            "UPDATE t SET id = 6000 WHERE id = 6", "UPDATE t SET id = 6 WHERE id = 6000"
        )  # round trip in one txn
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=True))


@pytest.mark.parametrize("mode", MODES)
def test_unchanged_toast_default_identity(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    """A 1 MB value that an update does not touch is sent as 'unchanged': keep the real value."""
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int, big text)")
    execute(
        source_uri, "ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL"
    )  # toasted, uncompressed
    big = "SELECT string_agg(md5(g::text || {seed}), '') FROM generate_series(1, 32768) g"  # 1 MiB
    execute(source_uri, f"INSERT INTO t VALUES (1, 1, ({big.format(seed=1)})), (2, 2, 'small')")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode)
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET v = 10 WHERE id = 1")  # big unchanged, value only on the target
        run(doc, "continue")
        led.txn("UPDATE t SET v = 11 WHERE id = 1")
        led.txn("UPDATE t SET v = 12 WHERE id = 1", "UPDATE t SET v = 13 WHERE id = 1")
        led.txn(f"INSERT INTO t VALUES (3, 3, ({big.format(seed=3)}))")
        led.txn("UPDATE t SET v = 30 WHERE id = 3")  # unchanged TOAST of a row new in this batch
        led.txn("UPDATE t SET v = 20 WHERE id = 2")
        run(doc, "continue")
        assert len(led.events[0].changes[(1,)]["big"]) == 1 << 20
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=True))


@pytest.mark.parametrize("mode", MODES)
def test_truncate(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, i, 's' || i FROM generate_series(1, 20) i")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode)
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET v = 0 WHERE id <= 5")
        led.txn("TRUNCATE t")  # a truncate-only transaction
        led.txn("INSERT INTO t VALUES (1, 100, 'after'), (50, 50, 'after')")
        run(doc, "continue")
        led.txn(
            "INSERT INTO t VALUES (2, 2, 'x')", "TRUNCATE t", "INSERT INTO t VALUES (3, 3, 'y')"
        )
        led.txn("INSERT INTO t VALUES (4, 4, 'z')")
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=True))


@pytest.mark.parametrize("mode", MODES)
def test_unchanged_toast_across_a_key_change(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int, big text)")
    execute(source_uri, "ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL")
    execute(
        source_uri,
        "INSERT INTO t SELECT 1, 1, string_agg(md5(g::text), '') FROM generate_series(1, 32768) g",
    )
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode)
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET id = 2 WHERE id = 1")
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=True))


# -- volume, stop/start, crashes, handoff ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_200k_row_transaction(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri, mode=mode)
    run(doc)
    with ledger(source_uri) as led:
        led.initial = {}
        led.txn("INSERT INTO t SELECT i, i % 1000, md5(i::text) FROM generate_series(1, 200000) i")
        led.txn("UPDATE t SET v = -1 WHERE id <= 10")
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=False))


def _wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _target_count(tgt: str, table: str = "t") -> int:
    try:
        return int(rows(tgt, f"SELECT count(*) FROM public.{table}")[0][0])
    except psycopg.errors.UndefinedTable:
        return 0


@pytest.mark.parametrize("mode", MODES)
def test_interleaved_transactions_across_a_stop_and_start(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri, mode=mode)
    run(doc)
    with ledger(source_uri) as led:
        led.initial = {}
        runner = Task.from_settings(with_start_mode(doc, "continue")).start()
        a = led.begin(scope="id < 100")
        a.execute("INSERT INTO t SELECT i, i, 'a' FROM generate_series(1, 10) i")
        b = led.begin(scope="id >= 100")
        b.execute("INSERT INTO t SELECT i, i, 'b' FROM generate_series(100, 110) i")
        a.execute("UPDATE t SET s = 'a2' WHERE id <= 5")
        b.execute("UPDATE t SET s = 'b2' WHERE id >= 105")
        b.commit()  # b commits first although a began first
        _wait_for(lambda: _target_count(target_uri) >= 11)
        runner.stop()
        a.execute("DELETE FROM t WHERE id = 1")
        c = led.begin(scope="id >= 100")
        c.execute("UPDATE t SET v = -v WHERE id >= 100")
        a.commit()
        c.commit()
        led.txn("UPDATE t SET v = 0 WHERE id IN (2, 100)")
        runner = Task.from_settings(with_start_mode(doc, "continue")).start()
        runner.stop_when_caught_up(timeout=60)
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=False))


@pytest.mark.parametrize("crash_at", ["after_commit_before_advance", "after_advance"])
@pytest.mark.parametrize("mode", MODES)
def test_multi_row_insert_stopped_and_resumed_mid_apply(
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    task_name: str,
    mode: str,
    crash_at: str,
    tmp_path: Path,
) -> None:
    """The process dies between the target commit and the slot advance (or right after it):
    the resumed run replays the batch, which the checkpoint turns into a no-op."""
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri, mode=mode)
    run(doc)
    with ledger(source_uri) as led:
        led.initial = {}
        led.txn("INSERT INTO t SELECT i, i, 'first' FROM generate_series(1, 5000) i")
        led.txn("UPDATE t SET s = 'second' WHERE id % 2 = 0")
        led.txn("INSERT INTO t SELECT i, i, 'third' FROM generate_series(5001, 6000) i")
        path = write_settings(tmp_path / "t.json", with_start_mode(doc, "continue"))
        env = {
            "TREMPY_CRASH_AT": crash_at,
            "TREMPY_BATCH_CHANGES": "100",
            "TREMPY_HOME": str(trempy_home),
        }
        res = run_cli(["run", str(path), "--until-caught-up", "-q"], env=env)
        assert res.returncode == 97, res.stderr
        # died after the first transaction (5,000 rows) or the second (SCD2: 2,500 more versions),
        # never after the last (6,000 rows; SCD2 8,500 versions): the slot advances lazily
        assert _target_count(target_uri) in ((5000,) if mode == "upsert" else (5000, 7500))
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=False))


@pytest.mark.parametrize("mode", MODES)
def test_handoff_under_a_concurrent_writer(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    """Single-row transactions commit all through the full load: each row state is unique (a
    counter), so the target shows whether a change was lost or applied twice at the handoff."""
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, 0, md5(i::text) FROM generate_series(1, 30000) i")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode)
    stop = threading.Event()
    errors: list[BaseException] = []
    with ledger(source_uri) as led:

        def writer() -> None:
            rng = random.Random(7)
            n = 0
            try:
                while not stop.is_set() or n < 200:
                    n += 1
                    k = rng.randint(1, 300) if n % 10 else 30000 + n
                    if k > 30000:
                        led.txn(f"INSERT INTO t VALUES ({k}, {n}, 'new')", scope=f"id = {k}")
                    else:
                        led.txn(f"UPDATE t SET v = {n} WHERE id = {k}", scope=f"id = {k}")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        th = threading.Thread(target=writer)
        th.start()
        try:
            time.sleep(0.2)
            run(doc)  # full load + catch-up, while the writer commits
        finally:
            stop.set()
            th.join()
        assert not errors, errors
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            assert_scd2_suffix(target_uri, "public.t", led)


def test_continue_after_kill_9(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, tmp_path: Path
) -> None:
    """kill -9 of `trempy-nb run` while it streams; `continue` gives exact SCD2 chains."""
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri, mode="scd2")
    run(doc)
    path = write_settings(tmp_path / "t.json", with_start_mode(doc, "continue"))
    env = {**os.environ, "TREMPY_BATCH_CHANGES": "20", "TREMPY_HOME": str(trempy_home)}
    with ledger(source_uri) as led:
        led.initial = {}
        proc = subprocess.Popen(
            [sys.executable, "-m", "trempy_nb.cli", "run", str(path), "-q"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rng = random.Random(3)
            led.txn("INSERT INTO t SELECT i, 0, 'k' FROM generate_series(1, 40) i")
            for n in range(1, 301):
                k = rng.randint(1, 40)
                if n % 50 == 0:
                    led.txn(
                        f"DELETE FROM t WHERE id = {k}", f"INSERT INTO t VALUES ({k}, {n}, 'again')"
                    )
                else:
                    led.txn(
                        f"UPDATE t SET v = {n} WHERE id = {k}",
                        f"UPDATE t SET s = 's{n}' WHERE id = {(k % 40) + 1}",
                    )
                if n == 150:
                    _wait_for(lambda: _target_count(target_uri) > 50)
                    proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        run(doc, "continue")
        assert_scd2_target(target_uri, "public.t", expected_scd2(led, loaded=False))


# -- slots, schema changes -------------------------------------------------------------------


def test_slot_dropped_while_stopped_is_slot_lost(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri)
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'x')")
    run(doc, "continue")
    execute(source_uri, "SELECT pg_drop_replication_slot(%s)", (f"trempy_{task_name}",))
    execute(source_uri, "INSERT INTO t VALUES (2, 2, 'lost')")
    with pytest.raises(SlotLost, match="reload"):
        run(doc, "continue")
    assert slots(source_uri) == []  # no silent restart from "now"
    run(doc, "reload")  # what the message asks for works


def test_slot_dropped_and_recreated_is_slot_lost(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri)
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'x')")
    run(doc, "continue")
    execute(source_uri, "SELECT pg_drop_replication_slot(%s)", (f"trempy_{task_name}",))
    execute(source_uri, "INSERT INTO t VALUES (2, 2, 'lost')")
    execute(
        source_uri,
        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
        (f"trempy_{task_name}",),
    )
    execute(source_uri, "INSERT INTO t VALUES (3, 3, 'after')")
    with pytest.raises(SlotLost, match="recreated"):
        run(doc, "continue")
    assert rows(target_uri, "SELECT id FROM t ORDER BY id") == [(1,)]


@pytest.mark.parametrize("mode", MODES)
def test_added_column_flows(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode)
    with ledger(source_uri) as led:
        run(doc)
        led.txn("UPDATE t SET v = 10 WHERE id = 1")
        led.txn("ALTER TABLE t ADD COLUMN w numeric(6,2)")
        led.txn("INSERT INTO t VALUES (3, 3, 'c', 3.5)")
        led.txn("UPDATE t SET w = 2.25 WHERE id = 2")
        run(doc, "continue")
        led.txn("UPDATE t SET w = w + 1, v = 4 WHERE id = 3")
        run(doc, "continue")
        if mode == "upsert":
            assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
        else:
            exp = expected_scd2(led, loaded=True, transform=lambda r: {"w": None, **r})
            assert_scd2_target(target_uri, "public.t", exp)


def test_dropped_column_stops_with_schema_changed(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    """A running task sees the Relation message of the new shape and stops before applying it."""
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri)
    run(doc)
    runner = Task.from_settings(with_start_mode(doc, "continue")).start()
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a')")
    _wait_for(lambda: _target_count(target_uri) == 1)
    execute(source_uri, "ALTER TABLE t DROP COLUMN s")
    execute(source_uri, "INSERT INTO t VALUES (2, 2)")
    with pytest.raises(SchemaChanged, match="column.s. s of public.t were dropped"):
        runner.wait(timeout=30)
    assert runner.status == "failed"
    assert rows(target_uri, "SELECT id, v, s FROM t") == [(1, 1, "a")]  # nothing of the new shape


def test_dropped_column_while_stopped_stops_with_schema_changed(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri)
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a')")
    run(doc, "continue")
    execute(source_uri, "ALTER TABLE t DROP COLUMN s")
    execute(source_uri, "INSERT INTO t VALUES (2, 2)")
    with pytest.raises(SchemaChanged, match="dropped or renamed"):
        run(doc, "continue")
    assert _target_count(target_uri) == 1  # nothing of the new shape was applied


def test_retyped_column_while_stopped_stops_with_schema_changed(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, T_SQL)
    doc = settings(task_name, source_uri, target_uri, mode="scd2")
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a')")
    run(doc, "continue")
    execute(source_uri, "ALTER TABLE t ALTER COLUMN v TYPE text")
    execute(source_uri, "INSERT INTO t VALUES (2, '2', 'b')")
    with pytest.raises(SchemaChanged, match="changed type"):
        run(doc, "continue")
    # a column added while stopped is not a problem: it is added to the target on `continue`
    run(doc, "reload")  # cdc only: streams from now (row 2 stays behind)
    execute(source_uri, "ALTER TABLE t ADD COLUMN extra int")
    execute(source_uri, "INSERT INTO t VALUES (3, '3', 'c', 3)")
    run(doc, "continue")
    assert rows(target_uri, "SELECT id, extra FROM public.t ORDER BY id") == [(1, None), (3, 3)]


# -- CLI, preview, drop ------------------------------------------------------------------------


def test_cli_until_caught_up_and_drop(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, tmp_path: Path
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a')")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc")
    path = write_settings(tmp_path / "t.json", doc)
    env = {"TREMPY_HOME": str(trempy_home)}
    res = run_cli(["run", str(path), "--until-caught-up", "-q"], env=env)
    assert res.returncode == 0, res.stderr
    execute(source_uri, "INSERT INTO t SELECT i, i, 'cli' FROM generate_series(2, 500) i")
    execute(source_uri, "UPDATE t SET s = 'u' WHERE id < 10")
    execute(source_uri, "DELETE FROM t WHERE id BETWEEN 20 AND 29")
    res = run_cli(
        ["run", str(path), "--until-caught-up", "--start-mode", "continue", "-q"], env=env
    )
    assert res.returncode == 0, res.stderr
    assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
    # nothing left to catch up: the run sees only its beacon, and never loads the row framing
    idle = subprocess.run(
        [sys.executable, "-c", "import sys; from trempy_nb.cli import main; code = main(sys.argv[1:]);"
         " print(sorted({'numpy', 'pyarrow'} & set(sys.modules))); sys.exit(code)",
         "run", str(path), "--until-caught-up", "-q"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert idle.returncode == 0 and idle.stdout.strip().endswith("[]"), idle.stdout + idle.stderr
    assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri))
    assert slots(source_uri) == [f"trempy_{task_name}"] and publications(source_uri) == [
        f"trempy_{task_name}"
    ]
    res = run_cli(["drop", str(path)], env=env)
    assert res.returncode == 0, res.stderr
    assert slots(source_uri) == [] and publications(source_uri) == []


def test_preview_changes_does_not_consume(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, T_SQL)
    tb = {"schema_name": "public", "table_name": "t"}
    doc = settings(
        task_name,
        source_uri,
        target_uri,
        transformations=[
            {
                **tb,
                "priority": 1,
                "transformation_type": "modify_column_value",
                "contract": {"operation": "uppercase", "column_name": "s"},
            }
        ],
    )
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')")
    execute(source_uri, "UPDATE t SET v = 5 WHERE id = 1")
    execute(source_uri, "DELETE FROM t WHERE id = 2")
    task = Task.from_settings(with_start_mode(doc, "continue"))
    before = rows(source_uri, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
    frame = task.preview_changes(limit=10)
    assert frame.get_column("op").to_list() == ["I", "I", "U", "D"]
    assert frame.get_column("s").to_list()[:3] == ["A", "B", "A"]
    assert task.preview_changes(limit=10).equals(frame)
    assert rows(source_uri, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots") == before
    run(doc, "continue")
    assert_upsert_target(target_uri, "public.t", expected_upsert(source_uri, transform=_upper_s))


# -- bad input -------------------------------------------------------------------------------


def test_source_without_logical_wal_is_refused_before_any_slot(
    target_uri: str, trempy_home: Path
) -> None:
    cluster = start_cluster(conf={"wal_level": "replica"})
    try:
        src = cluster.create_database("src_replica")
        execute(src, T_SQL)
        doc = settings("c_replica", src, target_uri)
        with pytest.raises(ValidationFailed, match="wal_level is 'replica'"):
            Task.from_settings(doc).validate()
        with pytest.raises(ValidationFailed, match="wal_level"):
            run(doc)
        assert slots(src) == [] and publications(src) == []
    finally:
        cluster.destroy()


def test_table_without_key_is_refused_at_validation(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, "CREATE TABLE nk (id int, v int)")
    doc = settings(task_name, source_uri, target_uri, tables=[("public", "nk")])
    with pytest.raises(ValidationFailed, match="public.nk"):
        run(doc)
    assert slots(source_uri) == [] and publications(source_uri) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stop", [True, False])
def test_target_check_violation_per_error_handling(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str, stop: bool
) -> None:
    execute(source_uri, T_SQL)
    scd = (
        ", scd_start_date timestamptz, scd_end_date timestamptz, scd_current boolean"
        if mode == "scd2"
        else ""
    )
    pk = "" if mode == "scd2" else " PRIMARY KEY"
    execute(target_uri, f"CREATE TABLE t (id int{pk}, v int CHECK (v >= 0), s text{scd})")
    flags = {
        "stop_if_upsert_error": stop,
        "stop_if_scd2_error": stop,
        "stop_if_insert_error": stop,
        "stop_if_update_error": stop,
    }
    doc = settings(task_name, source_uri, target_uri, mode=mode, error_handling=flags)
    run(doc)
    execute(source_uri, "INSERT INTO t VALUES (1, 1, 'ok'), (2, -2, 'bad'), (3, 3, 'ok')")
    task = Task.from_settings(with_start_mode(doc, "continue"))
    if stop:
        with pytest.raises(RowError, match="key {'id': '2'}|2"):
            task.run(progress=False)
        assert _target_count(target_uri) == 0  # the batch rolled back, checkpoint not moved
        with pytest.raises(RowError):  # still stops: the bad change is not skipped silently
            task.run(progress=False)
        execute(target_uri, "ALTER TABLE t DROP CONSTRAINT t_v_check")  # the user fixes the target
        task.run(progress=False)
        assert rows(target_uri, "SELECT id, v FROM t ORDER BY id") == [(1, 1), (2, -2), (3, 3)]
    else:
        task.run(progress=False)
        assert rows(target_uri, "SELECT id FROM t ORDER BY id") == [(1,), (3,)]
        errs = task.errors()
        assert errs.height == 1 and "check constraint" in errs.get_column("error")[0]
        assert '"2"' in errs.get_column("payload")[0] or "2" in errs.get_column("payload")[0]
