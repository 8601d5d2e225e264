"""The RabbitMQ transport on a real broker and real PostgreSQL.

Each test uses its own task name (so its own exchanges and queues) and removes
its topology and slot at the end. Without a broker these tests skip with the
reason; in CI (CI=true) a missing broker fails them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest

from tests.conftest import in_ci
from trempy_nb.capture.slot import drop_task_objects, slot_status
from trempy_nb.engine import ConsumerRunner, run_role
from trempy_nb.errors import ConnectionFailed
from trempy_nb.task import Task
from trempy_nb.transport import rabbitmq as rmq
from trempy_nb.transport.rabbitmq import codec

OPTIONS = "-c TimeZone=UTC -c synchronous_commit=on"


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> str:
    url = rmq.broker_url()
    try:
        rmq.connect_blocking(url).close()
    except ConnectionFailed as exc:
        if in_ci():
            pytest.fail(f"RabbitMQ is required in CI: {exc}")
        pytest.skip(f"no RabbitMQ broker: {exc}")
    return url


@pytest.fixture
def task_name(broker: str, source_uri: str) -> Iterator[str]:
    name = "rmq_" + uuid.uuid4().hex[:10]
    yield name
    with contextlib.suppress(Exception):
        rmq.delete_topology(name)
    with psycopg.connect(source_uri, autocommit=True) as conn:
        drop_task_objects(conn, name)
        assert slot_status(conn, f"trempy_{name}") is None
    _assert_no_topology(name)


def _assert_no_topology(name: str) -> None:
    conn = rmq.connect_blocking()
    try:
        for q in (rmq.topology(name).queue, rmq.topology(name).dlq):
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare(q, passive=True)
    finally:
        conn.close()


def sql(uri: str, *statements: str) -> None:
    with psycopg.connect(uri, autocommit=False, options=OPTIONS) as c:
        for s in statements:
            c.execute(s)  # type: ignore[arg-type]
        c.commit()


def rows(uri: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri, options=OPTIONS) as c:
        return c.execute(query).fetchall()  # type: ignore[arg-type]


def doc(
    name: str,
    src: str,
    tgt: str,
    *,
    mode: str = "upsert",
    tables: tuple[str, ...] = ("t",),
    start_mode: str = "reload",
    max_retries: int = 2,
    transport: str = "rabbitmq",
) -> dict[str, Any]:
    return {
        "task": {
            "task_name": name,
            "source": src,
            "target": tgt,
            "replication_type": "cdc",
            "start_mode": start_mode,
            "transport": transport,
            "interval_seconds": 0.05,
            "cdc_settings": {"mode": mode},
        },
        "error_handling": {"max_retries": max_retries},
        "tables": [{"schema_name": "public", "table_name": t} for t in tables],
    }


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def same_rows(src: str, tgt: str, table: str = "t") -> bool:
    return rows(src, f"SELECT * FROM {table} ORDER BY 1") == rows(
        tgt, f"SELECT * FROM {table} ORDER BY 1"
    )


def workload(src: str, base: int = 0, n: int = 40) -> None:
    b = base
    sql(src, f"INSERT INTO t SELECT i, i, 'x' || i FROM generate_series({b + 1}, {b + n}) i")
    sql(src, f"UPDATE t SET v = v * 10 WHERE id BETWEEN {b + 1} AND {b + n // 2}")
    sql(src, f"DELETE FROM t WHERE id % 7 = 0 AND id BETWEEN {b + 1} AND {b + n}")
    sql(
        src,
        f"INSERT INTO t VALUES ({b + n + 1}, 1, 'a')",
        f"UPDATE t SET s = 'b' WHERE id = {b + n + 1}",
    )
    sql(src, f"DELETE FROM t WHERE id = {b + 2}", f"INSERT INTO t VALUES ({b + 2}, 22, 'again')")


def start(d: dict[str, Any]) -> Any:
    return Task.from_settings(d).start()


def caught_up(runner: Any, timeout: float = 60.0) -> None:
    runner.stop_when_caught_up(timeout)
    if runner.running:
        from trempy_nb.metadata import MetadataStore

        logs = MetadataStore().logs(task=runner.task.name)
        import faulthandler
        import sys

        faulthandler.dump_traceback(sys.stderr)
        raise AssertionError(
            f"runner {runner.task.name} did not stop ({runner.status}): {logs.tail(10).rows()}"
        )


T_SQL = "CREATE TABLE t (id int PRIMARY KEY, v int, s text)"


# -- topology ------------------------------------------------------------------------------------


def test_topology_names_and_arguments(task_name: str) -> None:
    kind = rmq.ensure_topology(task_name)
    assert kind == "quorum"
    assert rmq.ensure_topology(task_name) == "quorum"  # idempotent
    topo = rmq.topology(task_name)
    assert (topo.exchange, topo.dlx, topo.queue, topo.dlq) == (
        f"trempy_exchange_{task_name}",
        f"trempy_dlx_exchange_{task_name}",
        f"trempy_queue_{task_name}",
        f"dlx_queue_{task_name}",
    )
    conn = rmq.connect_blocking()
    try:
        ch = conn.channel()
        for q in (topo.queue, topo.dlq):
            ch.queue_declare(q, passive=True)
        for e in (topo.exchange, topo.dlx):
            ch.exchange_declare(e, passive=True)
    finally:
        conn.close()
    if shutil.which("rabbitmqctl") and os.geteuid() == 0:
        out = subprocess.run(
            [
                "rabbitmqctl",
                "list_queues",
                "-q",
                "--formatter",
                "json",
                "name",
                "type",
                "durable",
                "arguments",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        import json

        queues = {q["name"]: q for q in json.loads(out)}
        main = queues[topo.queue]
        args = (
            dict(main["arguments"])
            if isinstance(main["arguments"], dict)
            else {a[0]: a[-1] for a in main["arguments"]}
        )
        assert main["type"] == "quorum" and main["durable"] is True
        assert args["x-delivery-limit"] == rmq.DELIVERY_LIMIT
        assert args["x-dead-letter-exchange"] == topo.dlx
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"
        assert args["x-single-active-consumer"] is True  # standby consumers wait (the fleet)
        assert queues[topo.dlq]["durable"] is True
    rmq.delete_topology(task_name)
    _assert_no_topology(task_name)
    rmq.delete_topology(task_name)  # idempotent


def test_wrong_credentials_and_url_are_clear_and_masked(task_name: str) -> None:
    with pytest.raises(ConnectionFailed) as err:
        rmq.connect_blocking("amqp://guest:s3cretpw@127.0.0.1:5672/%2F?connection_attempts=1")
    # guest/guest is right: use a wrong password for a user that exists
    with pytest.raises(ConnectionFailed) as err:
        rmq.connect_blocking("amqp://guest:wrong-s3cret@127.0.0.1:5672/%2F")
    assert "authentication failed" in str(err.value) and "wrong-s3cret" not in str(err.value)
    assert "***" in str(err.value)
    with pytest.raises(ConnectionFailed) as err:
        rmq.connect_blocking("amqp://guest:pw-s3cret@127.0.0.1:1/%2F")
    assert "pw-s3cret" not in str(err.value) and "127.0.0.1:1" in str(err.value)


def test_wrong_url_stops_a_run_with_a_clear_error(
    task_name: str,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sql(source_uri, T_SQL)
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:bad-s3cret@127.0.0.1:5672/%2F")
    with pytest.raises(ConnectionFailed) as err:
        Task.from_settings(doc(task_name, source_uri, target_uri)).run(progress=False)
    assert "authentication failed" in str(err.value) and "bad-s3cret" not in str(err.value)


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_end_to_end_matches_source_and_local(
    mode: str, task_name: str, source_uri: str, target_uri: str, pg_cluster: Any, trempy_home: Path
) -> None:
    """Through the broker vs the source (upsert) and vs the local transport (scd2: same versions)."""
    sql(source_uri, T_SQL)
    local_target = pg_cluster.create_database(f"tgtl_{uuid.uuid4().hex[:8]}")
    local_name = task_name + "_l"
    from trempy_nb.metadata import MetadataStore

    MetadataStore()  # created once up front: two runners creating it at once can hit "database is locked"
    runners = [start(doc(task_name, source_uri, target_uri, mode=mode))]
    try:
        wait_for(lambda: runners[0].status == "streaming", what="rabbitmq runner streaming")
        runners.append(
            start(doc(local_name, source_uri, local_target, mode=mode, transport="local"))
        )
        wait_for(lambda: runners[1].status == "streaming", what="local runner streaming")
        time.sleep(0.5)
        workload(source_uri)
        workload(source_uri, base=1000, n=300)
        for r in runners:
            caught_up(r)
    finally:
        for r in runners:
            with contextlib.suppress(Exception):
                r.stop(10)
        with psycopg.connect(source_uri, autocommit=True) as conn:
            drop_task_objects(conn, local_name)
    if mode == "upsert":
        assert same_rows(source_uri, target_uri)
    else:
        got = rows(target_uri, "SELECT * FROM t ORDER BY id, scd_start_date")
        assert got == rows(local_target, "SELECT * FROM t ORDER BY id, scd_start_date")
        current = rows(target_uri, "SELECT id, v, s FROM t WHERE scd_current ORDER BY id")
        assert current == rows(source_uri, "SELECT * FROM t ORDER BY id")
        assert len(got) > len(current)
    assert rmq.queue_depth(task_name) == (0, 0)


def test_one_message_per_batch_and_split_payloads(
    task_name: str,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 5000-row transaction is one batch: one message (or its parts when over the size limit)."""
    sql(source_uri, T_SQL)
    monkeypatch.setenv("TREMPY_RABBITMQ_MAX_MESSAGE_BYTES", "20000")  # force splitting
    d = doc(task_name, source_uri, target_uri)
    Task.from_settings(d).run(progress=False)  # creates slot and topology, nothing to apply
    sql(source_uri, "INSERT INTO t SELECT i, i, repeat('z', 50) FROM generate_series(1, 5000) i")
    task = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}})
    msgs = _produce_and_peek(task, task_name)
    batches = _batches(msgs)
    assert len(batches) > 3  # parts
    assert len({m[1].message_id for m in batches}) == 1  # ... of ONE batch
    assert all(len(m[2]) <= 20000 for m in batches)
    assert {m[1].delivery_mode for m in batches} == {2}
    assert codec.decode(b"".join(m[2] for m in batches)).n_changes == 5000
    runner = ConsumerRunner(task).start()
    try:
        wait_for(lambda: same_rows(source_uri, target_uri), what="the split batch applied")
        wait_for(lambda: rmq.queue_depth(task_name)[0] == 0, what="markers consumed")
    finally:
        runner.stop(30)
    assert rmq.queue_depth(task_name) == (0, 0)


def test_a_backlog_of_small_transactions_goes_out_in_few_messages(
    task_name: str, source_uri: str, target_uri: str, trempy_home: Path,
) -> None:
    """300 committed transactions of 10 rows: the producer gathers the stream into batches
    (one message each), not one message per transaction; the consumer applies them all."""
    sql(source_uri, T_SQL)
    d = doc(task_name, source_uri, target_uri)
    Task.from_settings(d).run(progress=False)  # creates slot and topology, nothing to apply
    with psycopg.connect(source_uri, autocommit=True) as c:  # COMMIT in DO needs autocommit
        c.execute("DO $$ BEGIN FOR k IN 0..299 LOOP INSERT INTO t SELECT k * 10 + i, i, 'x'"
                  " FROM generate_series(1, 10) i; COMMIT; END LOOP; END $$")
    task = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}})
    msgs = _produce_and_peek(task, task_name)
    batches = {m[1].message_id for m in _batches(msgs)}
    assert 1 <= len(batches) <= 30, f"{len(batches)} messages for 300 transactions"
    runner = ConsumerRunner(task).start()
    try:
        wait_for(lambda: same_rows(source_uri, target_uri), what="the backlog applied")
    finally:
        runner.stop(30)


def _produce_and_peek(task: Task, task_name: str) -> list:
    """Run the producer alone until caught up; the messages it left on the queue (not consumed)."""
    _role(task, "producer")
    conn = rmq.connect_blocking()
    try:
        ch = conn.channel()
        queue = rmq.topology(task_name).queue
        count = ch.queue_declare(queue, passive=True).method.message_count
        # basic.get is refused on a single-active-consumer quorum queue: consume without acking,
        # then close the channel (the broker requeues every message, in order)
        msgs: list = []
        for method, props, body in ch.consume(queue, auto_ack=False, inactivity_timeout=2.0):
            if method is None:
                break
            msgs.append((method, props, body))
            if len(msgs) >= count:
                break
        ch.close()
    finally:
        conn.close()
    return msgs


def _batches(msgs: list) -> list:
    return [m for m in msgs if (m[1].headers or {}).get("x-trempy-kind") == "batch"]


def _role(task: Task, role: str) -> None:
    """Run one side until caught up (the CLI's --role ... --until-caught-up)."""
    assert run_role(task, role, until_caught_up=True, progress=False) == 0


def test_separate_producer_and_consumer_processes_until_caught_up(
    task_name: str, source_uri: str, target_uri: str, tmp_path: Path, trempy_home: Path
) -> None:
    import json
    import sys

    sql(source_uri, T_SQL)
    d = doc(task_name, source_uri, target_uri)
    Task.from_settings(d).run(progress=False)
    workload(source_uri)
    path = tmp_path / "task.json"
    path.write_text(json.dumps({**d, "task": {**d["task"], "start_mode": "continue"}}))
    env = {**os.environ, "TREMPY_HOME": str(trempy_home)}
    cmd = [
        sys.executable,
        "-m",
        "trempy_nb.cli",
        "run",
        str(path),
        "--until-caught-up",
        "-q",
        "--role",
    ]
    cons = subprocess.Popen(
        [*cmd, "consumer"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    prod = subprocess.run([*cmd, "producer"], env=env, capture_output=True, text=True, timeout=120)
    assert prod.returncode == 0, prod.stderr
    out, err = cons.communicate(timeout=120)
    assert cons.returncode == 0, err
    assert same_rows(source_uri, target_uri)


# -- failures ----------------------------------------------------------------------------------------


def test_consumer_restart_mid_stream_no_loss_no_duplicate(
    task_name: str,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TREMPY_BATCH_CHANGES", "50")  # many small batches
    sql(source_uri, T_SQL)
    d = doc(task_name, source_uri, target_uri, mode="scd2")
    Task.from_settings(d).run(progress=False)
    task = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}})
    for i in range(30):
        sql(
            source_uri,
            f"INSERT INTO t SELECT i, i, 'r' FROM generate_series({i * 20 + 1}, {i * 20 + 20}) i",
            f"UPDATE t SET v = v + 1 WHERE id <= {i * 20}",
        )
    _role(task, "producer")
    slow = threading.Event()
    runner = ConsumerRunner(task, prefetch=4).start()
    wait_for(lambda: runner.counters.batches >= 5, what="some batches applied")
    runner.stop(30)  # mid-stream: prefetched, unacked batches go back to the queue
    slow.set()
    assert rmq.queue_depth(task_name)[0] > 0
    ConsumerRunner(task, until_caught_up=False).start()  # a second consumer finishes the queue
    wait_for(lambda: rmq.queue_depth(task_name)[0] == 0, what="queue drained")
    wait_for(
        lambda: (
            rows(target_uri, "SELECT id, v, s FROM t WHERE scd_current ORDER BY id")
            == rows(source_uri, "SELECT * FROM t ORDER BY id")
        ),
        what="target = source",
    )
    # no duplicate versions: each key has exactly one version per change it saw
    dup = rows(
        target_uri, "SELECT id, scd_start_date, count(*) FROM t GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert dup == []
    total = rows(target_uri, "SELECT count(*) FROM t")[0][0]
    assert total == sum(
        20 + i * 20 for i in range(30)
    )  # 30 inserts of 20 + one update per earlier key


def _close_all_connections() -> None:
    if not (shutil.which("rabbitmqctl") and os.geteuid() == 0):
        pytest.skip("rabbitmqctl (as root) is needed to cut connections")
    subprocess.run(
        ["rabbitmqctl", "close_all_connections", "trempy test cut"],
        capture_output=True,
        timeout=30,
        check=True,
    )


@pytest.mark.parametrize("phase", ["publish", "consume"])
def test_connections_cut_during_publish_and_consume(
    phase: str,
    task_name: str,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TREMPY_BATCH_CHANGES", "100")
    sql(source_uri, T_SQL)
    d = doc(task_name, source_uri, target_uri)
    Task.from_settings(d).run(progress=False)
    task = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}})
    runner = Task.start(task)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            sql(
                source_uri,
                f"INSERT INTO t SELECT i, i, 'w' FROM generate_series({i * 50 + 1}, {i * 50 + 50}) i",
                f"UPDATE t SET v = -v WHERE id = {i * 25 + 1}",
            )
            i += 1
            time.sleep(0.01)

    w = threading.Thread(target=writer)
    w.start()
    try:
        wait_for(lambda: runner.counters.batches >= 3, what="batches flowing")
        if phase == "consume":
            # let the consumer hold work: slow applies while the connections are cut
            pass
        for _ in range(2):
            _close_all_connections()
            time.sleep(0.7)
    finally:
        stop.set()
        w.join()
    caught_up(runner, timeout=90)
    assert same_rows(source_uri, target_uri)
    assert rmq.queue_depth(task_name) == (0, 0)


def test_poison_batch_dead_letters_others_continue_then_replay(
    task_name: str,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TREMPY_RABBITMQ_RETRY_SLEEP", "0.01")
    sql(
        source_uri,
        "CREATE TABLE a (id int PRIMARY KEY, v int)",
        "CREATE TABLE b (id int PRIMARY KEY, v int)",
    )
    d = doc(task_name, source_uri, target_uri, tables=("a", "b"), max_retries=2)
    Task.from_settings(d).run(progress=False)  # creates the target tables
    sql(target_uri, "ALTER TABLE a ADD CONSTRAINT v_small CHECK (v < 100)")
    task = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}})
    runner = task.start()
    try:
        wait_for(lambda: runner.status == "streaming", what="streaming")
        sql(source_uri, "INSERT INTO a VALUES (1, 1)")
        # applied on its own batch, so the poison batch below holds only the bad row of a
        wait_for(lambda: rows(target_uri, "SELECT * FROM a") == [(1, 1)], what="a applied")
        sql(source_uri, "INSERT INTO a VALUES (2, 500)")  # poison: violates v_small on the target
        sql(source_uri, "INSERT INTO b VALUES (1, 10)")
        # the poison batch is dead-lettered first (so the next change of a is a batch of its own)
        wait_for(lambda: len(rmq.dead_letters(task_name)) == 1, what="the poison dead-lettered")
        sql(
            source_uri, "UPDATE a SET v = 7 WHERE id = 1", "INSERT INTO b VALUES (2, 20)"
        )  # a is held
        sql(source_uri, "INSERT INTO b VALUES (3, 30)")
        wait_for(
            lambda: same_rows(source_uri, target_uri, "b"), what="table b applied past the poison"
        )
        wait_for(lambda: len(rmq.dead_letters(task_name)) == 2, what="two dead letters")
    finally:
        with contextlib.suppress(Exception):
            runner.stop(30)
    assert rows(target_uri, "SELECT * FROM a ORDER BY id") == [(1, 1)]
    dl = rmq.dead_letters(task_name)
    assert dl["table"].to_list() == ["public.a", "public.a"]
    assert dl["reason"].to_list() == ["apply_failed", "held"]
    # a flag said stop (stop_if_upsert_error, default true): dead-lettered at its first failure,
    # not retried (one error policy: only transient errors are retried)
    assert "v_small" in dl["error"][0] and dl["attempts"][0] == 1
    assert dl["end_lsn"][0] < dl["end_lsn"][1] or len(dl["end_lsn"][0]) < len(dl["end_lsn"][1])
    assert task.dead_letters().height == 2
    from trempy_nb.metadata import MetadataStore

    assert MetadataStore().dead_letters(task=task_name).height == 2
    # fix the cause, replay, and everything lands in order
    sql(target_uri, "ALTER TABLE a DROP CONSTRAINT v_small")
    assert task.replay_dead_letters() == 2
    assert rmq.dead_letters(task_name).height == 0
    runner = task.start()
    try:
        wait_for(lambda: same_rows(source_uri, target_uri, "a"), what="replayed rows")
        sql(source_uri, "UPDATE a SET v = 8 WHERE id = 2")  # the table is released: live again
        wait_for(lambda: same_rows(source_uri, target_uri, "a"), what="live after replay")
    finally:
        runner.stop(30)
    assert rmq.dead_letters(task_name).height == 0
    assert same_rows(source_uri, target_uri, "b")


def test_malformed_message_is_dead_lettered_with_reason(
    task_name: str, source_uri: str, target_uri: str, trempy_home: Path
) -> None:
    sql(source_uri, T_SQL)
    d = doc(task_name, source_uri, target_uri)
    task = Task.from_settings(d)
    task.run(progress=False)
    topo = rmq.topology(task_name)
    conn = rmq.connect_blocking()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            topo.exchange,
            topo.routing_key,
            b"{not a batch}",
            pika.BasicProperties(delivery_mode=2, message_id="by-hand-1"),
        )
        bad_version = b"TRMQ" + bytes([9]) + (2).to_bytes(4, "big") + b"{}"
        ch.basic_publish(
            topo.exchange,
            topo.routing_key,
            bad_version,
            pika.BasicProperties(delivery_mode=2, message_id="by-hand-2"),
        )
    finally:
        conn.close()
    sql(source_uri, "INSERT INTO t VALUES (1, 1, 'after the bad messages')")
    runner = Task.from_settings({**d, "task": {**d["task"], "start_mode": "continue"}}).start()
    try:
        wait_for(lambda: same_rows(source_uri, target_uri), what="the consumer goes on")
        wait_for(lambda: rmq.dead_letters(task_name).height == 2, what="both dead-lettered")
        assert runner.running and runner.error is None
    finally:
        runner.stop(30)
    dl = rmq.dead_letters(task_name)
    assert dl["reason"].to_list() == ["malformed", "malformed"]
    assert "not a trempy batch" in dl["error"][0]
    assert "unknown batch format version 9" in dl["error"][1]
    assert rmq.queue_depth(task_name) == (0, 2)


# -- single active consumer (the fleet: standby consumers on other workers) --------------------------


def test_single_active_consumer_standby_takes_over_in_order(task_name: str) -> None:
    """Two consumers attach to the task's queue: only the first receives; when its connection
    closes, its unacked messages go, in order, to the standby."""
    rmq.ensure_topology(task_name)
    topo = rmq.topology(task_name)
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    conns = {k: rmq.connect_blocking() for k in ("a", "b")}
    try:
        for key, conn in conns.items():
            ch = conn.channel()
            ch.basic_qos(prefetch_count=10)
            ch.basic_consume(topo.queue, lambda _c, _m, _p, body, k=key: got[k].append(body))
        pub = rmq.connect_blocking()
        try:
            ch = pub.channel()
            ch.confirm_delivery()  # each publish confirmed: all five are on the queue before we wait
            for i in range(5):
                ch.basic_publish(topo.exchange, topo.routing_key, str(i).encode())
        finally:
            pub.close()
        deadline = time.monotonic() + 30
        while len(got["a"]) < 5 and time.monotonic() < deadline:
            for conn in conns.values():
                conn.process_data_events(time_limit=0.1)
        assert got == {"a": [b"0", b"1", b"2", b"3", b"4"], "b": []}
        conns["a"].close()  # the active consumer dies with its 5 messages unacked
        deadline = time.monotonic() + 30
        while len(got["b"]) < 5 and time.monotonic() < deadline:
            conns["b"].process_data_events(time_limit=0.1)
        assert got["b"] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                conn.close()


def test_a_queue_declared_before_single_active_consumer_is_used_and_flagged(task_name: str) -> None:
    from trempy_nb.transport.rabbitmq.topology import (
        LEGACY_QUEUE_HINT,
        WITHOUT_SAC,
        queue_arguments,
    )

    topo = rmq.topology(task_name)
    conn = rmq.connect_blocking()
    try:  # what an older trempy_nb declared: the same arguments, no x-single-active-consumer
        conn.channel().queue_declare(topo.queue, durable=True,
                                     arguments=queue_arguments(topo, True, True, single_active=False))
    finally:
        conn.close()
    assert rmq.ensure_topology(task_name) == WITHOUT_SAC
    assert "cannot change in place" in LEGACY_QUEUE_HINT and "trempy-nb drop" in LEGACY_QUEUE_HINT
