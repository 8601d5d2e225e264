"""RabbitMQ transport faults: case 1 (kill -9 loop), case 3 (broker crash points), case 12 (a
value over the broker's message limit) and case 14 (vhost restart during publish and consume,
connections closed, a stalled consumer whose connection the broker closes, a poison batch and a
hand-published malformed message counted exactly in the dead-letter queue).

Runs on the machine's broker in a vhost and user of its own; faults are scoped to them
(`restart_vhost` stands in for stop_app/start_app, which would hit every user of the broker)."""

from __future__ import annotations

import os
import random
import signal
import time

import pika
import pytest

from tests.faults.broker import vhost
from tests.faults.checker import check
from tests.faults.harness import Sampler, fault_env, q, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

pytestmark = pytest.mark.rabbitmq

TABLES = [WTable("qa", filtered=True), WTable("qb")]


def _setup(env, v, mode: str, tables=TABLES, **extra):
    env.extra_env.update({"RABBITMQ_URL": v.url, "TREMPY_RABBITMQ_RETRY_SLEEP": "0.05"})
    wl = Workload(env.src, tables, seed=14)
    wl.create_tables()
    wl.seed(200)
    env.settings(
        tables=[t.key for t in tables],
        mode=mode,
        filters=[tables[0].filter_doc()],
        transport="rabbitmq",
        **extra,
    )
    return wl


def test_c01_kill9_during_cdc_rabbitmq(pair, long_run):
    kills = 30 if long_run else 5
    rng = random.Random("c01rmq")
    with vhost("k") as v, fault_env(pair, "krmq") as env:
        wl = _setup(env, v, "scd2")
        lo = wl.ledger.mark()
        r = env.start_runner("reload")
        env.wait_streaming()
        hi = wl.ledger.mark()
        wl.start(rate=30)
        with Sampler(env) as sampler:
            for i in range(kills):
                time.sleep(rng.uniform(0.2, 1.2))
                mark = env.flush_lsn()
                r.kill9("kill -9 runner (rabbitmq)")
                r = env.start_runner()
                t0 = time.monotonic()
                wait_until(
                    lambda rr=r, m=mark: _applied_past(env, m) or not rr.alive(),
                    90,
                    "the consumer to catch up",
                )
                assert r.alive(), r.log()[-3000:]
                RESULTS.recovery(time.monotonic() - t0)
                _ = i
            wl.stop()
            r.kill9("cleanup kill")
            RESULTS.faults["cleanup kill"] -= 1
        env.catch_up(timeout=180)
        check(env.src, env.tgt, wl.ledger, TABLES, "scd2", (lo, hi))
        sampler.assert_ok()
        wl.close()


def _applied_past(env, mark: int) -> bool:
    """Everything committed before `mark` is on the target: the consumer applied (in order) a
    transaction that committed after it (its commit LSN is the target's checkpoint)."""
    cp = env.checkpoint()
    return cp is not None and cp[0] >= mark


POINTS = [
    "rmq_after_publish_before_confirm",
    "rmq_after_confirm_before_advance",
    "rmq_after_commit_before_ack",
]


@pytest.mark.parametrize("point", POINTS)
def test_c03_crash_points_rabbitmq(pair, point):
    with vhost("cp") as v, fault_env(pair, "cprmq") as env:
        wl = _setup(env, v, "upsert")
        r = env.start_runner("reload")
        env.wait_streaming()
        r.kill9("cleanup kill")
        RESULTS.faults["cleanup kill"] -= 1
        wl.start(rate=30)
        for _ in range(2):
            time.sleep(0.5)
            r = env.start_runner(extra_env={"TREMPY_CRASH_AT": point})
            rc = r.wait(90)
            assert rc == 97, f"crash point {point} did not fire (rc {rc}):\n{r.log()[-2000:]}"
            RESULTS.fault(f"crash point {point}")
        wl.stop()
        env.catch_up(timeout=180)
        check(env.src, env.tgt, wl.ledger, TABLES, "upsert")
        wl.close()


def test_c12_value_over_broker_limit(pair):
    with vhost("big") as v, fault_env(pair, "bigrmq") as env:
        q(env.src, "CREATE TABLE tt (id int PRIMARY KEY, v int, big text)")
        env.extra_env.update(
            {"RABBITMQ_URL": v.url, "TREMPY_RABBITMQ_MAX_MESSAGE_BYTES": str(2**20)}
        )
        env.settings(tables=[("public", "tt")], mode="upsert", transport="rabbitmq")
        env.catch_up(start_mode="reload")
        q(
            env.src,
            "INSERT INTO tt SELECT 1, 0, (SELECT string_agg(md5(j::text), '') FROM generate_series(1, 200000) j)",
        )
        q(env.src, "UPDATE tt SET v = 1 WHERE id = 1")
        RESULTS.fault("value over the broker message limit (6 MB vs 1 MB)")
        env.catch_up(timeout=180)
        digest = "SELECT id, v, md5(big), length(big) FROM tt ORDER BY id"
        assert q(env.src, digest) == q(env.tgt, digest)


def _consumer_pid(env) -> int | None:
    for p in reversed(env.procs):
        if p.alive() and "consumer" in p.args:
            return p.pid
    return None


def test_c14_broker_faults_and_dead_letters(pair):
    with vhost("bf") as v, fault_env(pair, "bfrmq") as env:
        # a table whose target refuses one value: the batch carrying it is poison
        q(env.src, "CREATE TABLE public.qp (id int PRIMARY KEY, v int)")
        q(
            env.tgt,
            "CREATE TABLE public.qp (id int PRIMARY KEY, v int CHECK (v IS DISTINCT FROM 666))",
        )
        wl = _setup(env, v, "upsert", error_handling={"max_retries": 2})
        doc = env.doc
        doc["tables"].append({"schema_name": "public", "table_name": "qp"})
        env.write(doc)
        prod = env.start_runner("reload", role="producer")
        env.wait_streaming(90)
        cons = env.start_runner("continue", role="consumer")
        q(env.src, "INSERT INTO qp VALUES (2, 2)")  # before the poison, in an earlier batch
        wl.start(rate=30)
        with Sampler(env) as sampler:
            time.sleep(1.0)
            v.restart()  # during publish and consume
            time.sleep(2.0)
            v.close_connections()
            time.sleep(2.0)
            assert cons.alive(), f"the consumer exited during the broker faults:\n{cons.log()[-4000:]}"
            os.kill(cons.pid, signal.SIGSTOP)  # a stalled consumer ...
            RESULTS.fault("consumer stalled (SIGSTOP)")
            time.sleep(2.0)
            v.close_connections()  # ... whose connection the broker gives up on (consumer timeout)
            time.sleep(1.0)
            os.kill(cons.pid, signal.SIGCONT)
            # one poison batch, then no more writes to that table
            wl.stop()
            with pika.BlockingConnection(pika.URLParameters(v.url)) as c:
                ch = c.channel()
                ch.basic_publish(
                    f"trempy_exchange_{env.task}",
                    env.task,
                    b"\x00not a batch\xff",
                    pika.BasicProperties(delivery_mode=2, message_id="malformed-1"),
                )
            RESULTS.poison_injected += 1
            q(env.src, "INSERT INTO qp VALUES (1, 666)")
            RESULTS.poison_injected += 1
            RESULTS.fault("poison batch + malformed message", 2)
            wl.start(rate=30)
            time.sleep(3.0)
            wl.stop()
            dlq = f"dlx_queue_{env.task}"
            wait_until(lambda: v.queue_depth(dlq) >= 2, 90, "2 dead letters")
            mark = env.flush_lsn()
            wl.run(3)  # commits after the mark: once applied, everything before it is
            wait_until(
                lambda: _applied_past(env, mark) or not cons.alive() or not prod.alive(),
                120,
                "the consumer to catch up after the broker faults",
            )
            assert prod.alive(), prod.log()[-3000:]
            assert cons.alive(), cons.log()[-3000:]
            time.sleep(1.0)
            depth = v.queue_depth(dlq)
            RESULTS.dead_letters += depth
            assert depth == 2, f"{depth} dead letters for 2 poison messages"
            prod.kill9("cleanup kill")
            cons.kill9("cleanup kill")
            RESULTS.faults["cleanup kill"] -= 2
        env.catch_up(timeout=180)
        check(env.src, env.tgt, wl.ledger, TABLES, "upsert")
        assert q(env.tgt, "SELECT id, v FROM qp ORDER BY id") == [(2, 2)]
        sampler.assert_ok()
        wl.close()
