"""The task's broker objects: names, URL and connection parameters, declare/delete/purge/depth.

Topology per task (public names, see docs/rabbitmq.md):

    trempy_exchange_<task>      direct, durable: batches are published here
    trempy_queue_<task>         quorum queue (x-delivery-limit, at-least-once dead-lettering,
                                reject-publish) where the broker supports it, else a durable
                                classic queue; single active consumer (standby consumers of
                                other workers wait; the broker hands over, in order, when the
                                active one's connection dies); dead-letters to the DLX
    trempy_dlx_exchange_<task>  direct, durable: the dead-letter exchange
    dlx_queue_<task>            durable: batches given up, with the error and attempts in headers
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from trempy_nb.errors import ConnectionFailed
from trempy_nb.redact import mask as _mask

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # RabbitMQ 3.8+ default max_message_size
DELIVERY_LIMIT = 20  # x-delivery-limit: a net for consumers that crash while holding a batch
HEARTBEAT_S = 30
#: `declare_topology`'s kind for a main queue declared before single-active-consumer (it cannot
#: be changed in place: a queue's arguments are fixed at creation)
WITHOUT_SAC = "existing-without-sac"
LEGACY_QUEUE_HINT = (
    "was declared without x-single-active-consumer (by an older trempy_nb): its arguments cannot"
    " change in place, so a second consumer would share its batches instead of waiting. Run one"
    " consumer per task (a fleet lease does that), or stop the task, let the queue drain, delete it"
    " (`trempy-nb drop TASK` removes the task's broker objects) and start again"
)


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


def url_parameters(url: str) -> pika.URLParameters:
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # noqa: BLE001 - pika raises ValueError/TypeError for bad URLs
        error = ConnectionFailed(f"invalid RabbitMQ URL {mask(url)}: {mask(exc)}")
        error.transient = False
        raise error from None
    if "heartbeat=" not in url:
        params.heartbeat = HEARTBEAT_S
    if "connection_attempts=" not in url:
        params.connection_attempts = 1
    if "socket_timeout=" not in url:
        params.socket_timeout = 5
    params.blocked_connection_timeout = 300
    return params


def describe_error(exc: BaseException) -> str:
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
        return pika.BlockingConnection(url_parameters(url))
    except (pika.exceptions.AMQPError, OSError) as exc:
        error = ConnectionFailed(
            f"cannot connect to RabbitMQ at {mask(url)}: {mask(describe_error(exc))}"
        )
        auth = isinstance(
            exc,
            (
                pika.exceptions.ProbableAuthenticationError,
                pika.exceptions.ProbableAccessDeniedError,
            ),
        )
        error.transient = not auth
        raise error from None


def _server_version(conn: Any) -> tuple[int, ...]:
    impl = getattr(conn, "_impl", conn)
    props = getattr(impl, "server_properties", None) or {}
    raw = props.get("version", b"0")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)


def queue_arguments(
    topo: Topology, quorum: bool, at_least_once: bool, single_active: bool = True
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-dead-letter-exchange": topo.dlx,
        "x-dead-letter-routing-key": topo.routing_key,
    }
    if single_active:  # RabbitMQ 3.8+, classic and quorum queues
        args["x-single-active-consumer"] = True
    if quorum:
        args |= {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
        if at_least_once:
            args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return args


def declare_topology(conn: pika.BlockingConnection, topo: Topology) -> str:
    """Declare exchanges and queues idempotently; returns the main queue's kind: 'quorum' or
    'classic'; `WITHOUT_SAC` for one declared with today's arguments but no single active consumer
    (see `LEGACY_QUEUE_HINT`); 'existing' for one with other arguments, used as it is.
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
            topo.queue, durable=True, arguments=queue_arguments(topo, quorum, at_least_once, quorum)
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:  # PRECONDITION_FAILED: exists with other arguments
            raise
        ch_ = conn.channel()
        try:  # the same arguments without single-active-consumer: a queue from before the fleet
            ch_.queue_declare(
                topo.queue, durable=True, arguments=queue_arguments(topo, quorum, at_least_once, False)
            )
            kind = WITHOUT_SAC
        except pika.exceptions.ChannelClosedByBroker as exc2:
            if exc2.reply_code != 406:
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

