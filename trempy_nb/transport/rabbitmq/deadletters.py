"""Dead letters: the parts of batches given up on, on the task's DLQ; listed and replayed.

A failed batch (a stop_if_* flag said stop, or a terminal error) is not retried
(it would fail the same way): its table's part goes to the DLX with
`x-trempy-error`/`x-trempy-attempts`, the table is held (`held`) and the other
tables go on. A malformed or unknown-version message is dead-lettered with the
reason, never acked and dropped. `replay_dead_letters` puts the DLQ back on the
main queue in order followed by an unblock message.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pika
import pika.exceptions
import polars as pl

from trempy_nb import changes as ch
from trempy_nb.errors import TerminalError
from trempy_nb.transport.base import DeadLetter, StreamContext
from trempy_nb.transport.rabbitmq import codec
from trempy_nb.transport.rabbitmq.headers import (
    H,
    Headers,
    dead_letter_headers,
    lsn_text,
    text,
    unreadable_headers,
)
from trempy_nb.transport.rabbitmq.held import HeldTables
from trempy_nb.transport.rabbitmq.link import Delivery, Link
from trempy_nb.transport.rabbitmq.topology import (
    Topology,
    connect_blocking,
    ensure_topology,
    max_message_bytes,
    topology,
)


class DeadLetterer:
    """Publishes what the consumer gives up on to the DLX (confirmed), holds its tables, records it."""

    def __init__(self, ctx: StreamContext, topo: Topology, held: HeldTables,
                 link: Callable[[], Link | None]) -> None:
        self.ctx, self.topo, self.held, self._link = ctx, topo, held, link

    def batch(self, batch: ch.ChangeBatch, tables: list[ch.TableChanges], reason: str, error: str,
              attempts: int) -> None:
        """Publish these tables' part of the batch to the DLX (confirmed) and hold the tables."""
        sub = ch.ChangeBatch(batch.first_lsn, batch.end_lsn, tables, batch.n_transactions, 0)
        names = ",".join(f"{tc.schema}.{tc.table}" for tc in tables)
        headers = dead_letter_headers(self.ctx.task, batch, sub.n_changes, names, reason, error, attempts)
        self._publish(codec.split(codec.encode(sub), max_message_bytes()), headers, f"dl:{batch.end_lsn}:{names}")
        for tc in tables:
            self.held.hold(tc.key, batch.end_lsn, replay_failed=True if reason == "replay_failed" else None)
        with contextlib.suppress(Exception):
            self.ctx.hooks.dead_lettered(DeadLetter(names, batch.first_lsn, batch.end_lsn, error, attempts,
                                                    f"rabbitmq:{self.topo.dlq}"))
        # the engine's dead_lettered hook logs it (one record, with the table and fields)

    def unreadable(self, deliveries: list[Delivery], headers: Headers, reason: str, error: str) -> None:
        """A message we cannot read: to the DLX as it is, with the reason (the caller acks it)."""
        h = unreadable_headers(headers, self.ctx.task, reason, error)
        self._publish([d.body for d in deliveries], h, deliveries[0].properties.message_id or uuid.uuid4().hex)
        with contextlib.suppress(Exception):
            self.ctx.hooks.dead_lettered(DeadLetter(None, None, None, f"unreadable message ({reason}): {error}", 0,
                                                    f"rabbitmq:{self.topo.dlq}"))

    def _publish(self, parts: list[bytes], headers: Headers, message_id: str) -> None:
        link = self._link()
        assert link is not None
        for _ in range(50):
            gen = link.wait_ready(lambda: False, timeout=60.0)
            sent = link.publish(gen, self.topo.dlx, parts, headers, None, message_id)
            if sent and link.wait_confirms(gen, 30.0):
                return
        raise TerminalError("could not dead-letter a batch: the broker did not confirm it")


# -- dead letters: list and replay ---------------------------------------------------------------------


_DL_SCHEMA: dict[str, pl.DataType] = {
    "task": pl.String(),
    "table": pl.String(),
    "first_lsn": pl.String(),
    "end_lsn": pl.String(),
    "changes": pl.Int64(),
    "error": pl.String(),
    "reason": pl.String(),
    "attempts": pl.Int64(),
    "time": pl.Datetime("us", "UTC"),
    "parts": pl.Int64(),
}


def _peek_all(ch_: Any, queue_name: str) -> list[tuple[Any, Any, bytes]]:
    out: list[tuple[Any, Any, bytes]] = []
    while True:
        method, props, body = ch_.basic_get(queue_name, auto_ack=False)
        if method is None:
            return out
        out.append((method, props, body))


def dead_letters(task: str | Any, url: str | None = None) -> pl.DataFrame:
    """The task's dead-letter queue as a frame (oldest first), without consuming it."""
    name = task if isinstance(task, str) else task.name
    topo = topology(name)
    conn = connect_blocking(url)
    rows: list[dict[str, Any]] = []
    try:
        ch_ = conn.channel()
        try:
            ch_.queue_declare(topo.dlq, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return pl.DataFrame(schema=_DL_SCHEMA)
        for _method, props, _body in _peek_all(ch_, topo.dlq):
            h = dict(props.headers or {})
            if int(h.get(H + "part", 0) or 0) > 0 and rows and rows[-1]["_id"] == props.message_id:
                rows[-1]["parts"] += 1
                continue
            death = (h.get("x-death") or [{}])[0]
            reason = text(h.get(H + "reason")) or text(death.get("reason"))
            when = text(h.get(H + "dead-at"))
            ts = (
                datetime.fromisoformat(when)
                if when
                else (death.get("time") if isinstance(death.get("time"), datetime) else None)
            )
            if ts is not None and ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
            rows.append(
                {
                    "_id": props.message_id,
                    "task": text(h.get(H + "task")) or name,
                    "table": text(h.get(H + "tables")),
                    "first_lsn": lsn_text(h.get(H + "first-lsn")),
                    "end_lsn": lsn_text(h.get(H + "end-lsn")),
                    "changes": int(h.get(H + "changes", 0) or 0),
                    "error": text(h.get(H + "error"))
                    or (f"dead-lettered by the broker: {reason}" if reason else None),
                    "reason": reason,
                    "attempts": int(h.get(H + "attempts", death.get("count", 0)) or 0),
                    "time": ts,
                    "parts": 1,
                }
            )
        with contextlib.suppress(Exception):
            ch_.close()  # unacked messages go back to the queue, in order
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    for r in rows:
        r.pop("_id")
    return pl.DataFrame(rows, schema=_DL_SCHEMA) if rows else pl.DataFrame(schema=_DL_SCHEMA)


def replay_dead_letters(task: str | Any, url: str | None = None) -> int:
    """Put every dead letter back on the main queue, in order, then an unblock message; returns
    how many batches were replayed. Fix the cause first (the consumer applies them again)."""
    name = task if isinstance(task, str) else task.name
    topo = topology(name)
    ensure_topology(name, url)
    conn = connect_blocking(url)
    replayed: dict[str, int] = {}
    count = 0
    try:
        ch_ = conn.channel()
        ch_.confirm_delivery()
        while True:
            method, props, body = ch_.basic_get(topo.dlq, auto_ack=False)
            if method is None:
                break
            h = {k: v for k, v in dict(props.headers or {}).items() if not k.startswith("x-death")}
            if int(h.get(H + "part", 0) or 0) == 0:
                count += 1
            h[H + "replay"] = 1
            if h.get(H + "kind", "batch") in ("batch", b"batch"):
                for t in (text(h.get(H + "tables")) or "").split(","):
                    if t:
                        replayed[t] = max(replayed.get(t, 0), int(h.get(H + "end-lsn", 0) or 0))
            new = pika.BasicProperties(
                delivery_mode=2,
                content_type=props.content_type,
                message_id=props.message_id,
                timestamp=int(time.time()),
                headers=h,
            )
            ch_.basic_publish(
                topo.exchange, topo.routing_key, body, new, mandatory=True
            )  # confirmed
            ch_.basic_ack(method.delivery_tag)
        if replayed:
            ch_.basic_publish(
                topo.exchange,
                topo.routing_key,
                b"",
                pika.BasicProperties(
                    delivery_mode=2,
                    headers={H + "kind": "unblock", H + "task": name, H + "replayed": replayed},
                ),
            )
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return count
