"""Case 10: a transaction far over logical_decoding_work_mem (decoding spills to disk), savepoints
rolled back inside committed transactions, whole transactions rolled back (one of them large):
nothing aborted reaches the target, and the runner's memory stays bounded (peak RSS reported)."""

from __future__ import annotations

from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env, q
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("la", filtered=True), WTable("lb")]
RSS_LIMIT = 1536 * 1024 * 1024


def test_c10_large_and_aborted_transactions(pair):
    with fault_env(pair, "large") as env:
        q(
            env.src,
            "ALTER DATABASE "
            + env.src.rsplit("/", 1)[1]
            + " SET logical_decoding_work_mem = '64kB'",
        )
        wl = Workload(env.src, TABLES, seed=12)
        wl.create_tables()
        wl.seed(200)
        env.settings(tables=[t.key for t in TABLES], mode="scd2", filters=[TABLES[0].filter_doc()])
        lo = wl.ledger.mark()
        r = env.start_runner("reload", extra_env={"TREMPY_BATCH_CHANGES": "2000"})
        env.wait_streaming()
        hi = wl.ledger.mark()
        with Sampler(env) as sampler:
            # savepoints rolled back inside transactions that commit
            for i in range(5):
                t = wl.begin(TABLES[i % 2]).more(3)
                t.savepoint()
                t.more(4)
                t.rollback_to_savepoint()
                t.more(2)
                t.commit()
            # whole transactions rolled back, a small one and a large one (spilled by decoding)
            wl.begin(TABLES[0]).more(6).rollback()
            with env_conn(env) as c:
                c.execute(
                    "INSERT INTO lb SELECT i, 1, i, 'aborted', 0, NULL FROM generate_series(900000001, 900060000) i"
                )
                c.rollback()
            wl.ledger.aborted += 1
            RESULTS.txns_aborted_on_purpose += 7
            # a large committed transaction: 120k rows, far over 64kB of decoding memory
            wl.bulk_txn(TABLES[1], 120_000)
            wl.run(30)
            mark = env.flush_lsn()
            env.wait_confirmed_past(mark, 120, r)
            r.kill9("cleanup kill")
            RESULTS.faults["cleanup kill"] -= 1
        assert r.peak_rss < RSS_LIMIT, f"runner RSS {r.peak_rss / 2**20:.0f} MiB over the limit"
        RESULTS.notes.append(
            f"case 10: runner peak RSS {r.peak_rss / 2**20:.0f} MiB while applying a"
            " 120k-row transaction decoded with logical_decoding_work_mem=64kB"
        )
        assert not q(env.tgt, "SELECT 1 FROM lb WHERE s = 'aborted' LIMIT 1"), (
            "an aborted row reached the target"
        )
        env.catch_up()
        check(env.src, env.tgt, wl.ledger, TABLES, "scd2", (lo, hi))
        sampler.assert_ok()
        wl.close()


def env_conn(env):
    import psycopg

    from tests.faults.harness import OPTIONS

    return psycopg.connect(env.src, options=OPTIONS)
