"""Case 4: pg_terminate_backend of the slot's reader (and of the apply session), repeatedly, while
the workload writes: the runner reconnects by itself and the target ends equal to the ledger."""

from __future__ import annotations

import random
import time

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env, q
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("ta", filtered=True), WTable("tb")]


def _terminate(env, suffix: str) -> int:
    rows = q(
        env.src if suffix == "capture" else env.tgt,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (f"trempy_nb:{env.task}:{suffix}",),
    )
    return sum(1 for r in rows if r[0])


def test_c04_terminate_reader_repeatedly(pair, long_run):
    rounds = 40 if long_run else 12
    rng = random.Random(4)
    with fault_env(pair, "term") as env:
        wl = Workload(env.src, TABLES, seed=11)
        wl.create_tables()
        wl.seed(200)
        env.settings(
            tables=[t.key for t in TABLES],
            mode="scd2",
            filters=[TABLES[0].filter_doc()],
            interval=0.1,
        )
        lo = wl.ledger.mark()
        r = env.start_runner("reload")
        env.wait_streaming()
        hi = wl.ledger.mark()
        wl.start(rate=40)
        hits = 0
        with Sampler(env) as sampler:
            for i in range(rounds):
                time.sleep(rng.uniform(0.2, 0.8))
                n = _terminate(env, "capture" if i % 3 else "apply")
                hits += n
                RESULTS.fault("pg_terminate_backend " + ("reader" if i % 3 else "applier"), n)
                assert r.alive(), f"runner died after a terminated backend:\n{r.log()[-3000:]}"
            mark = env.flush_lsn()
            RESULTS.recovery(env.wait_confirmed_past(mark, 60, r))
            wl.stop()
        assert hits >= rounds // 2, f"only {hits} backends terminated"
        assert r.alive(), r.log()[-3000:]
        r.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, "scd2", (lo, hi))
        sampler.assert_ok()
        wl.close()
