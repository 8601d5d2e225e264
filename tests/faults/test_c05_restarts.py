"""Case 5: the source restarts (pg_ctl restart -m fast / -m immediate) during the snapshot and
during streaming, and the target crashes (-m immediate) in the middle of a large apply.

Expected: the runner either rides it out (transient errors retried with backoff) or stops with
a one-line classified error (no traceback); a restarted runner then finishes, and the target
equals the ledger. Commits of the workload that raised during the restart are indeterminate and
resolved with pg_xact_status.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.checker import check
from tests.faults.harness import Sampler, ensure_up, fault_env, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("ra", filtered=True), WTable("rb")]


def _assert_classified(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert "trempy-nb: error:" in log, log[-3000:]
    RESULTS.classified(log.strip().splitlines()[-1])


def _copy_running(env) -> bool:
    """The applier is inside its batch: its COPY into staging, or any statement after it."""
    rows = q(
        env.tgt,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'active' AND (query ILIKE 'COPY%%' OR application_name LIKE 'trempy_nb:%%:apply%%')",
    )
    return bool(rows[0][0])


def _restart(cluster, mode: str) -> None:
    cluster.pg_ctl("restart", "-m", mode)
    ensure_up(cluster)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_c05_source_restart_during_snapshot_and_stream(pair, mode):
    with fault_env(pair, f"rs{mode}") as env:
        wl = Workload(env.src, TABLES, seed=5)
        wl.create_tables()
        wl.bulk_seed(TABLES[0], 150_000)
        wl.seed(100)
        env.settings(
            tables=[t.key for t in TABLES], mode="upsert", filters=[TABLES[0].filter_doc()]
        )
        wl.start(rate=30)
        # during the snapshot
        r = env.start_runner("reload")
        wait_until(lambda: _copy_running(env) or not r.alive(), 60, "the full load's COPY")
        _restart(pair.src, mode)
        RESULTS.fault(f"source restart -m {mode} during snapshot")
        t0 = time.monotonic()
        wait_until(
            lambda: not r.alive() or env.checkpoint() is not None,
            90,
            "the runner to stop or to finish the full load after the restart",
        )
        if not r.alive():
            _assert_classified(r.log())
            r = env.start_runner("continue")
            env.wait_streaming(120)
        RESULTS.recovery(time.monotonic() - t0)
        # during streaming
        with Sampler(env) as sampler:
            for _ in range(2):
                time.sleep(1.0)
                _restart(pair.src, mode)
                RESULTS.fault(f"source restart -m {mode} during streaming")
                t0 = time.monotonic()
                mark = env.flush_lsn()
                # while streaming, a restart is a transient error: the runner rides it out
                env.wait_confirmed_past(mark, 90, r)
                RESULTS.recovery(time.monotonic() - t0)
            wl.stop()
        r.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, "upsert")
        sampler.assert_ok()
        wl.close()


def test_c05_target_crash_mid_apply(pair):
    with fault_env(pair, "tcrash") as env:
        wl = Workload(env.src, TABLES, seed=6)
        wl.create_tables()
        wl.seed(300)
        env.settings(tables=[t.key for t in TABLES], mode="scd2", filters=[TABLES[0].filter_doc()])
        lo = wl.ledger.mark()
        r = env.start_runner("reload", extra_env={"TREMPY_BATCH_CHANGES": "200000"})
        env.wait_streaming()
        hi = wl.ledger.mark()
        wl.bulk_txn(TABLES[1], 150_000)  # one large transaction, applied as one batch
        mark = env.flush_lsn()
        try:
            wait_until(
                lambda: _copy_running(env) or not r.alive(), 120, "the apply's COPY on the target"
            )
        except AssertionError as exc:  # say what the runner was doing instead
            raise AssertionError(f"{exc}; runner log:\n{r.log()[-3000:]}") from None
        pair.tgt.stop("immediate")
        RESULTS.fault("target crash -m immediate mid-apply")
        t0 = time.monotonic()
        time.sleep(0.5)
        pair.tgt.start()
        ensure_up(pair.tgt)
        env.wait_confirmed_past(mark, 120, r)  # the runner retries the batch by itself
        RESULTS.recovery(time.monotonic() - t0)
        wl.run(50)
        r.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, "scd2", (lo, hi))
        wl.close()
