"""Case 1 (local transport): kill -9 of the runner during CDC, repeated, under a live workload.

Recovery time = from the restart of the runner until the slot passes the WAL position the
source had flushed when the runner was killed (everything committed before the kill applied).
"""

from __future__ import annotations

import random
import time

import pytest

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("wa", filtered=True), WTable("wb")]


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_c01_kill9_during_cdc_local(pair, long_run, mode):
    kills = 40 if long_run else 6  # x2 modes: 12 kill -9 in CI
    rng = random.Random(f"c01{mode}")
    with fault_env(pair, f"k{mode}") as env:
        wl = Workload(env.src, TABLES, seed=hash(mode) & 0xFFFF)
        wl.create_tables()
        wl.seed(300)
        env.settings(tables=[t.key for t in TABLES], mode=mode, filters=[TABLES[0].filter_doc()])
        lo = wl.ledger.mark()
        runner = env.start_runner("reload")
        env.wait_streaming()
        hi = wl.ledger.mark()
        wl.start(rate=40)
        with Sampler(env) as sampler:
            for _ in range(kills):
                time.sleep(rng.uniform(0.1, 1.2))
                mark = env.flush_lsn()
                runner.kill9()
                runner = env.start_runner()
                RESULTS.recovery(env.wait_confirmed_past(mark, 60, runner))
            wl.stop()
            time.sleep(0.5)
            runner.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, mode, (lo, hi))
        sampler.assert_ok()
        wl.close()
