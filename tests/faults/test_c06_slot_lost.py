"""Case 6: the slot is dropped, or dropped and recreated, while the runner is stopped.

`continue` must fail loudly (exit code 1, a one-line SlotLost message asking for a reload, no
traceback), change nothing on the target, and leave no slot behind; `reload` then recovers.
"""

from __future__ import annotations

import pytest

from tests.faults.checker import check
from tests.faults.harness import fault_env, q
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

T = WTable("sa", filtered=True)


@pytest.mark.parametrize("how", ["dropped", "recreated"])
def test_c06_slot_lost_while_stopped(pair, how):
    with fault_env(pair, f"sl{how}") as env:
        wl = Workload(env.src, [T], seed=8)
        wl.create_tables()
        wl.seed(200)
        env.settings(tables=[T.key], mode="upsert", filters=[T.filter_doc()])
        env.catch_up(start_mode="reload")
        wl.run(50)
        env.catch_up()
        wl.run(50)  # changes the stopped runner has not seen: lost with the slot
        q(env.src, "SELECT pg_drop_replication_slot(%s)", (env.slot,))
        if how == "recreated":
            wl.run(20)
            q(env.src, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (env.slot,))
            wl.run(20)
        RESULTS.fault(f"slot {how} while stopped")
        before = q(env.tgt, "SELECT lsn FROM trempy.checkpoints WHERE task = %s", (env.task,))
        r = env.start_runner("continue")
        rc = r.wait(60)
        log = r.log()
        assert rc == 1, f"continue after a lost slot must fail (rc 1), got {rc}:\n{log[-2000:]}"
        assert "Traceback" not in log, log[-3000:]
        last = log.strip().splitlines()[-1]
        assert "reload" in last and "slot" in last, last
        assert ("missing" in last) if how == "dropped" else ("recreated" in last), last
        RESULTS.classified(last)
        after = q(env.tgt, "SELECT lsn FROM trempy.checkpoints WHERE task = %s", (env.task,))
        assert before == after, "a refused continue must not touch the target"
        slots = q(
            env.src,
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()",
        )
        assert len(slots) == (1 if how == "recreated" else 0), slots
        # the remedy the message names works
        env.catch_up(start_mode="reload")
        wl.run(30)
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, [T], "upsert")
        wl.close()
