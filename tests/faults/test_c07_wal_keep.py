"""Case 7: the slot is invalidated by max_slot_wal_keep_size. A cluster of its own with a small
keep size; WAL is pushed forward by forced segment switches (cheap: each skips a whole 16 MB
segment of LSN space). While safe_wal_size shrinks below what the slot retains, the runner logs
a warning; once a checkpoint removes the WAL, `continue` stops with a classified SlotLost error
(exit 1, one line, asks for a reload), and a reload recovers."""

from __future__ import annotations

import sqlite3

import pytest

from tests.faults.checker import check
from tests.faults.harness import PgPair, ensure_up, fault_env, new_cluster, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

T = WTable("wk", filtered=True)


@pytest.fixture(scope="module")
def keep_cluster():
    c = new_cluster(max_slot_wal_keep_size="64MB", max_wal_size="32MB", min_wal_size="32MB")
    try:
        yield c
    finally:
        c.destroy()


def _push_wal(uri: str, segments: int) -> None:
    for _ in range(segments):
        q(uri, "INSERT INTO pushwal VALUES (1)")  # a table outside the task
        q(uri, "SELECT pg_switch_wal()")
    RESULTS.fault("forced WAL segment switch", segments)


def _warnings(env) -> list[str]:
    db = env.home / "metadata.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT message FROM logs WHERE level = 'WARNING'")]


def test_c07_slot_invalidated_by_wal_keep_size(pair, keep_cluster):
    ensure_up(keep_cluster)
    with fault_env(PgPair(keep_cluster, pair.tgt), "walkeep") as env:
        wl = Workload(env.src, [T], seed=7)
        wl.create_tables()
        wl.seed(100)
        q(env.src, "CREATE TABLE pushwal (x int)")
        env.settings(tables=[T.key], mode="upsert", filters=[T.filter_doc()])
        r = env.start_runner("reload")
        env.wait_streaming()
        r.kill9()
        # the runner is away; WAL piles up past max_wal_size, towards the keep size
        _push_wal(env.src, 3)
        wl.run(20)
        r = env.start_runner("continue")
        warned = wait_until(
            lambda: [w for w in _warnings(env) if "max_slot_wal_keep_size" in w],
            30,
            "a warning about the shrinking safe_wal_size",
        )
        RESULTS.classified("warning: " + warned[0])
        r.kill9()
        # now past the keep size: a checkpoint removes the WAL and invalidates the slot
        _push_wal(env.src, 6)
        wl.run(10)

        def lost() -> bool:
            q(env.src, "CHECKPOINT")
            row = env.slot_row()
            return bool(row and row[3] == "lost")

        wait_until(lost, 60, "the slot to be invalidated", interval=0.5)
        RESULTS.fault("slot invalidated by max_slot_wal_keep_size")
        r = env.start_runner("continue")
        rc = r.wait(60)
        log = r.log()
        assert rc == 1 and "Traceback" not in log, f"rc={rc}\n{log[-2000:]}"
        last = log.strip().splitlines()[-1]
        assert "invalidated" in last and "reload" in last, last
        RESULTS.classified(last)
        env.catch_up(start_mode="reload")
        wl.run(20)
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, [T], "upsert")
        wl.close()
