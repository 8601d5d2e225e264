"""The producer: reads whole transactions from the slot and publishes one persistent message per batch.

Publisher confirms decide how far the slot may move: the source's checkpoint is
the confirm tracker's *safe LSN*, the highest end LSN whose message and every
earlier one the broker confirmed (`confirms.ConfirmTracker`). After a nack or a
lost channel the publisher confirms what is safe, re-reads the slot from there
and publishes again under a new session id (duplicates are no-ops on the
target; a consumer drops copies overtaken by the republish, see `headers`).

A producer running alone for good publishes *markers* while idle (how far the
stream is published), so consumers alone can tell when they caught up; a
catch-up run ends with one final marker instead.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass

from trempy_nb.changes import ChangeBatch
from trempy_nb.crash import crash_point
from trempy_nb.transport.base import HEARTBEAT_EVERY_S, STATS_EVERY_S, ChangeSource, StreamContext
from trempy_nb.transport.rabbitmq import codec
from trempy_nb.transport.rabbitmq.headers import batch_headers, marker_headers
from trempy_nb.transport.rabbitmq.link import Link, logger
from trempy_nb.transport.rabbitmq.topology import broker_url, max_message_bytes, topology

MAX_INFLIGHT = 8  # published batches awaiting confirms before the producer waits
MARKER_EVERY_S = 5.0


@dataclass
class Shared:
    """State the two sides of a one-process run share."""

    stop: threading.Event
    producer_error: BaseException | None = None
    producer_done: bool = False
    published_batches: int = 0


class Publisher:
    """One producer run: the slot to the exchange, the slot confirmed only over confirmed batches."""

    def __init__(self, ctx: StreamContext, *, url: str | None = None, shared: Shared | None = None,
                 link: Link | None = None) -> None:
        self.ctx, self.hooks = ctx, ctx.hooks
        self.topo = topology(ctx.task)
        self.url, self.shared = url, shared
        self.link = link
        self._own_link = link is None
        self.max_part = max_message_bytes()
        self.published = 0  # changes published
        self.source: ChangeSource | None = None
        self.generation = 0  # the link's channel the tracker belongs to
        self.session = ""  # this publishing session's id (x-trempy-session)
        self.prev_end: int | None = None  # end LSN of the last batch published in this session
        self.slot_at: int | None = None  # how far the slot was confirmed
        now = time.monotonic()
        self.last_beat = self.last_marker = self.last_stats = now
        self.dirty = False  # published since the last marker
        # a producer running alone for good tells consumers alone how far it has published
        # (their --until-caught-up); a catch-up run ends with one final marker instead
        self.idle_markers = shared is None and not ctx.until_caught_up
        self.marker_at: int | None = None  # flushed WAL position to announce if the next read is empty

    def run(self) -> int:
        """Read the slot and publish until stopped (or caught up); returns changes published."""
        link = self.link = self.link or Link(broker_url(self.url), self.topo, on_log=logger(self.hooks)).start()
        try:
            self.generation = link.wait_ready(self.ctx.stopping)
            self.source = self.hooks.new_source()
            self.session = uuid.uuid4().hex[:12]
            while not self.ctx.stopping():
                if not link.alive(self.generation) or link.confirm_state(self.generation)[1]:
                    self._republish()
                    continue
                outstanding = self._confirm_safe(crash=True)
                if outstanding >= MAX_INFLIGHT:
                    link.wait_confirms(self.generation, 0.05)
                    continue
                if outstanding:
                    # gather what the stream brings while the broker confirms: one big batch
                    # (one message, one apply transaction), not one per source transaction
                    self.source.prefetch(0.02)
                batch = self.source.read_batch(upto_lsn=self.ctx.until.target)
                if batch is not None:
                    self._publish(batch)
                elif self._idle(outstanding):
                    break
            # stopping: let in-flight confirms land so the slot is where the broker is
            if link.alive(self.generation) and link.wait_confirms(self.generation, 10.0):
                self._confirm_safe()
            return self.published
        finally:
            if self.source is not None:
                with contextlib.suppress(Exception):
                    self.source.close()
            if self._own_link:
                link.stop()

    # steps -----------------------------------------------------------------------------------
    def _confirm_safe(self, crash: bool = False) -> int:
        """The checkpoint: confirm the slot up to the tracker's safe LSN; returns the messages
        still awaiting a confirm."""
        assert self.link is not None and self.source is not None
        safe, _, outstanding = self.link.confirm_state(self.generation)
        if safe is not None and (self.slot_at is None or safe > self.slot_at):
            if crash:
                crash_point("rmq_after_confirm_before_advance")
            self.source.confirm(safe)  # the slot moves only over confirmed batches
            self.slot_at = safe
        return outstanding

    def _republish(self) -> None:
        """Lost channel or a nack: confirm what is safe, re-read the rest from the slot."""
        link, source = self.link, self.source
        assert link is not None and source is not None
        self._confirm_safe()
        if link.alive(self.generation):
            link.kill()  # a nack: start over on a fresh channel
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            source.close()
        self.generation = link.wait_ready(self.ctx.stopping)
        self.source = self.hooks.new_source()
        self.session, self.prev_end = uuid.uuid4().hex[:12], None
        self.hooks.log("WARNING", "RabbitMQ channel reopened: republishing unconfirmed batches from the slot")

    def _publish(self, batch: ChangeBatch) -> None:
        link = self.link
        assert link is not None
        self.marker_at = None
        parts = codec.split(codec.encode(batch), self.max_part)
        headers = batch_headers(self.ctx.task, batch, self.session, self.prev_end)
        if not link.publish(self.generation, self.topo.exchange, parts, headers, int(batch.end_lsn),
                            f"{self.session}:{batch.end_lsn}"):
            if link.alive(self.generation):
                link.kill()  # not handed over in time: start over on a fresh channel
            return  # the republish at the top of the loop re-reads it from the slot
        crash_point("rmq_after_publish_before_confirm")
        self.prev_end = batch.end_lsn
        self.published += batch.n_changes
        self.dirty = True
        if self.shared is not None:
            self.shared.published_batches += 1
        self.last_beat = time.monotonic()

    def _idle(self, outstanding: int) -> bool:
        """Nothing to read now: end a catch-up run (True), or heartbeat, mark and wait."""
        link, ctx = self.link, self.ctx
        assert link is not None
        target = ctx.until.target
        if target is not None and self.hooks.flushed_past(target):
            if not link.wait_confirms(self.generation, 30.0):
                return False  # lost or nacked: the loop republishes
            self._confirm_safe()
            sent = link.publish(self.generation, self.topo.exchange, [b""],
                                marker_headers(ctx.task, target, final=True), None,
                                f"marker:{self.session}:{target}")
            return bool(sent and link.wait_confirms(self.generation, 30.0))
        now = time.monotonic()
        if now - self.last_beat > HEARTBEAT_EVERY_S:
            self.hooks.heartbeat()
            self.last_beat = now
        if self.idle_markers and self.marker_at is not None:
            # idle: tell consumers alone how far the stream is published
            link.publish(self.generation, self.topo.exchange, [b""], marker_headers(ctx.task, self.marker_at),
                         None, f"marker:{self.session}:{self.marker_at}")
            self.dirty, self.last_marker, self.marker_at = False, now, None
        elif (
            self.idle_markers
            and (self.dirty or now - self.last_marker > MARKER_EVERY_S * 6)
            and now - self.last_marker > MARKER_EVERY_S / 5
        ):
            self.marker_at = self.hooks.flush_lsn()  # announced once the next read finds nothing more
            return False
        self.hooks.status("streaming")
        ctx.stop.wait(min(ctx.settings.task.interval_seconds, 0.05 if outstanding else 1e9))
        if time.monotonic() - self.last_stats > STATS_EVERY_S:
            self.hooks.refresh_lag()
            self.last_stats = time.monotonic()
        return False


def produce(ctx: StreamContext, *, url: str | None = None, shared: Shared | None = None,
            link: Link | None = None) -> int:
    """Read the slot and publish batches until stopped (or caught up); returns changes published."""
    return Publisher(ctx, url=url, shared=shared, link=link).run()
