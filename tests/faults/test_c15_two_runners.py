"""Case 15: two runners for one task (two OS processes): the second refuses with a clear error
(the task's advisory lock on the source), and there are never two readers on the slot."""

from __future__ import annotations

import threading

from tests.faults.checker import check
from tests.faults.harness import fault_env, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

T = WTable("da", filtered=True)


def _readers(env) -> int:
    """Replication streams of the task's readers open on the source (each holds the slot)."""
    return int(
        q(
            env.src,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND backend_type = 'walsender'",
            (f"trempy_nb:{env.task}:capture",),
        )[0][0]
    )


def test_c15_second_runner_refuses(pair):
    with fault_env(pair, "two") as env:
        wl = Workload(env.src, [T], seed=15)
        wl.create_tables()
        wl.seed(200)
        env.settings(tables=[T.key], mode="upsert", filters=[T.filter_doc()])
        # both started at once from scratch (reload): exactly one wins
        a, b = env.start_runner("reload"), env.start_runner("reload")
        RESULTS.fault("second runner for one task", 1)
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], _readers(env))
                except Exception:  # noqa: S110 - sampling only
                    pass
                stop.wait(0.05)

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        env.wait_streaming()
        loser = wait_until(
            lambda: next((p for p in (a, b) if not p.alive()), None), 60, "one runner to refuse"
        )
        winner = b if loser is a else a
        assert winner.alive(), winner.log()[-2000:]
        log = loser.log()
        assert loser.proc.returncode == 1 and "already running" in log and "Traceback" not in log, (
            log[-2000:]
        )
        RESULTS.classified(log.strip().splitlines()[-1])
        wl.start(rate=40)
        # a second runner while the first streams, with either start mode
        for mode in ("continue", "reload"):
            c = env.start_runner(mode)
            RESULTS.fault("second runner for one task")
            rc = c.wait(60)
            log = c.log()
            assert rc == 1 and "already running" in log and "Traceback" not in log, log[-2000:]
            assert winner.alive()
        wl.stop()
        stop.set()
        th.join(5)
        assert peak[0] <= 1, f"{peak[0]} readers on one slot"
        winner.kill9()
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, [T], "upsert")
        wl.close()
