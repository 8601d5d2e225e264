"""Case 3 (local transport): hard exits at each step of the apply/confirm sequence.

TREMPY_CRASH_AT makes the runner os._exit(97) right after the target committed a batch and
before the slot advanced (the batch is replayed and the checkpoint makes it a no-op), and right
after the advance (nothing is replayed). The RabbitMQ points are in test_c14_rabbitmq.py.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("ca", filtered=True), WTable("cb")]
POINTS = [("after_commit_before_advance", "scd2"), ("after_advance", "upsert")]


@pytest.mark.parametrize(("point", "mode"), POINTS, ids=[p[0] for p in POINTS])
def test_c03_crash_points_local(pair, long_run, point, mode):
    rounds = 12 if long_run else 3
    with fault_env(pair, f"cp{mode}") as env:
        wl = Workload(env.src, TABLES, seed=7)
        wl.create_tables()
        wl.seed(200)
        env.settings(tables=[t.key for t in TABLES], mode=mode, filters=[TABLES[0].filter_doc()])
        lo = wl.ledger.mark()
        r = env.start_runner("reload")
        env.wait_streaming()
        hi = wl.ledger.mark()
        r.kill9()
        wl.start(rate=40)
        with Sampler(env) as sampler:
            for _ in range(rounds):
                time.sleep(0.3)
                r = env.start_runner(extra_env={"TREMPY_CRASH_AT": point})
                rc = r.wait(60)
                assert rc == 97, f"crash point {point} did not fire (rc {rc}):\n{r.log()[-2000:]}"
                RESULTS.fault(f"crash point {point}")
                mark = env.flush_lsn()
                t0 = time.monotonic()
                r = env.start_runner()
                env.wait_confirmed_past(mark, 60, r)
                RESULTS.recovery(time.monotonic() - t0)
                r.kill9()
            wl.stop()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, mode, (lo, hi))
        sampler.assert_ok()
        wl.close()
