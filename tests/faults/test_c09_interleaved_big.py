"""Case 9: interleaved transactions across a runner restart; a 100k-row multi-row INSERT and a
50k-row COPY, each killed (kill -9) while the target applies it."""

from __future__ import annotations

import time

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("ia", filtered=True), WTable("ib")]


def _applying(env) -> bool:
    """The runner's apply session is running a statement (staging COPY or the merge)."""
    rows = q(
        env.tgt,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
        (f"trempy_nb:{env.task}:apply",),
    )
    return bool(rows[0][0])


def test_c09_interleaved_across_restart(pair):
    with fault_env(pair, "inter") as env:
        wl = Workload(env.src, TABLES, seed=9)
        wl.create_tables()
        wl.seed(200)
        env.settings(tables=[t.key for t in TABLES], mode="scd2", filters=[TABLES[0].filter_doc()])
        lo = wl.ledger.mark()
        r = env.start_runner("reload")
        env.wait_streaming()
        hi = wl.ledger.mark()
        with Sampler(env) as sampler:
            a = wl.begin(TABLES[0]).more(3)
            b = wl.begin(TABLES[1]).more(3)
            doomed = wl.begin(TABLES[1]).more(4)
            a.more(2)
            wl.run(5)
            time.sleep(0.5)
            r.kill9()
            b.more(2)
            b.commit()  # began before the kill, committed while no runner runs
            wl.run(5)
            r = env.start_runner()
            a.more(2)
            c = wl.begin(TABLES[1]).more(2)
            time.sleep(0.5)
            r.kill9()
            doomed.more(3)
            doomed.rollback()  # must never reach the target
            a.commit()
            r = env.start_runner()
            c.more(1)
            c.commit()
            wl.run(10)
            mark = env.flush_lsn()
            env.wait_confirmed_past(mark, 60, r)
            r.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, "scd2", (lo, hi))
        sampler.assert_ok()
        wl.close()


def test_c09_big_insert_and_copy_killed_mid_apply(pair):
    with fault_env(pair, "bigkill") as env:
        wl = Workload(env.src, TABLES, seed=10)
        wl.create_tables()
        wl.seed(100)
        env.settings(
            tables=[t.key for t in TABLES], mode="upsert", filters=[TABLES[0].filter_doc()]
        )
        big = {"TREMPY_BATCH_CHANGES": "500000"}
        r = env.start_runner("reload", extra_env=big)
        env.wait_streaming()
        with Sampler(env) as sampler:
            for what in ("insert", "copy"):
                if what == "insert":
                    wl.bulk_txn(TABLES[1], 100_000)
                else:
                    wl.copy_txn(TABLES[0], 50_000)
                mark = env.flush_lsn()
                wait_until(
                    lambda rr=r: _applying(env) or not rr.alive(),
                    60,
                    "the apply on the target",
                    0.02,
                )
                r.kill9(f"kill -9 runner while applying a big {what}")
                assert (env.checkpoint() or (0, 0))[0] < mark, (
                    "killed too late: the batch was already applied"
                )
                t0 = time.monotonic()
                r = env.start_runner(extra_env=big)
                env.wait_confirmed_past(mark, 120, r)
                RESULTS.recovery(time.monotonic() - t0)
            wl.run(20)
            r.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, "upsert")
        sampler.assert_ok()
        wl.close()
