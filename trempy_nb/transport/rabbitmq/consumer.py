"""The consumer: applies batches from the task's queue in order; acks after the target commit.

Manual acks, bounded prefetch; batches go to the engine's `ChangeSink` (the same
pipeline and writer as the local transport) and are acked only after the target
transaction with their checkpoint committed; a redelivered batch is a no-op
(checkpoint). Every message names the end LSN of the batch before it in its
session (`x-trempy-prev-end`): a batch whose predecessor is not applied waits for
it, or is a stale copy overtaken by a republish and is dropped (the republish
brings it again, in order).

Failures follow the one error policy (writer/errorpolicy.py): transient errors
are retried with backoff on a fresh connection; a table whose apply fails
otherwise is dead-lettered and held (`deadletters`, `held`), and the other tables
go on. Replayed dead letters are applied with a per-table checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from dataclasses import dataclass, field

from trempy_nb import changes as ch
from trempy_nb.crash import crash_point
from trempy_nb.transport.base import ChangeSink, StreamContext
from trempy_nb.transport.rabbitmq import codec
from trempy_nb.transport.rabbitmq.deadletters import DeadLetterer
from trempy_nb.transport.rabbitmq.headers import H, Headers, kind, part_of
from trempy_nb.transport.rabbitmq.held import HeldTables, replay_checkpoint_name
from trempy_nb.transport.rabbitmq.link import DEFAULT_PREFETCH, Delivery, Link, logger
from trempy_nb.transport.rabbitmq.publisher import Shared
from trempy_nb.transport.rabbitmq.topology import DELIVERY_LIMIT, broker_url, mask, topology
from trempy_nb.writer import errorpolicy as policy

STALE_AFTER_S = 5.0  # idle this long with batches still waiting for a predecessor: see _drop_stale


@dataclass
class _Message:
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def first(self) -> Delivery:
        return self.deliveries[0]

    @property
    def headers(self) -> Headers:
        return self.first.headers

    @property
    def tags(self) -> list[int]:
        return [d.tag for d in self.deliveries]

    @property
    def body(self) -> bytes:
        return codec.join([d.body for d in self.deliveries])


class Consumer:
    """Applies batches from the task's queue in order; acks after the target commit."""

    def __init__(self, ctx: StreamContext, sink: ChangeSink, *, url: str | None = None,
                 prefetch: int | None = None) -> None:
        self.ctx, self.hooks, self.sink = ctx, ctx.hooks, sink
        self.task = ctx.task
        self.topo = topology(self.task)
        self.url = broker_url(url)
        self.prefetch = prefetch or int(os.environ.get("TREMPY_RABBITMQ_PREFETCH", DEFAULT_PREFETCH))
        self.max_retries = int(ctx.settings.error_handling.max_retries)
        self.held = HeldTables(ctx.target, self.task, ctx.dialect, ctx.fence)
        self.applied = 0
        self.link: Link | None = None
        self.log = logger(self.hooks)
        self.dead = DeadLetterer(ctx, self.topo, self.held, lambda: self.link)
        self._parts: dict[tuple[int, str], dict[int, Delivery]] = {}  # split batches being reassembled
        self._waiting: list[tuple[_Message, ch.ChangeBatch]] = []  # batches whose predecessor is not in yet
        self._idle_since = time.monotonic()
        self._prefetch_now = self.prefetch
        self._last_marker: int | None = None
        self._last_final: float | None = None  # publish time of the last final marker seen

    def close(self) -> None:
        if self.link is not None:
            self.link.stop()

    # the loop -----------------------------------------------------------------------------------------
    def run(self, *, shared: Shared | None = None) -> int:
        """Consume until stopped, or (catch-up) until caught up: a marker at or past the catch-up
        target LSN, or the final marker of a producer's catch-up run published after this
        consumer started, is handled with nothing left pending (markers queue behind every batch
        published before them)."""
        ctx = self.ctx
        if ctx.until_caught_up and ctx.until.target is None:
            ctx.until.target = self.hooks.current_lsn()
        started = time.time()
        self.link = Link(self.url, self.topo, consume=True, prefetch=self.prefetch,
                         on_log=logger(self.hooks)).start()
        try:
            while True:
                if shared is not None and shared.producer_error is not None:
                    raise shared.producer_error
                if ctx.stopping():
                    break
                target = ctx.until.target
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
        part, parts = part_of(d.headers)
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
        assert self.link is not None
        self.link.ack(msg.first.generation, msg.tags)

    def _handle(self, msg: _Message) -> None:
        h = msg.headers
        what = kind(h)
        if what == "marker":
            with contextlib.suppress(TypeError, ValueError):
                self._last_marker = max(self._last_marker or 0, int(h.get(H + "lsn", 0)))
                if h.get(H + "final"):
                    self._last_final = int(h.get(H + "at-ms", 0)) / 1000.0
            self._ack(msg)
            return
        if what == "unblock":
            self._unblock(h)
            self._ack(msg)
            return
        try:
            batch = codec.decode(msg.body)
        except codec.CodecError as exc:
            self.dead.unreadable(msg.deliveries, msg.headers, "malformed", str(exc))
            self._ack(msg)
            return
        if h.get(H + "replay"):
            self._apply_replay(msg, batch)
        else:
            self._apply_live(msg, batch)

    # live batches -------------------------------------------------------------------------------------
    def _checkpoint(self) -> int | None:
        return policy.retry(self.sink.durable_lsn, 4, base=0.2, cap=5.0)

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
            self.dead.batch(
                batch,
                [tc],
                "held",
                f"table {tc.schema}.{tc.table} is held behind an earlier dead"
                " letter (replay the dead letters after fixing the cause)",
                0,
            )
        if delivery_count >= DELIVERY_LIMIT - 1:
            for tc in rest:
                self.dead.batch(
                    batch,
                    [tc],
                    "redelivered",
                    f"redelivered {delivery_count} times: consumers"
                    " crashed or lost their connection while applying it",
                    delivery_count,
                )
            rest = []
        self._apply_with_retries(batch, rest, checkpoint_task=None)
        crash_point("rmq_after_commit_before_ack")
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
        slot_at = self.hooks.slot_confirmed_lsn()
        keep = []
        for msg, batch in self._waiting:
            prev = int(msg.headers.get(H + "prev-end", 0) or 0)
            if prev <= slot_at:
                keep.append((msg, batch))
                continue
            self.log(
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
                self.sink.put(sub, stream=checkpoint_task, on_table=lambda key: current.__setitem__(0, key))
                self.applied += sub.n_changes
                return
            except Exception as exc:  # noqa: BLE001 - classified below
                self.sink.reset()
                if policy.is_transient(exc):
                    transient += 1
                    if transient > policy.reconnect_budget(self.max_retries) or self.ctx.stop.is_set():
                        raise
                    time.sleep(policy.backoff(transient, base=0.4, cap=5.0))
                    continue
                key = current[0]
                if key is None:
                    raise  # not any table's fault (checkpoint, commit): stop loudly, redelivered later
                self.log(
                    "WARNING",
                    f"batch ending at {ch.int_to_lsn(batch.end_lsn)} failed on {key[0]}.{key[1]}"
                    f" (dead-lettered, table held): {mask(exc)}",
                )
                bad = [tc for tc in tables if tc.key == key]
                self.dead.batch(
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
                self.dead.batch(
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

    def _unblock(self, h: Headers) -> None:
        raw = h.get(H + "replayed") or {}
        for name, upto in raw.items() if isinstance(raw, dict) else []:
            schema, _, table = (name.decode() if isinstance(name, bytes) else name).partition(".")
            key = (schema, table)
            held = self.held.tables.get(key)
            if held is None:
                continue
            if held.replay_failed:
                self.held.hold(key, held.held_upto, replay_failed=False)
                self.log(
                    "WARNING", f"{name}: replay failed again; still held (see dead letters)"
                )
            elif held.held_upto <= int(upto):
                self.held.release(key)
                self.log("INFO", f"{name}: dead letters replayed, table released")
            else:
                self.log("WARNING", f"{name}: new dead letters arrived during the replay; replay again")
