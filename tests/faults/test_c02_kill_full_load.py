"""Case 2: kill -9 during the full load (early, middle, late), with writes going on.

Early/middle/late are hit deterministically by the runner's named crash points (the process
exits with os._exit, like kill -9), and once by a real SIGKILL while the target shows the load's
COPY running. The restart must see the incomplete load (no checkpoint), drop the half-made slot,
redo the load cleanly in a new snapshot, and leave exactly one slot.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("fa", filtered=True), WTable("fb"), WTable("fc")]

CASES = [
    ("full_load_start", "upsert"),  # early: slot + snapshot made, nothing loaded
    ("full_load_middle", "scd2"),  # middle: rows written, the table's transaction open
    ("full_load_after_table", "upsert"),  # late: one table committed, another maybe not
    ("full_load_before_checkpoint", "scd2"),  # late: every table committed, no checkpoint yet
    ("sigkill", "upsert"),  # a real kill -9 while the COPY runs
]


def _copy_running(env) -> bool:
    """The load's COPY into the big filtered table runs on the target (not a CDC staging COPY)."""
    rows = q(
        env.tgt,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'active' AND query ILIKE 'COPY%%fa%%FROM STDIN%%'"
        " AND query NOT ILIKE '%%stag%%'",
    )
    return bool(rows[0][0])


@pytest.mark.parametrize(("point", "mode"), CASES, ids=[c[0] for c in CASES])
def test_c02_kill_during_full_load(pair, point, mode):
    with fault_env(pair, f"fl{mode}") as env:
        wl = Workload(env.src, TABLES, seed=len(point))
        wl.create_tables()
        # sigkill: big enough that the load's COPY runs for a good fraction of a second
        wl.bulk_seed(TABLES[0], 250_000 if point == "sigkill" else 3000)
        wl.bulk_seed(TABLES[1], 2000)
        wl.seed(200)
        env.settings(tables=[t.key for t in TABLES], mode=mode, filters=[TABLES[0].filter_doc()])
        wl.start(rate=30)
        if point == "sigkill":
            r = env.start_runner("reload")
            wait_until(
                lambda: _copy_running(env) or not r.alive(), 60, "the full load's COPY", 0.01
            )
            assert r.alive(), r.log()
            r.kill9("kill -9 runner during full load")
        else:
            r = env.start_runner("reload", extra_env={"TREMPY_CRASH_AT": point})
            rc = r.wait(120)
            assert rc == 97, (
                f"expected the crash point {point} to fire (rc 97), got {rc}:\n{r.log()}"
            )
            RESULTS.fault(f"crash point {point}")
        assert env.checkpoint() is None, "a crashed full load must not leave a checkpoint"
        lo = wl.ledger.mark()
        t0 = time.monotonic()
        r = env.start_runner("continue")
        with Sampler(env) as sampler:
            env.wait_streaming(120)
            hi = wl.ledger.mark()
            RESULTS.recovery(time.monotonic() - t0)
            slots = q(
                env.src,
                "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()",
            )
            assert [s[0] for s in slots] == [env.slot], f"orphan or missing slot: {slots}"
            time.sleep(1.0)
            wl.stop()
            r.kill9("kill -9 runner during CDC")
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, mode, (lo, hi))
        sampler.assert_ok()
        loads = q(
            env.tgt,
            "SELECT table_name, status FROM trempy.load_state WHERE task = %s ORDER BY 1",
            (env.task,),
        )
        assert loads == [(t.name, "done") for t in TABLES], loads
        wl.close()
