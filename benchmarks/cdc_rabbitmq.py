"""CDC through RabbitMQ vs the local transport vs a naive one-message-per-change consumer.

    python -m benchmarks.cdc_rabbitmq [--rows 100000] [--naive-changes 5000]

Two throwaway PostgreSQL clusters (source; targets, as in benchmarks.cdc), one source table,
the same backlog of row updates
(`--rows` updates in transactions of 100 rows) committed before the runs start, applied in upsert
mode by:
  local     `trempy-nb run --until-caught-up` with transport local (a subprocess)
  rabbitmq  the same with transport rabbitmq (producer and consumer threads, broker at
            RABBITMQ_URL): one confirmed persistent message per batch
  naive     a small script: one persistent message per row change (publisher confirms), a
            consumer with prefetch 1 applying each change in its own transaction and acking it;
            run on the first `--naive-changes` changes of the same backlog (it is slow)
Rate = changes / wall time (for trempy: process start, validation and catch-up included).
Targets: rabbitmq >= 0.6x local and >= 20x naive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika

from benchmarks.cdc import MANY_TXNS, TABLE_SQL, pending_changes
from benchmarks.common import run_child
from trempy_nb import changes as ch
from trempy_nb.capture.reader import ChangeReader
from trempy_nb.db import connect
from trempy_nb.embedded import start_cluster
from trempy_nb.transport import rabbitmq as rmq

NAIVE_QUEUE = "trempy_bench_naive_per_change"


def settings(name: str, src: str, tgt: str, transport: str) -> dict:
    return {
        "task": {
            "task_name": name,
            "source": src,
            "target": tgt,
            "replication_type": "full_load_and_cdc",
            "start_mode": "reload",
            "transport": transport,
            "interval_seconds": 0.05,
            "full_load_settings": {"recreate_table_if_exists": True},
            "cdc_settings": {"mode": "upsert"},
        },
        "tables": [{"schema_name": "bench", "table_name": "t"}],
    }


def naive(src: str, tgt: str, slot: str, publication: str, limit: int) -> tuple[int, float]:
    """One message per change, prefetch 1, one target transaction + ack per message."""
    reader = ChangeReader(src, slot, publication, max_changes=limit)
    batch = reader.read_batch()
    reader.close()
    messages: list[bytes] = []
    for tc in batch.tables if batch else []:
        cols = tc.data_columns
        for row in tc.frame.iter_rows(named=True):
            msg = {"op": row[ch.OP], "row": {c: row[c] for c in cols}}
            messages.append(json.dumps(msg).encode())
            if len(messages) >= limit:
                break
    cols = list(json.loads(messages[0])["row"])
    upsert = (
        f"INSERT INTO bench.t ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
        f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in cols[1:])}"
    )
    url = rmq.broker_url()
    pconn = pika.BlockingConnection(pika.URLParameters(url))
    pch = pconn.channel()
    pch.queue_delete(NAIVE_QUEUE)
    pch.queue_declare(NAIVE_QUEUE, durable=True)
    pch.confirm_delivery()

    def produce() -> None:
        for body in messages:
            pch.basic_publish(
                "", NAIVE_QUEUE, body, pika.BasicProperties(delivery_mode=2)
            )  # waits for its confirm

    t0 = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    cconn = pika.BlockingConnection(pika.URLParameters(url))
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=1)
    done = 0
    with connect(tgt) as db:
        for method, _props, body in cch.consume(NAIVE_QUEUE, auto_ack=False):
            msg = json.loads(body)
            if msg["op"] == "D":
                db.execute("DELETE FROM bench.t WHERE id = %s", (msg["row"]["id"],))
            else:
                db.execute(upsert, [msg["row"][c] for c in cols])
            db.commit()
            cch.basic_ack(method.delivery_tag)
            done += 1
            if done == len(messages):
                break
    secs = time.perf_counter() - t0
    producer.join()
    cch.cancel()
    pch.queue_delete(NAIVE_QUEUE)
    pconn.close()
    cconn.close()
    return done, secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--naive-changes", type=int, default=5_000)
    args = ap.parse_args()
    rows, per = int(args.rows), 100
    rmq.connect_blocking().close()  # a clear error now if there is no broker
    cluster = start_cluster(conf={"shared_buffers": "256MB"})
    target_cluster = start_cluster(conf={"shared_buffers": "256MB"})
    work = Path(tempfile.mkdtemp(prefix="trempy_bench_rmq_"))
    env = {**os.environ, "TREMPY_HOME": str(work / "home")}
    names = {"local": "br_local", "rabbitmq": "br_rmq", "naive": "br_naive"}
    try:
        src = cluster.create_database("bench_src")
        print(f"building bench.t with {rows:,} rows ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(TABLE_SQL.format(rows=rows))
        paths: dict[str, Path] = {}
        targets: dict[str, str] = {}
        for kind, name in names.items():
            targets[kind] = target_cluster.create_database(f"bench_tgt_{kind}")
            transport = "rabbitmq" if kind == "rabbitmq" else "local"
            paths[kind] = work / f"{kind}.json"
            paths[kind].write_text(json.dumps(settings(name, src, targets[kind], transport)))
            print(f"full load + slot for {kind} ...", flush=True)
            run_child(["run", str(paths[kind]), "--until-caught-up", "-q"], env)
        print(f"backlog: {rows:,} row updates in {rows // per:,} transactions ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(MANY_TXNS.format(txns=rows // per, per=per))
        changes = pending_changes(src, f"trempy_{names['local']}")
        results: dict[str, tuple[int, float]] = {}
        for kind in ("local", "rabbitmq"):
            print(f"{kind}: trempy-nb run --until-caught-up ...", flush=True)
            secs, _rss = run_child(
                ["run", str(paths[kind]), "--until-caught-up", "--start-mode", "continue", "-q"],
                env,
            )
            results[kind] = (changes, secs)
        print(f"naive: first {args.naive_changes:,} changes, one message each ...", flush=True)
        results["naive"] = naive(
            src,
            targets["naive"],
            f"trempy_{names['naive']}",
            f"trempy_{names['naive']}",
            args.naive_changes,
        )
        with connect(src, autocommit=True) as s, connect(targets["rabbitmq"]) as t:
            q = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM bench.t t"
            same = s.execute(q).fetchone() == t.execute(q).fetchone()

        rate = {k: n / secs for k, (n, secs) in results.items()}
        print(f"\nCDC upsert, {rows:,}-row table, backlog of {changes:,} changes, 2 cores")
        print(f"{'transport':10} {'changes':>9} {'seconds':>8} {'changes/s':>10}")
        for k, (n, secs) in results.items():
            print(f"{k:10} {n:9,} {secs:8.2f} {rate[k]:10,.0f}")
        r_local = rate["rabbitmq"] / rate["local"]
        r_naive = rate["rabbitmq"] / rate["naive"]
        print(
            f"\nrabbitmq / local = {r_local:.2f}x (target >= 0.6x)"
            f"   rabbitmq / naive = {r_naive:.1f}x (target >= 20x)"
            f"   rabbitmq target = source: {same}"
        )
    finally:
        for name in names.values():
            try:
                rmq.delete_topology(name)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        cluster.destroy()
        target_cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        sys.exit("the rabbitmq target differs from the source")


if __name__ == "__main__":
    main()
