"""The RabbitMQ transport: capture (producer) and apply (consumer) decoupled by a durable broker.

Topology per task (public names, see docs/rabbitmq.md):

    trempy_exchange_<task>      direct, durable: batches are published here
    trempy_queue_<task>         quorum queue (x-delivery-limit, at-least-once dead-lettering,
                                reject-publish) where the broker supports it, else a durable
                                classic queue; dead-letters to the DLX
    trempy_dlx_exchange_<task>  direct, durable: the dead-letter exchange
    dlx_queue_<task>            durable: batches given up, with the error and attempts in headers

Producer: reads whole transactions from the slot, publishes ONE persistent message
per batch (codec: Arrow IPC; split into parts above the broker's message size),
with publisher confirms; the slot is advanced only to the highest end LSN whose
message and every earlier one are confirmed (`confirms.ConfirmTracker`). After a
nack or a lost connection it re-reads the slot from its confirmed position and
publishes again under a new session id (duplicates are no-ops on the target).

Consumer: manual acks, bounded prefetch, batches applied in order with the same
pipeline and writer as the local transport (`CdcSession.apply_decoded`), acked
only after the target transaction with its checkpoint committed; a redelivered
batch is a no-op (checkpoint). Every message names the end LSN of the batch
before it in its session (`x-trempy-prev-end`): a batch whose predecessor is not
applied is a stale copy overtaken by a republish and is dropped (the republish
brings it again, in order).

Failures follow the one error policy (writer/errorpolicy.py): transient errors are
retried with backoff on a fresh connection; bad rows are isolated and recorded or, when a
stop_if_* flag says stop, the batch fails. A failed batch (a flag said stop, or a terminal
error) is not retried (it would fail the same way): it is pinned on its table; that table's
part goes to the DLX with `x-trempy-error`/`x-trempy-attempts`,
the table is *held* (later changes of it are dead-lettered behind it, so order is
kept), and the other tables go on. `replay_dead_letters` puts the DLQ back on the
main queue in order followed by an unblock message; replayed parts are applied with
a per-table checkpoint (`<task>#replay:<schema>.<table>`), so a replay is exactly once.
A malformed or unknown-version message is dead-lettered with the reason, never acked
and dropped, never crashing the consumer.

I/O: each side owns a pika SelectConnection driven by its own I/O thread
(heartbeats keep flowing during long applies); other threads hand it work with
`add_callback_threadsafe`. A lost connection is re-opened with backoff and the
topology declared again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pika
import pika.exceptions
import polars as pl
import psycopg
from psycopg import sql

from trempy_nb import changes as ch
from trempy_nb.errors import ConnectionFailed, TerminalError, TrempyError
from trempy_nb.redact import mask as _mask
from trempy_nb.reports import record_targets
from trempy_nb.transport import codec
from trempy_nb.transport.confirms import ConfirmTracker
from trempy_nb.writer import errorpolicy as policy

log = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # RabbitMQ 3.8+ default max_message_size
DELIVERY_LIMIT = 20  # x-delivery-limit: a net for consumers that crash while holding a batch
DEFAULT_PREFETCH = 4
MAX_INFLIGHT = 8  # published batches awaiting confirms before the producer waits
MARKER_EVERY_S = 5.0
STALE_AFTER_S = 5.0  # idle this long with batches still waiting for a predecessor: see _drop_stale
HEARTBEAT_S = 30
H = "x-trempy-"  # header prefix

_ROLES: dict[
    str, str
] = {}  # task name -> "producer"/"consumer" for a role-only run in this process


# -- names, URL, connection ------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    task: str
    exchange: str
    dlx: str
    queue: str
    dlq: str

    @property
    def routing_key(self) -> str:
        return self.task


def topology(task_name: str) -> Topology:
    return Topology(
        task=task_name,
        exchange=f"trempy_exchange_{task_name}",
        dlx=f"trempy_dlx_exchange_{task_name}",
        queue=f"trempy_queue_{task_name}",
        dlq=f"dlx_queue_{task_name}",
    )


def broker_url(url: str | None = None) -> str:
    return url or os.environ.get("RABBITMQ_URL") or DEFAULT_URL


def mask(text: Any) -> str:
    """`redact.mask` (which knows amqp(s) URLs too)."""
    return _mask(text)


def max_message_bytes() -> int:
    return int(os.environ.get("TREMPY_RABBITMQ_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES))


def _params(url: str) -> pika.URLParameters:
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # noqa: BLE001 - pika raises ValueError/TypeError for bad URLs
        error = ConnectionFailed(f"invalid RabbitMQ URL {mask(url)}: {mask(exc)}")
        error.transient = False  # type: ignore[misc]
        raise error from None
    if "heartbeat=" not in url:
        params.heartbeat = HEARTBEAT_S
    if "connection_attempts=" not in url:
        params.connection_attempts = 1
    if "socket_timeout=" not in url:
        params.socket_timeout = 5
    params.blocked_connection_timeout = 300
    return params


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "authentication failed (wrong user or password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "access denied (unknown virtual host or no permission on it)"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        inner = exc.args[0] if exc.args else None
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
        return f"{type(exc).__name__}: {exc}" if str(exc) else "connection refused or unreachable"
    return f"{type(exc).__name__}: {exc}"


def connect_blocking(url: str | None = None) -> pika.BlockingConnection:
    """A short-lived blocking connection (topology, listing, replay); clear, masked errors."""
    url = broker_url(url)
    try:
        return pika.BlockingConnection(_params(url))
    except (pika.exceptions.AMQPError, OSError) as exc:
        error = ConnectionFailed(
            f"cannot connect to RabbitMQ at {mask(url)}: {mask(_describe(exc))}"
        )
        auth = isinstance(
            exc,
            (
                pika.exceptions.ProbableAuthenticationError,
                pika.exceptions.ProbableAccessDeniedError,
            ),
        )
        error.transient = not auth  # type: ignore[misc]
        raise error from None


def _server_version(conn: Any) -> tuple[int, ...]:
    impl = getattr(conn, "_impl", conn)
    props = getattr(impl, "server_properties", None) or {}
    raw = props.get("version", b"0")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)


def queue_arguments(topo: Topology, quorum: bool, at_least_once: bool) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-dead-letter-exchange": topo.dlx,
        "x-dead-letter-routing-key": topo.routing_key,
    }
    if quorum:
        args |= {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
        if at_least_once:
            args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return args


def declare_topology(conn: pika.BlockingConnection, topo: Topology) -> str:
    """Declare exchanges and queues idempotently; returns the main queue's kind ('quorum'/'classic').

    A main queue that already exists with other arguments is used as it is.
    """
    version = _server_version(conn)
    quorum, at_least_once = version >= (3, 8), version >= (3, 10)
    ch_ = conn.channel()
    ch_.exchange_declare(topo.exchange, exchange_type="direct", durable=True)
    ch_.exchange_declare(topo.dlx, exchange_type="direct", durable=True)
    ch_.queue_declare(topo.dlq, durable=True)
    ch_.queue_bind(topo.dlq, topo.dlx, routing_key=topo.routing_key)
    kind = "quorum" if quorum else "classic"
    try:
        ch_.queue_declare(
            topo.queue, durable=True, arguments=queue_arguments(topo, quorum, at_least_once)
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:  # PRECONDITION_FAILED: exists with other arguments
            raise
        ch_ = conn.channel()
        ch_.queue_declare(topo.queue, passive=True)
        kind = "existing"
    ch_.queue_bind(topo.queue, topo.exchange, routing_key=topo.routing_key)
    with contextlib.suppress(Exception):
        ch_.close()
    return kind


def ensure_topology(task_name: str, url: str | None = None) -> str:
    conn = connect_blocking(url)
    try:
        return declare_topology(conn, topology(task_name))
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def delete_topology(task_name: str, url: str | None = None) -> None:
    """Remove the task's queues and exchanges (idempotent): `trempy-nb drop TASK`."""
    topo = topology(task_name)
    conn = connect_blocking(url)
    try:
        for kind, name in (
            ("queue", topo.queue),
            ("queue", topo.dlq),
            ("exchange", topo.exchange),
            ("exchange", topo.dlx),
        ):
            ch_ = conn.channel()
            try:
                if kind == "queue":
                    ch_.queue_delete(name)
                else:
                    ch_.exchange_delete(name)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # already gone
            with contextlib.suppress(Exception):
                ch_.close()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def purge(task_name: str, url: str | None = None) -> None:
    """Empty the main queue and the DLQ (start_mode reload: their batches belong to the old run)."""
    topo = topology(task_name)
    conn = connect_blocking(url)
    try:
        ch_ = conn.channel()
        for name in (topo.queue, topo.dlq):
            ch_.queue_purge(name)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# -- the I/O thread ----------------------------------------------------------------------------------


@dataclass
class Delivery:
    generation: int
    tag: int
    redelivered: bool
    properties: Any
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


class Link:
    """One SelectConnection + channel in confirm mode, driven by its own I/O thread.

    `generation` increases with every (re)opened channel: delivery tags and the
    confirm tracker belong to one generation, and work handed in for an older
    one is dropped (its messages are republished or redelivered).
    """

    def __init__(
        self,
        url: str,
        topo: Topology,
        *,
        consume: bool = False,
        prefetch: int = DEFAULT_PREFETCH,
        on_log: Callable[[str, str], None] | None = None,
    ) -> None:
        self.url, self.topo = broker_url(url), topo
        self.consume, self.prefetch = consume, prefetch
        self.on_log = on_log or (lambda level, msg: log.log(logging.getLevelName(level), msg))
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.generation = 0
        self.reconnects = 0
        self.queue_kind = ""
        self._ready = threading.Event()
        self._cond = threading.Condition()
        self._trackers: dict[int, ConfirmTracker] = {}
        self._stopping = False
        self._conn: Any = None
        self._channel: Any = None
        self._tag = 0
        self._thread: threading.Thread | None = None
        self._last_error = ""

    # lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Link:
        # connect once synchronously: a wrong URL or password is a clear error at start
        self.queue_kind = ensure_topology(self.topo.task, self.url)
        self._thread = threading.Thread(
            target=self._run, name=f"trempy-amqp-{self.topo.task}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise ConnectionFailed(
                f"RabbitMQ at {mask(self.url)} did not open a channel in {timeout:.0f}s:"
                f" {mask(self._last_error)}"
            )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the connection cleanly (the broker returns unacked messages at once) and end the
        I/O thread. The ioloop stops in `_on_closed`, never before the close handshake: a
        connection left open with no loop behind it would keep holding prefetched messages until
        the broker's heartbeat timeout."""
        self._stopping = True

        def close() -> None:
            conn = self._conn
            if conn is None:
                return
            if conn.is_open:
                conn.close()
            elif conn.is_closed:
                conn.ioloop.stop()

        self._threadsafe(close)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # the close handshake hung: drop the socket
                conn = self._conn
                with contextlib.suppress(Exception):
                    conn.ioloop.add_callback_threadsafe(conn.ioloop.stop)
                self._thread.join(2.0)

    def kill(self) -> None:
        """Drop the connection now (as a broker restart would); the I/O thread reconnects."""
        self._threadsafe(
            lambda: (
                self._conn.close(320, "trempy reset") if self._conn and self._conn.is_open else None
            )
        )

    def _run(self) -> None:
        delay = 0.2
        first = True
        while not self._stopping:
            try:
                if not first:
                    ensure_topology(self.topo.task, self.url)
                first = False
                self._conn = pika.SelectConnection(
                    _params(self.url),
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                )
                self._was_ready = False
                self._conn.ioloop.start()
                if self._was_ready:
                    delay = 0.2
            except Exception as exc:  # noqa: BLE001 - any failure here is retried with backoff
                self._last_error = mask(_describe(exc))
            self._ready.clear()
            self._channel = None
            if self._stopping:
                break
            self.reconnects += 1
            self.on_log(
                "WARNING",
                f"RabbitMQ connection lost ({self._last_error}); reconnecting in {delay:.1f}s",
            )
            end = time.monotonic() + delay
            while time.monotonic() < end and not self._stopping:
                time.sleep(0.05)
            delay = min(delay * 2, 10.0)
        self._ready.clear()

    _was_ready = False

    # callbacks (I/O thread) ---------------------------------------------------------------------
    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, conn: Any, err: BaseException) -> None:
        self._last_error = mask(_describe(err))
        conn.ioloop.stop()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        self._ready.clear()
        if not self._stopping:
            self._last_error = mask(_describe(reason))
        with self._cond:
            self._cond.notify_all()
        conn.ioloop.stop()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        if self.consume:
            self._channel.basic_qos(prefetch_count=self.prefetch, callback=self._on_qos)
        else:
            self._became_ready()

    def _on_qos(self, _frame: Any) -> None:
        self._channel.basic_consume(self.topo.queue, self._on_message, auto_ack=False)
        self._became_ready()

    def _became_ready(self) -> None:
        with self._cond:
            self.generation += 1
            self._tag = 0
            self._trackers = {
                self.generation: ConfirmTracker(),
                **{k: v for k, v in self._trackers.items() if k == self.generation - 1},
            }
            self._cond.notify_all()
        self._was_ready = True
        self._ready.set()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        self._ready.clear()
        self._last_error = mask(_describe(reason))
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _on_return(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        # unroutable (queue deleted under us): reconnect, which declares the topology again
        self.on_log(
            "WARNING", f"message returned by the broker ({method.reply_text}); reconnecting"
        )
        if self._conn is not None and self._conn.is_open:
            self._conn.close(320, "unroutable")

    def _on_confirm(self, frame: Any) -> None:
        m = frame.method
        with self._cond:
            tracker = self._trackers.get(self.generation)
            if tracker is not None:
                if isinstance(m, pika.spec.Basic.Ack):
                    tracker.ack(m.delivery_tag, m.multiple)
                else:
                    tracker.nack(m.delivery_tag, m.multiple)
            self._cond.notify_all()

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self.deliveries.put(
            Delivery(self.generation, method.delivery_tag, method.redelivered, props, body)
        )

    # work handed in by other threads -------------------------------------------------------------
    def _threadsafe(self, fn: Callable[[], None]) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.ioloop.add_callback_threadsafe(fn)
            return True
        except Exception:  # noqa: BLE001 - ioloop closed: the caller's generation is stale anyway
            return False

    def wait_ready(self, stop: Callable[[], bool], timeout: float | None = None) -> int:
        """Block until a channel is open (reconnecting as needed); returns its generation."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if stop() or (end is not None and time.monotonic() > end):
                raise TransientStop(f"RabbitMQ not available: {self._last_error}")
        return self.generation

    def alive(self, generation: int) -> bool:
        return self._ready.is_set() and self.generation == generation

    def publish(
        self,
        generation: int,
        exchange: str,
        parts: list[bytes],
        headers: dict[str, Any],
        end_lsn: int | None,
        message_id: str,
        timeout: float = 30.0,
    ) -> bool:
        """Publish the parts of one batch (persistent); the last part carries `end_lsn` in the tracker.

        Returns once the I/O thread has handed the parts to the broker (True) or found the
        channel gone (False); confirms arrive later (`confirm_state`, `wait_confirms`).
        """
        done = threading.Event()
        sent = [False]

        def do() -> None:
            try:
                if (
                    generation != self.generation
                    or self._channel is None
                    or not self._channel.is_open
                ):
                    return
                self._send(generation, exchange, parts, headers, end_lsn, message_id)
                sent[0] = True
            finally:
                done.set()

        if not self._threadsafe(do):
            return False
        end = time.monotonic() + timeout
        while not done.wait(0.05):
            if time.monotonic() > end or not self._ready.is_set():
                return False
        return sent[0]

    def _send(
        self,
        generation: int,
        exchange: str,
        parts: list[bytes],
        headers: dict[str, Any],
        end_lsn: int | None,
        message_id: str,
    ) -> None:
        n = len(parts)
        for i, part in enumerate(parts):
            props = pika.BasicProperties(
                delivery_mode=2,
                content_type=codec.CONTENT_TYPE,
                message_id=message_id,
                timestamp=int(time.time()),
                headers={**headers, H + "part": i, H + "parts": n},
            )
            self._channel.basic_publish(
                exchange, self.topo.routing_key, part, props, mandatory=True
            )
            self._tag += 1
            with self._cond:
                self._trackers[generation].published(self._tag, end_lsn if i == n - 1 else None)

    def confirm_state(self, generation: int) -> tuple[int | None, bool, int]:
        """(safe end LSN, nacked?, outstanding messages) of a generation's channel."""
        with self._cond:
            t = self._trackers.get(generation)
            if t is None:
                return None, True, 0
            return t.safe_lsn, t.failed, t.outstanding

    def wait_confirms(self, generation: int, timeout: float) -> bool:
        """Every message of `generation` confirmed (True), or nacked/lost/timeout (False)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                t = self._trackers.get(generation)
                if (
                    t is None
                    or t.failed
                    or (generation != self.generation or not self._ready.is_set())
                ):
                    return bool(t is not None and not t.failed and t.outstanding == 0)
                if t.outstanding == 0:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))

    def ack(self, generation: int, tags: list[int]) -> None:
        def do() -> None:
            if (
                generation == self.generation
                and self._channel is not None
                and self._channel.is_open
            ):
                for t in tags:
                    self._channel.basic_ack(t)

        self._threadsafe(do)

    def set_prefetch(self, n: int) -> None:
        def do() -> None:
            if self._channel is not None and self._channel.is_open:
                self._channel.basic_qos(prefetch_count=n)

        self._threadsafe(do)


class TransientStop(TrempyError):
    transient = True


# -- held tables and replay checkpoints on the target --------------------------------------------------

from trempy_nb.writer.ddl import STATE_SCHEMA as _STATE  # noqa: E402


def _held_ddl() -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.rabbitmq_held (task text, schema_name text, table_name text,"
        " since_lsn bigint, held_upto bigint, replay_failed boolean NOT NULL DEFAULT false,"
        " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (task, schema_name, table_name))"
    ).format(sql.Identifier(_STATE))


def replay_checkpoint_name(task: str, key: tuple[str, str]) -> str:
    return f"{task}#replay:{key[0]}.{key[1]}"


@dataclass
class Held:
    since_lsn: int
    held_upto: int
    replay_failed: bool = False


class HeldTables:
    """Tables whose changes wait behind a dead letter (kept on the target: survives restarts)."""

    def __init__(self, target: str, task: str) -> None:
        from trempy_nb.db import connect

        self.target, self.task = target, task
        self._connect = connect
        self.tables: dict[tuple[str, str], Held] = {}
        with connect(target, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(_STATE)))
            conn.execute(_held_ddl())
            for s, t, since, upto, failed in conn.execute(
                sql.SQL(
                    "SELECT schema_name, table_name, since_lsn, held_upto, replay_failed FROM {}.rabbitmq_held"
                    " WHERE task = %s"
                ).format(sql.Identifier(_STATE)),
                (task,),
            ):
                self.tables[(s, t)] = Held(int(since), int(upto), bool(failed))

    def hold(self, key: tuple[str, str], lsn: int, replay_failed: bool | None = None) -> None:
        h = self.tables.get(key)
        h = (
            Held(lsn, lsn)
            if h is None
            else Held(h.since_lsn, max(h.held_upto, lsn), h.replay_failed)
        )
        if replay_failed is not None:
            h.replay_failed = replay_failed
        with self._connect(self.target, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.rabbitmq_held (task, schema_name, table_name, since_lsn, held_upto, replay_failed)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (task, schema_name, table_name) DO UPDATE"
                    " SET held_upto = EXCLUDED.held_upto, replay_failed = EXCLUDED.replay_failed,"
                    " updated_at = now()"
                ).format(sql.Identifier(_STATE)),
                (self.task, key[0], key[1], h.since_lsn, h.held_upto, h.replay_failed),
            )
        self.tables[key] = h

    def release(self, key: tuple[str, str]) -> None:
        with self._connect(self.target, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "DELETE FROM {}.rabbitmq_held WHERE task = %s AND schema_name = %s"
                    " AND table_name = %s"
                ).format(sql.Identifier(_STATE)),
                (self.task, *key),
            )
        self.tables.pop(key, None)


def reset_target_state(target: str, task: str) -> None:
    """start_mode reload: forget held tables and replay checkpoints of the task."""
    from trempy_nb.db import connect

    with connect(target, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(_STATE)))
        conn.execute(_held_ddl())
        conn.execute(
            sql.SQL("DELETE FROM {}.rabbitmq_held WHERE task = %s").format(sql.Identifier(_STATE)),
            (task,),
        )
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                sql.SQL("DELETE FROM {}.checkpoints WHERE task LIKE %s").format(
                    sql.Identifier(_STATE)
                ),
                (task.replace("_", r"\_") + "#%",),
            )


# -- producer ---------------------------------------------------------------------------------------------


@dataclass
class _Shared:
    """State the two sides of a one-process run share."""

    stop: threading.Event
    producer_error: BaseException | None = None
    producer_done: bool = False
    published_batches: int = 0


def produce(
    session: Any,
    *,
    url: str | None = None,
    until_caught_up: bool = False,
    shared: _Shared | None = None,
    link: Link | None = None,
) -> int:
    """Read the slot and publish batches until stopped (or caught up); returns changes published."""
    from trempy_nb.cdc import HEARTBEAT_EVERY_S, STATS_EVERY_S

    topo = topology(session.task.name)
    stop_event: threading.Event = session.stop_event

    def stopping() -> bool:
        return stop_event.is_set() and session.catch_up_target is None

    own_link = link is None
    link = link or Link(broker_url(url), topo, on_log=_logger(session)).start()
    max_part = max_message_bytes()
    published = 0
    reader = None
    try:
        gen = link.wait_ready(stopping)
        reader = session._new_reader()
        run = uuid.uuid4().hex[:12]
        prev_end: int | None = None
        slot_at: int | None = None
        last_beat = last_marker = last_stats = time.monotonic()
        dirty = False  # published since the last marker
        # a producer running alone for good tells consumers alone how far it has published
        # (their --until-caught-up); a catch-up run ends with one final marker instead
        idle_markers = shared is None and not until_caught_up
        marker_at: int | None = None  # flushed WAL position to announce if the next read is empty
        while True:
            if stopping():
                break
            if not link.alive(gen) or link.confirm_state(gen)[1]:
                # lost channel or a nack: confirm what is safe, re-read the rest from the slot
                safe = link.confirm_state(gen)[0]
                if safe is not None and (slot_at is None or safe > slot_at):
                    reader.confirm(safe)
                    slot_at = safe
                if link.alive(gen):
                    link.kill()  # a nack: start over on a fresh channel
                    time.sleep(0.1)
                with contextlib.suppress(Exception):
                    reader.close()
                gen = link.wait_ready(stopping)
                reader = session._new_reader()
                run, prev_end = uuid.uuid4().hex[:12], None
                session.store.log(
                    session.task.name,
                    session.run_id,
                    "WARNING",
                    "RabbitMQ channel reopened: republishing unconfirmed batches from the slot",
                )
                continue
            safe, _, outstanding = link.confirm_state(gen)
            if safe is not None and (slot_at is None or safe > slot_at):
                _crash_point("rmq_after_confirm_before_advance")
                reader.confirm(safe)  # the slot moves only over confirmed batches
                slot_at = safe
            if outstanding >= MAX_INFLIGHT:
                link.wait_confirms(gen, 0.05)
                continue
            if outstanding:
                # gather what the stream brings while the broker confirms: one big batch
                # (one message, one apply transaction), not one per source transaction
                reader.prefetch(0.02)
            batch = reader.read_batch(upto_lsn=session.catch_up_target)
            if batch is None:
                target = session.catch_up_target
                if target is not None and session._flushed_past(target):
                    if not link.wait_confirms(gen, 30.0):
                        continue  # lost or nacked: the loop republishes
                    safe = link.confirm_state(gen)[0]
                    if safe is not None and (slot_at is None or safe > slot_at):
                        reader.confirm(safe)
                        slot_at = safe
                    sent = link.publish(
                        gen,
                        topo.exchange,
                        [b""],
                        _marker_headers(session.task.name, target, final=True),
                        None,
                        f"marker:{run}:{target}",
                    )
                    if sent and link.wait_confirms(gen, 30.0):
                        break
                    continue
                now = time.monotonic()
                if now - last_beat > HEARTBEAT_EVERY_S:
                    session._heartbeat(reader, None)
                    last_beat = now
                if idle_markers and marker_at is not None:
                    # idle: tell consumers alone how far the stream is published
                    link.publish(
                        gen,
                        topo.exchange,
                        [b""],
                        _marker_headers(session.task.name, marker_at),
                        None,
                        f"marker:{run}:{marker_at}",
                    )
                    dirty, last_marker, marker_at = False, now, None
                elif (
                    idle_markers
                    and (dirty or now - last_marker > MARKER_EVERY_S * 6)
                    and now - last_marker > MARKER_EVERY_S / 5
                ):
                    # announced once the next read finds nothing more
                    marker_at = _flush_lsn(session)
                    continue
                session.on_status and session.on_status("streaming")
                stop_event.wait(
                    min(session.settings.task.interval_seconds, 0.05 if outstanding else 1e9)
                )
                if time.monotonic() - last_stats > STATS_EVERY_S:
                    session._refresh_lag()
                    last_stats = time.monotonic()
                continue
            marker_at = None
            payload = codec.encode(batch)
            parts = codec.split(payload, max_part)
            headers = {
                H + "kind": "batch",
                H + "task": session.task.name,
                H + "format": codec.VERSION,
                H + "first-lsn": int(batch.first_lsn),
                H + "end-lsn": int(batch.end_lsn),
                H + "changes": int(batch.n_changes),
                H + "session": run,
            }
            if prev_end is not None:
                headers[H + "prev-end"] = int(prev_end)
            if not link.publish(
                gen, topo.exchange, parts, headers, int(batch.end_lsn), f"{run}:{batch.end_lsn}"
            ):
                if link.alive(gen):
                    link.kill()  # not handed over in time: start over on a fresh channel
                continue  # the reset at the top re-reads it from the slot
            _crash_point("rmq_after_publish_before_confirm")
            prev_end = batch.end_lsn
            published += batch.n_changes
            dirty = True
            if shared is not None:
                shared.published_batches += 1
            last_beat = time.monotonic()
        # stopping: let in-flight confirms land so the slot is where the broker is
        if link.alive(gen) and link.wait_confirms(gen, 10.0):
            safe = link.confirm_state(gen)[0]
            if safe is not None and (slot_at is None or safe > slot_at):
                reader.confirm(safe)
        return published
    finally:
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        if own_link:
            link.stop()


def _crash_point(name: str) -> None:
    from trempy_nb.crash import crash_point

    crash_point(name)


def _marker_headers(task: str, lsn: int, final: bool = False) -> dict[str, Any]:
    """A marker: every change committed (and flushed) before `lsn` is in the queue ahead of it.
    `final`: the end of a producer's --until-caught-up run (with the time it was published)."""
    h: dict[str, Any] = {H + "kind": "marker", H + "task": task, H + "lsn": int(lsn)}
    if final:
        h |= {H + "final": 1, H + "at-ms": int(time.time() * 1000)}
    return h


def _flush_lsn(session: Any) -> int:
    from trempy_nb.db import connect

    with connect(session.source, autocommit=True) as src:
        row = src.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    return ch.lsn_to_int(row[0]) if row else 0


def _logger(session: Any) -> Callable[[str, str], None]:
    def on_log(level: str, message: str) -> None:
        with contextlib.suppress(Exception):
            session.store.log(session.task.name, session.run_id, level, mask(message))
        log.log(logging.getLevelName(level), mask(message))

    return on_log


# -- consumer -----------------------------------------------------------------------------------------------


@dataclass
class _Message:
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def first(self) -> Delivery:
        return self.deliveries[0]

    @property
    def headers(self) -> dict[str, Any]:
        return self.first.headers

    @property
    def tags(self) -> list[int]:
        return [d.tag for d in self.deliveries]

    @property
    def body(self) -> bytes:
        return codec.join([d.body for d in self.deliveries])


class Consumer:
    """Applies batches from the task's queue in order; acks after the target commit."""

    def __init__(
        self, session: Any, *, url: str | None = None, prefetch: int | None = None
    ) -> None:
        self.session = session
        self.task = session.task.name
        self.topo = topology(self.task)
        self.url = broker_url(url)
        self.prefetch = prefetch or int(
            os.environ.get("TREMPY_RABBITMQ_PREFETCH", DEFAULT_PREFETCH)
        )
        self.max_retries = int(session.settings.error_handling.max_retries)
        self.held = HeldTables(session.target, self.task)
        self.applied = 0
        self.link: Link | None = None
        self._tgt: psycopg.Connection | None = None
        self._parts: dict[
            tuple[int, str], dict[int, Delivery]
        ] = {}  # split batches being reassembled
        self._waiting: list[
            tuple[_Message, ch.ChangeBatch]
        ] = []  # batches whose predecessor is not in yet
        self._idle_since = time.monotonic()
        self._prefetch_now = self.prefetch
        self._last_marker: int | None = None
        self._last_final: float | None = None  # publish time of the last final marker seen

    # connections -------------------------------------------------------------------------------
    @property
    def tgt(self) -> psycopg.Connection:
        from trempy_nb.db import connect

        if self._tgt is None or self._tgt.closed or self._tgt.broken:
            self._tgt = connect(
                self.session.target, application_name=f"trempy_nb:{self.task}:consume"
            )
        return self._tgt

    def _reset_tgt(self) -> None:
        if self._tgt is not None:
            with contextlib.suppress(Exception):
                if not self._tgt.closed and not self._tgt.broken:
                    self._tgt.rollback()
                    return
            with contextlib.suppress(Exception):
                self._tgt.close()
            self._tgt = None

    def close(self) -> None:
        if self.link is not None:
            self.link.stop()
        if self._tgt is not None:
            with contextlib.suppress(Exception):
                self._tgt.close()

    # the loop -----------------------------------------------------------------------------------------
    def run(self, *, until_caught_up: bool = False, shared: _Shared | None = None) -> int:
        """Consume until stopped, or (catch-up) until caught up: a marker at or past the catch-up
        target LSN, or the final marker of a producer's catch-up run published after this
        consumer started, is handled with nothing left pending (markers queue behind every batch
        published before them)."""
        session = self.session
        stop_event: threading.Event = session.stop_event
        if until_caught_up and session.catch_up_target is None:
            session.catch_up_target = session._current_lsn()
        started = time.time()

        def stopping() -> bool:
            return stop_event.is_set() and session.catch_up_target is None

        self.link = Link(
            self.url, self.topo, consume=True, prefetch=self.prefetch, on_log=_logger(session)
        ).start()
        try:
            while True:
                if shared is not None and shared.producer_error is not None:
                    raise shared.producer_error
                if stopping():
                    break
                target = session.catch_up_target
                if target is not None and not self._parts and not self._waiting:
                    if (self._last_marker is not None and self._last_marker >= target) or (
                        self._last_final is not None and self._last_final >= started - 1.0
                    ):
                        break
                try:
                    d = self.link.deliveries.get(timeout=0.1)
                except queue.Empty:
                    if self._waiting and time.monotonic() - self._idle_since > STALE_AFTER_S:
                        self._drop_stale()
                    continue
                self._idle_since = time.monotonic()
                if d.generation != self.link.generation:
                    continue  # its channel is gone: the broker redelivers it
                self._forget_older(d.generation)
                msg = self._assemble(d)
                if msg is not None:
                    self._handle(msg)
            return self.applied
        finally:
            self.close()

    def _forget_older(self, generation: int) -> None:
        """Parts and waiting batches delivered on a channel that is gone: their tags mean
        nothing on the new one and the broker delivers them again."""
        self._parts = {k: v for k, v in self._parts.items() if k[0] == generation}
        self._waiting = [w for w in self._waiting if w[0].first.generation == generation]

    def _assemble(self, d: Delivery) -> _Message | None:
        """Collect the parts of a split batch. Parts may come back in any order after a lost
        channel (the broker returns unacked messages unordered), so they are keyed by message id."""
        h = d.headers
        try:
            part, parts = int(h.get(H + "part", 0)), int(h.get(H + "parts", 1))
        except (TypeError, ValueError):
            part, parts = 0, 1
        if parts <= 1:
            return _Message([d])
        assert self.link is not None
        if parts > self._prefetch_now:
            # the prefetch window cannot hold every part (a consumer's qos cannot grow in place):
            # reopen the channel with a larger one; the unacked parts are delivered again
            self._prefetch_now = parts + self.prefetch
            self.link.prefetch = self._prefetch_now
            self.link.kill()
            return None
        key = (d.generation, str(d.properties.message_id))
        got = self._parts.setdefault(key, {})
        got[part] = d
        if len(got) < parts:
            return None
        del self._parts[key]
        return _Message([got[i] for i in range(parts)])

    def _ack(self, msg: _Message) -> None:
        self.link.ack(msg.first.generation, msg.tags)  # type: ignore[union-attr]

    def _handle(self, msg: _Message) -> None:
        h = msg.headers
        kind = h.get(H + "kind", "batch")
        if isinstance(kind, bytes):
            kind = kind.decode(errors="replace")
        if kind == "marker":
            with contextlib.suppress(TypeError, ValueError):
                self._last_marker = max(self._last_marker or 0, int(h.get(H + "lsn", 0)))
                if h.get(H + "final"):
                    self._last_final = int(h.get(H + "at-ms", 0)) / 1000.0
            self._ack(msg)
            return
        if kind == "unblock":
            self._unblock(h)
            self._ack(msg)
            return
        try:
            batch = codec.decode(msg.body)
        except codec.CodecError as exc:
            self._dead_letter_raw(msg, "malformed", str(exc))
            return
        if h.get(H + "replay"):
            self._apply_replay(msg, batch)
        else:
            self._apply_live(msg, batch)

    # live batches -------------------------------------------------------------------------------------
    def _checkpoint(self) -> int | None:
        from trempy_nb.writer.checkpoint import read_checkpoint

        def read() -> int | None:
            try:
                value = read_checkpoint(self.tgt, self.task)
                self.tgt.commit()
                return value
            except psycopg.Error:
                self._reset_tgt()
                raise

        return policy.retry(read, 4, base=0.2, cap=5.0)

    def _apply_live(self, msg: _Message, batch: ch.ChangeBatch) -> None:
        h = msg.headers
        checkpoint = self._checkpoint()
        prev = h.get(H + "prev-end")
        if prev is not None and checkpoint is not None and int(prev) > checkpoint:
            # its predecessor is not applied: it may still come (messages returned after a lost
            # channel arrive unordered), else this is a stale copy overtaken by a republish
            self._waiting.append((msg, batch))
            return
        if checkpoint is not None and batch.end_lsn <= checkpoint:
            self._ack(msg)  # a redelivery or duplicate: already applied
            return
        delivery_count = int(h.get("x-delivery-count", 0) or 0)
        held = [tc for tc in batch.tables if tc.key in self.held.tables]
        rest = [tc for tc in batch.tables if tc.key not in self.held.tables]
        for tc in held:
            self._dead_letter(
                batch,
                [tc],
                "held",
                f"table {tc.schema}.{tc.table} is held behind an earlier dead"
                " letter (replay the dead letters after fixing the cause)",
                0,
            )
        if delivery_count >= DELIVERY_LIMIT - 1:
            for tc in rest:
                self._dead_letter(
                    batch,
                    [tc],
                    "redelivered",
                    f"redelivered {delivery_count} times: consumers"
                    " crashed or lost their connection while applying it",
                    delivery_count,
                )
            rest = []
        self._apply_with_retries(batch, rest, checkpoint_task=None)
        _crash_point("rmq_after_commit_before_ack")
        self._ack(msg)
        self._retry_waiting()

    def _retry_waiting(self) -> None:
        while self._waiting:
            checkpoint = self._checkpoint() or 0
            ready = [
                w for w in self._waiting if int(w[0].headers.get(H + "prev-end", 0)) <= checkpoint
            ]
            if not ready:
                return
            msg, batch = min(ready, key=lambda w: w[1].end_lsn)
            self._waiting.remove((msg, batch))
            self._apply_live(msg, batch)

    def _drop_stale(self) -> None:
        """Idle with batches still waiting for their predecessor. When the slot has not been
        confirmed up to that predecessor, its message never reached the broker (nacked or lost
        with its channel): every batch from the slot position on is published again behind
        these, so they are stale copies and are acked. Otherwise the predecessor is confirmed,
        hence queued (e.g. held by a consumer whose connection the broker has not yet closed):
        keep waiting for it."""
        from trempy_nb.capture.slot import slot_status
        from trempy_nb.db import connect

        with connect(self.session.source, autocommit=True) as src:
            st = slot_status(src, self.session.slot)
        slot_at = int(st.confirmed_flush_lsn or 0) if st is not None else 0
        keep = []
        for msg, batch in self._waiting:
            prev = int(msg.headers.get(H + "prev-end", 0) or 0)
            if prev <= slot_at:
                keep.append((msg, batch))
                continue
            _logger(self.session)(
                "WARNING",
                f"batch ending at {ch.int_to_lsn(batch.end_lsn)} follows a batch that never"
                " reached the broker: a stale copy (it is published again from the slot), dropped",
            )
            self._ack(msg)
        self._waiting = keep
        self._idle_since = time.monotonic()

    def _apply_with_retries(
        self,
        batch: ch.ChangeBatch,
        tables: list[ch.TableChanges],
        checkpoint_task: str | None,
        replay: bool = False,
    ) -> None:
        """Apply `tables` of `batch` (empty: only the checkpoint moves). Transient errors are retried
        with backoff on a fresh connection; a table whose apply fails otherwise (a stop_if_* flag
        said stop, or a terminal error) is dead-lettered and held at once, the others are applied."""
        transient = 0
        current: list[tuple[str, str] | None] = [None]
        while True:
            sub = ch.ChangeBatch(
                batch.first_lsn, batch.end_lsn, tables, batch.n_transactions, batch.source_bytes
            )
            current[0] = None
            try:
                self.session.apply_decoded(
                    sub,
                    self.tgt,
                    checkpoint_task=checkpoint_task,
                    on_table=lambda key: current.__setitem__(0, key),
                )
                self.applied += sub.n_changes
                return
            except Exception as exc:  # noqa: BLE001 - classified below
                self._reset_tgt()
                if policy.is_transient(exc):
                    transient += 1
                    if transient > policy.reconnect_budget(self.max_retries) or self.session.stop_event.is_set():
                        raise
                    time.sleep(policy.backoff(transient, base=0.4, cap=5.0))
                    continue
                key = current[0]
                if key is None:
                    raise  # not any table's fault (checkpoint, commit): stop loudly, redelivered later
                _logger(self.session)(
                    "WARNING",
                    f"batch ending at {ch.int_to_lsn(batch.end_lsn)} failed on {key[0]}.{key[1]}"
                    f" (dead-lettered, table held): {mask(exc)}",
                )
                bad = [tc for tc in tables if tc.key == key]
                self._dead_letter(
                    batch, bad, "replay_failed" if replay else "apply_failed", str(exc), 1 + transient
                )
                tables = [tc for tc in tables if tc.key != key]
                if replay:
                    return

    # replays ---------------------------------------------------------------------------------------------
    def _apply_replay(self, msg: _Message, batch: ch.ChangeBatch) -> None:
        for tc in batch.tables:
            held = self.held.tables.get(tc.key)
            if held is not None and held.replay_failed:
                # an earlier part of this table failed again in this replay: keep the order
                self._dead_letter(
                    batch,
                    [tc],
                    "held",
                    f"table {tc.schema}.{tc.table}: an earlier dead letter"
                    " failed again during the replay",
                    0,
                )
                continue
            self._apply_with_retries(
                batch, [tc], replay_checkpoint_name(self.task, tc.key), replay=True
            )
        self._ack(msg)

    def _unblock(self, h: dict[str, Any]) -> None:
        raw = h.get(H + "replayed") or {}
        for name, upto in raw.items() if isinstance(raw, dict) else []:
            schema, _, table = (name.decode() if isinstance(name, bytes) else name).partition(".")
            key = (schema, table)
            held = self.held.tables.get(key)
            if held is None:
                continue
            if held.replay_failed:
                self.held.hold(key, held.held_upto, replay_failed=False)
                _logger(self.session)(
                    "WARNING", f"{name}: replay failed again; still held (see dead letters)"
                )
            elif held.held_upto <= int(upto):
                self.held.release(key)
                _logger(self.session)("INFO", f"{name}: dead letters replayed, table released")
            else:
                _logger(self.session)(
                    "WARNING", f"{name}: new dead letters arrived during the replay; replay again"
                )

    # dead letters -----------------------------------------------------------------------------------------
    def _dead_letter(
        self,
        batch: ch.ChangeBatch,
        tables: list[ch.TableChanges],
        reason: str,
        error: str,
        attempts: int,
    ) -> None:
        """Publish these tables' part of the batch to the DLX (confirmed) and hold the tables."""
        sub = ch.ChangeBatch(batch.first_lsn, batch.end_lsn, tables, batch.n_transactions, 0)
        names = ",".join(f"{tc.schema}.{tc.table}" for tc in tables)
        headers = {
            H + "kind": "batch",
            H + "task": self.task,
            H + "format": codec.VERSION,
            H + "first-lsn": int(batch.first_lsn),
            H + "end-lsn": int(batch.end_lsn),
            H + "changes": int(sub.n_changes),
            H + "tables": names,
            H + "reason": reason,
            H + "error": mask(error)[:4000],
            H + "attempts": int(attempts),
            H + "dead-at": datetime.now(timezone.utc).isoformat(),
        }
        self._publish_dlx(
            codec.split(codec.encode(sub), max_message_bytes()),
            headers,
            f"dl:{batch.end_lsn}:{names}",
        )
        for tc in tables:
            self.held.hold(
                tc.key, batch.end_lsn, replay_failed=True if reason == "replay_failed" else None
            )
        with contextlib.suppress(Exception):
            self.session.store.record_dead_letter(
                self.task,
                names,
                ch.int_to_lsn(batch.first_lsn),
                ch.int_to_lsn(batch.end_lsn),
                error,
                attempts,
                f"rabbitmq:{self.topo.dlq}",
            )
        with contextlib.suppress(Exception):
            for tc in tables:
                self.session.counters.failed[(f"{tc.schema}.{tc.table}", "dead_letter")] += 1
        _logger(self.session)(
            "ERROR",
            f"{names}: batch ending at {ch.int_to_lsn(batch.end_lsn)} dead-lettered"
            f" ({reason}, {attempts} attempt(s)): {error}",
        )

    def _dead_letter_raw(self, msg: _Message, reason: str, error: str) -> None:
        """A message we cannot read: to the DLX as it is, with the reason; then acked."""
        h = {k: v for k, v in msg.headers.items() if not k.startswith("x-death")}
        h |= {
            H + "reason": reason,
            H + "error": mask(error)[:4000],
            H + "attempts": 0,
            H + "dead-at": datetime.now(timezone.utc).isoformat(),
            H + "task": self.task,
        }
        self._publish_dlx(
            [d.body for d in msg.deliveries], h, msg.first.properties.message_id or uuid.uuid4().hex
        )
        with contextlib.suppress(Exception):
            self.session.store.record_dead_letter(
                self.task, None, None, None, f"{reason}: {error}", 0, f"rabbitmq:{self.topo.dlq}"
            )
        _logger(self.session)("ERROR", f"unreadable message dead-lettered ({reason}): {error}")
        self._ack(msg)

    def _publish_dlx(self, parts: list[bytes], headers: dict[str, Any], message_id: str) -> None:
        link = self.link
        assert link is not None
        for _ in range(50):
            gen = link.wait_ready(lambda: False, timeout=60.0)
            sent = link.publish(gen, self.topo.dlx, parts, headers, None, message_id)
            if sent and link.wait_confirms(gen, 30.0):
                return
        raise TerminalError("could not dead-letter a batch: the broker did not confirm it")


# -- one process, two threads -----------------------------------------------------------------------------


def stream_session(session: Any, until_caught_up: bool = False) -> int:
    """`CdcSession.stream()` for transport rabbitmq: producer and/or consumer (role-only runs)."""
    role = _ROLES.get(session.task.name, "both")
    if until_caught_up and session.catch_up_target is None:
        session.catch_up_target = session._current_lsn()
    if session.settings.task.start_mode == "reload" and role in ("both", "producer"):
        ensure_topology(session.task.name)
        purge(session.task.name)  # batches of the previous run; the slot and checkpoint were reset
        reset_target_state(session.target, session.task.name)
    if role == "producer":
        return produce(session, until_caught_up=until_caught_up)
    shared = _Shared(stop=session.stop_event)

    def producer() -> None:
        try:
            produce(session, until_caught_up=until_caught_up, shared=shared)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread, re-raised there
            shared.producer_error = exc
        finally:
            shared.producer_done = True

    consumer = Consumer(session)
    thread = threading.Thread(
        target=producer, name=f"trempy-producer-{session.task.name}", daemon=True
    )
    thread.start()
    try:
        return consumer.run(until_caught_up=until_caught_up, shared=shared)
    finally:
        session.stop_event.set()
        session.catch_up_target = None  # the consumer is done: let the producer stop now
        thread.join(60)
        if shared.producer_error is not None and not isinstance(
            shared.producer_error, TransientStop
        ):
            raise shared.producer_error


def run_role(task: Any, role: str, until_caught_up: bool = False, progress: bool = True) -> int:
    """`trempy-nb run SETTINGS --role producer|consumer`: one side of the transport alone."""
    if role not in ("producer", "consumer"):
        raise TerminalError(f"unknown role {role!r} (producer or consumer)")
    if task.settings.task.transport != "rabbitmq":
        raise TerminalError(
            f"--role needs transport rabbitmq (task {task.name} uses {task.settings.task.transport})"
        )
    if role == "producer":
        from trempy_nb.runner import Runner

        _ROLES[task.name] = "producer"
        try:
            runner = Runner(task, until_caught_up=until_caught_up, progress=progress).start()
            try:
                result = runner.wait()
            except KeyboardInterrupt:
                result = runner.stop()
            return 0 if result is not None else 1
        finally:
            _ROLES.pop(task.name, None)
    runner = ConsumerRunner(task, until_caught_up=until_caught_up).start()
    try:
        runner.wait()
    except KeyboardInterrupt:
        runner.stop()
    return 0


class ConsumerRunner:
    """The consumer side alone in a background thread (no slot, no task lock: the producer holds those)."""

    def __init__(
        self,
        task: Any,
        *,
        until_caught_up: bool = False,
        url: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        from trempy_nb.runner import Counters

        self.task, self.until_caught_up, self.url, self.prefetch = (
            task,
            until_caught_up,
            url,
            prefetch,
        )
        self.counters = Counters()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.applied = 0
        self.session: Any = None
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    def start(self) -> ConsumerRunner:
        self._thread = threading.Thread(
            target=self._main, name=f"trempy-consumer-{self.task.name}", daemon=True
        )
        self._thread.start()
        return self

    def _main(self) -> None:
        from trempy_nb.cdc import CdcSession
        from trempy_nb.metadata import MetadataStore
        from trempy_nb.writer.ddl import ensure_state_tables

        store = MetadataStore()
        run_id = store.start_run(self.task.name, self.task.settings.task.replication_type)
        try:
            record_targets(store, self.task.settings, self.task.plans)  # what `history NAME` reads
            self.session = CdcSession(
                self.task,
                self.task.plans,
                self.task.source_uri,
                self.task.target_uri,
                store=store,
                run_id=run_id,
                counters=self.counters,
                stop=self.stop_event,
            )
            from trempy_nb.db import connect

            with connect(self.session.target) as tgt:
                ensure_state_tables(tgt)
                tgt.commit()
            consumer = Consumer(self.session, url=self.url, prefetch=self.prefetch)
            self.ready.set()
            self.applied = consumer.run(until_caught_up=self.until_caught_up)
            store.end_run(run_id, "succeeded" if self.until_caught_up else "stopped")
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by wait()
            self.error = (
                exc
                if isinstance(exc, TrempyError)
                else TrempyError(mask(f"{type(exc).__name__}: {exc}"))
            )
            with contextlib.suppress(Exception):
                store.end_run(run_id, "failed", mask(str(self.error)))
        finally:
            if self.session is not None:
                self.session.close()
            self.ready.set()

    def stop(self, timeout: float = 60.0) -> int:
        self.stop_event.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> int:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.applied

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())


# -- dead letters: list and replay ---------------------------------------------------------------------


_DL_SCHEMA = {
    "task": pl.String,
    "table": pl.String,
    "first_lsn": pl.String,
    "end_lsn": pl.String,
    "changes": pl.Int64,
    "error": pl.String,
    "reason": pl.String,
    "attempts": pl.Int64,
    "time": pl.Datetime("us", "UTC"),
    "parts": pl.Int64,
}


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _lsn_text(v: Any) -> str | None:
    try:
        return ch.int_to_lsn(int(v)) if v is not None else None
    except (TypeError, ValueError):
        return _text(v)


def _peek_all(ch_: Any, queue_name: str) -> list[tuple[Any, Any, bytes]]:
    out = []
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
            reason = _text(h.get(H + "reason")) or _text(death.get("reason"))
            when = _text(h.get(H + "dead-at"))
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
                    "task": _text(h.get(H + "task")) or name,
                    "table": _text(h.get(H + "tables")),
                    "first_lsn": _lsn_text(h.get(H + "first-lsn")),
                    "end_lsn": _lsn_text(h.get(H + "end-lsn")),
                    "changes": int(h.get(H + "changes", 0) or 0),
                    "error": _text(h.get(H + "error"))
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
                for t in (_text(h.get(H + "tables")) or "").split(","):
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


def queue_depth(task_name: str, url: str | None = None) -> tuple[int, int]:
    """(messages in the main queue, messages in the DLQ)."""
    topo = topology(task_name)
    conn = connect_blocking(url)
    try:
        ch_ = conn.channel()
        a = ch_.queue_declare(topo.queue, passive=True).method.message_count
        b = ch_.queue_declare(topo.dlq, passive=True).method.message_count
        return int(a), int(b)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


__all__ = [
    "ConsumerRunner",
    "Link",
    "Topology",
    "broker_url",
    "dead_letters",
    "delete_topology",
    "ensure_topology",
    "produce",
    "purge",
    "queue_arguments",
    "replay_dead_letters",
    "run_role",
    "stream_session",
    "topology",
]
