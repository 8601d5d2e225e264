"""Case 8: an idle captured database next to a busy one in the same cluster. The task's slot
sees no changes of its own, but the heartbeat it writes lets its position (and restart_lsn)
follow the WAL, so retained WAL stays bounded; a control slot nobody reads keeps growing.
(restart_lsn itself moves only at the running-xacts records PostgreSQL logs about every 15 s,
so the peak is about that much WAL; the figure at the end shows it does not accumulate.)"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import psycopg

from tests.faults.harness import OPTIONS, Sampler, fault_env, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

T = WTable("idle_t")


def test_c08_idle_db_next_to_busy(pair, long_run):
    seconds = 40 if long_run else 10
    with fault_env(pair, "idle") as env:
        wl = Workload(env.src, [T], seed=8)
        wl.create_tables()
        wl.seed(50)
        env.settings(tables=[T.key], mode="upsert", interval=0.2)
        env.extra_env = {"TREMPY_HEARTBEAT_S": "1"}
        control = f"control_{env.id}"
        q(env.src, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (control,))
        busy = pair.src.create_database(f"busy_{uuid.uuid4().hex[:8]}")
        q(busy, "CREATE TABLE b (id bigserial PRIMARY KEY, pad text)")
        r = env.start_runner("reload")
        env.wait_streaming()
        stop = threading.Event()

        def churn() -> None:
            with psycopg.connect(busy, autocommit=True, options=OPTIONS) as c:
                while not stop.is_set():
                    c.execute(
                        "INSERT INTO b (pad) SELECT repeat('x', 1000) FROM generate_series(1, 500)"
                    )
                    c.execute("DELETE FROM b WHERE id % 2 = 0")
                    stop.wait(0.1)

        th = threading.Thread(target=churn, daemon=True)
        start_lsn = env.flush_lsn()
        th.start()
        RESULTS.fault("busy neighbour database")
        with Sampler(env, idle_db=True) as sampler:
            time.sleep(seconds)
            stop.set()
            th.join(30)
            generated = env.flush_lsn() - start_lsn
            # restart_lsn moves at a running-xacts record (logged every ~15 s, and by checkpoints,
            # which a real server runs every checkpoint_timeout): a checkpoint, then heartbeats
            q(env.src, "CHECKPOINT")

            def retained() -> int:
                return int(
                    q(
                        env.src,
                        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint"
                        " FROM pg_replication_slots WHERE slot_name = %s",
                        (env.slot,),
                    )[0][0]
                )

            with contextlib.suppress(AssertionError):
                wait_until(lambda: retained() < generated * 0.5, 20, "the idle slot to move")
            mine = retained()
            ctrl = q(
                env.src,
                "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (control,),
            )[0][0]
        assert r.alive(), r.log()[-2000:]
        r.kill9("cleanup kill")
        RESULTS.faults["cleanup kill"] -= 1
        q(env.src, "SELECT pg_drop_replication_slot(%s)", (control,))
        RESULTS.notes.append(
            f"case 8: busy neighbour wrote {generated / 2**20:.0f} MiB of WAL in {seconds} s; the idle task's"
            f" slot retained {mine / 2**20:.1f} MiB at the end (peak {sampler.peak_retained / 2**20:.1f} MiB),"
            f" an unread control slot {ctrl / 2**20:.1f} MiB"
        )
        assert generated > 8 * 2**20, f"the busy database wrote only {generated} bytes"
        assert ctrl >= generated * 0.9
        assert mine < generated * 0.5, f"idle slot retains {mine} of {generated} bytes of WAL"
        sampler.assert_ok()
        wl.close()
