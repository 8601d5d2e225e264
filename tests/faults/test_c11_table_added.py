"""Case 11: a table is added to the task while writes are in flight (on it and on the task's
other table). The runner is restarted with the new settings and `continue`: the new table must
end equal to the source (its existing rows loaded, its changes streamed, none twice), or the
start must be refused with a classified error; the old table keeps streaming without loss."""

from __future__ import annotations

import time

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

A, B = WTable("aa", filtered=True), WTable("ab")


def test_c11_table_added_while_writing(pair):
    with fault_env(pair, "addt") as env:
        wl = Workload(env.src, [A, B], seed=111)
        wl.create_tables()
        wl.seed(200)
        env.settings(tables=[A.key], mode="upsert", filters=[A.filter_doc()])
        r = env.start_runner("reload")
        env.wait_streaming()
        wl.start(rate=40)
        time.sleep(1.0)
        doc = env.doc
        doc["tables"].append({"schema_name": "public", "table_name": "ab"})
        env.write(doc)
        r.kill9("kill -9 runner to add a table")
        RESULTS.fault("table added while writing")
        with Sampler(env) as sampler:
            r = env.start_runner("continue")
            mark = env.flush_lsn()
            wait_until(
                lambda: not r.alive() or env.confirmed() >= mark,
                60,
                "the runner to refuse or resume",
            )
            if not r.alive():
                log = r.log()
                assert r.proc.returncode in (1, 2) and "Traceback" not in log and "ab" in log, log[
                    -2000:
                ]
                RESULTS.classified(log.strip().splitlines()[-1])
                wl.stop()
                env.catch_up(start_mode="reload")  # the remedy the message names
                check(env.src, env.tgt, wl.ledger, [A, B], "upsert")
                return
            time.sleep(1.0)
            wl.stop()
            mark = env.flush_lsn()
            env.wait_confirmed_past(mark, 60, r)
            r.kill9("cleanup kill")
            RESULTS.faults["cleanup kill"] -= 1
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, [A, B], "upsert")
        sampler.assert_ok()
        wl.close()
