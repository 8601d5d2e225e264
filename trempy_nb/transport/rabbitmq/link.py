"""The pika I/O link: one SelectConnection + confirm-mode channel driven by its own I/O thread.

Heartbeats keep flowing during long applies because no other thread ever blocks
the I/O loop; other threads hand it work with `add_callback_threadsafe`. A lost
connection is re-opened with backoff and the topology declared again. Publisher
confirms are kept per channel generation in a `ConfirmTracker`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.spec

from trempy_nb.errors import ConnectionFailed, TrempyError
from trempy_nb.transport.base import StreamHooks
from trempy_nb.transport.rabbitmq import codec
from trempy_nb.transport.rabbitmq.confirms import ConfirmTracker
from trempy_nb.transport.rabbitmq.headers import H
from trempy_nb.transport.rabbitmq.topology import (
    LEGACY_QUEUE_HINT,
    WITHOUT_SAC,
    Topology,
    broker_url,
    describe_error,
    ensure_topology,
    mask,
    url_parameters,
)

log = logging.getLogger("trempy_nb.transport.rabbitmq")

DEFAULT_PREFETCH = 4


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
        if self.consume and self.queue_kind in (WITHOUT_SAC, "existing"):
            self.on_log("WARNING", f"queue {self.topo.queue} {LEGACY_QUEUE_HINT}")
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
                    url_parameters(self.url),
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                )
                self._was_ready = False
                self._conn.ioloop.start()
                if self._was_ready:
                    delay = 0.2
            except Exception as exc:  # noqa: BLE001 - any failure here is retried with backoff
                self._last_error = mask(describe_error(exc))
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
        self._last_error = mask(describe_error(err))
        conn.ioloop.stop()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        self._ready.clear()
        if not self._stopping:
            self._last_error = mask(describe_error(reason))
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
        self._last_error = mask(describe_error(reason))
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



def logger(hooks: StreamHooks) -> Callable[[str, str], None]:
    """Log to the run's metadata (through the engine) and to Python logging; masked, never raising."""

    def on_log(level: str, message: str) -> None:
        with contextlib.suppress(Exception):
            hooks.log(level, mask(message))
        log.log(logging.getLevelName(level), mask(message))

    return on_log
