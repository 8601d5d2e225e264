"""The RabbitMQ transport: capture (producer) and apply (consumer) decoupled by a durable broker.

One module per concern:

    topology     the task's exchanges and queues: names, URL, declare, delete, purge, depth
    link         the pika I/O thread (one SelectConnection + confirm-mode channel)
    headers      what the x-trempy-* headers of a batch, marker or dead letter say (pure)
    codec        the wire format of a batch (Arrow IPC, split into parts; pure)
    confirms     publisher-confirm bookkeeping: the safe LSN the slot may move to (pure)
    publisher    the producer: slot -> exchange, the slot confirmed over confirmed batches only
    consumer     the consumer: queue -> the engine's sink, in order, acked after the commit
    held         tables held behind a dead letter, replay checkpoints (on the target)
    deadletters  dead-lettering, listing and replaying the DLQ

`RabbitMqTransport.run` plays a role: both sides in one process (the producer in
a thread of its own), or the producer or the consumer alone (`trempy-nb run
--role`). See docs/rabbitmq.md for the topology and the delivery guarantees.
"""

from __future__ import annotations

import threading

from trempy_nb.errors import TerminalError
from trempy_nb.transport.base import ChangeSink, Role, StreamContext
from trempy_nb.transport.rabbitmq import codec, confirms
from trempy_nb.transport.rabbitmq.consumer import STALE_AFTER_S, Consumer
from trempy_nb.transport.rabbitmq.deadletters import _peek_all, dead_letters, replay_dead_letters
from trempy_nb.transport.rabbitmq.headers import H
from trempy_nb.transport.rabbitmq.held import HeldTables, replay_checkpoint_name, reset_target_state
from trempy_nb.transport.rabbitmq.link import DEFAULT_PREFETCH, Delivery, Link, TransientStop
from trempy_nb.transport.rabbitmq.publisher import (
    MARKER_EVERY_S,
    MAX_INFLIGHT,
    Publisher,
    Shared,
    produce,
)
from trempy_nb.transport.rabbitmq.topology import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_URL,
    DELIVERY_LIMIT,
    HEARTBEAT_S,
    Topology,
    broker_url,
    connect_blocking,
    declare_topology,
    delete_topology,
    ensure_topology,
    mask,
    max_message_bytes,
    purge,
    queue_arguments,
    queue_depth,
    topology,
)


class RabbitMqTransport:
    """Producer and/or consumer of one task's stream through its broker queue."""

    sink_name = "consume"

    def __init__(self, url: str | None = None, prefetch: int | None = None) -> None:
        self.url, self.prefetch = url, prefetch

    def run(self, role: Role, ctx: StreamContext, sink: ChangeSink | None) -> int:
        """Stream until stopped or caught up; returns changes published (producer) or applied."""
        if ctx.until_caught_up and ctx.until.target is None:
            ctx.until.target = ctx.hooks.current_lsn()
        if role == "consumer":
            return Consumer(ctx, _needs(sink), url=self.url, prefetch=self.prefetch).run()
        if ctx.settings.task.start_mode == "reload":
            ensure_topology(ctx.task, self.url)
            purge(ctx.task, self.url)  # batches of the previous run; the slot and checkpoint were reset
            reset_target_state(ctx.target, ctx.task, ctx.dialect, ctx.fence)
        if role == "producer":
            return produce(ctx, url=self.url)
        return self._both(ctx, _needs(sink))

    def _both(self, ctx: StreamContext, sink: ChangeSink) -> int:
        """One process, two threads: the producer publishes, this thread consumes."""
        shared = Shared(stop=ctx.stop)

        def producer() -> None:
            try:
                produce(ctx, url=self.url, shared=shared)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread, re-raised there
                shared.producer_error = exc
            finally:
                shared.producer_done = True

        consumer = Consumer(ctx, sink, url=self.url, prefetch=self.prefetch)
        thread = threading.Thread(target=producer, name=f"trempy-producer-{ctx.task}", daemon=True)
        thread.start()
        try:
            return consumer.run(shared=shared)
        finally:
            ctx.stop.set()
            ctx.until.target = None  # the consumer is done: let the producer stop now
            thread.join(60)
            if shared.producer_error is not None and not isinstance(shared.producer_error, TransientStop):
                raise shared.producer_error


def _needs(sink: ChangeSink | None) -> ChangeSink:
    if sink is None:
        raise TerminalError("the rabbitmq consumer needs a sink to apply batches to")
    return sink


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PREFETCH",
    "DEFAULT_URL",
    "DELIVERY_LIMIT",
    "H",
    "HEARTBEAT_S",
    "MARKER_EVERY_S",
    "MAX_INFLIGHT",
    "STALE_AFTER_S",
    "Consumer",
    "Delivery",
    "HeldTables",
    "Link",
    "Publisher",
    "RabbitMqTransport",
    "Shared",
    "Topology",
    "TransientStop",
    "_peek_all",
    "broker_url",
    "codec",
    "confirms",
    "connect_blocking",
    "dead_letters",
    "declare_topology",
    "delete_topology",
    "ensure_topology",
    "mask",
    "max_message_bytes",
    "produce",
    "purge",
    "queue_arguments",
    "queue_depth",
    "replay_checkpoint_name",
    "replay_dead_letters",
    "reset_target_state",
    "topology",
]
