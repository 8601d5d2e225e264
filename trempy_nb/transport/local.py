"""The local transport: capture and apply in one process, the slot confirmed after the target commit.

Reading and decoding the next batch overlaps applying this one: a reader thread
(`_ReadAhead`) owns the change source (and its connection) and hands batches
over a bounded queue; the end LSNs the applying thread committed go back to it
(the sink's checkpoint) and it confirms them to the slot before its next read
(in order, only past committed batches), with a final drain on the way out.

Order of acknowledgement (DESIGN.md): read a batch of whole transactions, apply
it to the target in one transaction together with the checkpoint, commit, and
only then advance the slot. A crash anywhere replays at most the last batch,
which the checkpoint turns into a no-op. Transient errors (a restarting server,
a lost connection) reconnect, re-read from the slot and retry, within the error
policy's budget.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from trempy_nb.changes import ChangeBatch
from trempy_nb.crash import crash_point
from trempy_nb.errors import TerminalError, TrempyError
from trempy_nb.redact import mask
from trempy_nb.transport.base import (
    HEARTBEAT_EVERY_S,
    STATS_EVERY_S,
    CatchUp,
    ChangeSink,
    ChangeSource,
    Role,
    StreamContext,
    StreamHooks,
)
from trempy_nb.writer import errorpolicy as policy


class LocalTransport:
    """Both sides in one process; a producer or consumer alone makes no sense here."""

    sink_name = "apply"

    def run(self, role: Role, ctx: StreamContext, sink: ChangeSink | None) -> int:
        """Apply batches until stopped, or until every change committed before now is applied."""
        if role != "both" or sink is None:
            raise TerminalError(f"--role {role} needs transport rabbitmq (task {ctx.task} uses local)")
        hooks = ctx.hooks
        if ctx.until_caught_up:
            ctx.until.target = hooks.current_lsn()
        hooks.refresh_lag()  # slot health before reading: warns if the slot is close to being lost
        committed: deque[int] = deque()
        reading = _ReaderContext.of(ctx)
        ahead = _ReadAhead(reading, hooks.new_source(), committed)
        applied = 0
        last_stats = 0.0
        failures = 0
        try:
            while True:
                if ctx.stopping():
                    break
                try:
                    item = ahead.get(timeout=0.5)  # re-raises the reader thread's error
                    if isinstance(item, _CaughtUp):
                        break
                    if item is None:  # idle (or nothing yet): the reader thread heartbeats
                        hooks.status("streaming")
                        continue
                    applied += sink.put(item, _after_commit(ahead))
                    failures = 0
                    hooks.status("streaming")
                except (psycopg.Error, TrempyError, OSError) as exc:
                    # transient (a restarting server, a lost connection): reconnect, re-read, retry
                    budget = policy.reconnect_budget(ctx.settings.error_handling.max_retries)
                    if not policy.is_transient(exc) or failures >= budget:
                        raise
                    failures += 1
                    hooks.log("WARNING", mask(f"transient error, retrying ({failures}): {exc}"),
                              fields={"event": "retry", "attempt": failures, "cause": type(exc).__name__})
                    sink.reset()
                    with contextlib.suppress(Exception):
                        ahead.close(drain=True)  # confirms it could not make stay in `committed`
                    ahead = _ReadAhead(reading, hooks.new_source(), committed)
                    time.sleep(policy.backoff(failures, base=0.4, cap=5.0))
                if time.monotonic() - last_stats > STATS_EVERY_S:
                    hooks.refresh_lag()
                    last_stats = time.monotonic()
        except BaseException:
            with contextlib.suppress(Exception):
                ahead.close(drain=True)
            raise
        ahead.close(drain=True, raise_errors=True)  # the last advances; their errors reach the caller
        hooks.refresh_lag()
        return applied


def _after_commit(ahead: _ReadAhead) -> Callable[[int], None]:
    """The sink's checkpoint: the batch is committed on the target; the reader thread advances
    the slot past it before its next read."""

    def checkpoint(lsn: int) -> None:
        crash_point("after_commit_before_advance")
        ahead.confirm(lsn)

    return checkpoint


class _CaughtUp:
    """Read-ahead item: every change up to the catch-up target was handed out."""


_CAUGHT_UP = _CaughtUp()


@dataclass
class _Failed:
    error: BaseException


_Item = ChangeBatch | _CaughtUp | _Failed


class _ReadAhead:
    """The reader thread of the local stream.

    It owns the change source and its connection: it confirms the end LSNs the
    applying thread committed (`confirm`, in order) before each read that asks
    the server (a peek decodes the WAL again from the slot's restart_lsn, so
    both are paid once per window), reads the next batch while the current one
    is applied, and hands it over a bounded queue (one batch ahead). Idle, it
    heartbeats; caught up, it hands over `_CAUGHT_UP`. Its error is handed over
    like an item, so `get` raises it in the applying thread (never swallowed).
    `close` stops and joins it, then makes the last advances from the calling
    thread.
    """

    DEPTH = 1  # batches decoded ahead of the one being applied (memory: about DEPTH + 2 batches)

    def __init__(self, ctx: _ReaderContext, reader: ChangeSource, committed: deque[int]) -> None:
        self.ctx = ctx
        self.reader = reader
        self.committed = committed  # shared with the next _ReadAhead after a reconnect
        self._items: queue.Queue[_Item] = queue.Queue(maxsize=self.DEPTH)
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._undelivered: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"trempy-read-{ctx.task}", daemon=True)
        self._thread.start()

    # applying thread ------------------------------------------------------------------
    def get(self, timeout: float) -> ChangeBatch | _CaughtUp | None:
        """The next batch, `_CAUGHT_UP`, or None (nothing within `timeout`); raises the reader's error."""
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return None
        self._wake.set()  # room in the queue
        if isinstance(item, _Failed):
            raise item.error
        return item

    def confirm(self, lsn: int) -> None:
        """The batch ending at commit `lsn` is committed on the target: advance the slot past it."""
        self.committed.append(lsn)
        self._wake.set()

    def close(self, *, drain: bool = False, raise_errors: bool = False) -> None:
        """Stop and join the thread, then (drain) advance the slot over what was committed."""
        self._halt.set()
        self._wake.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._items.get_nowait()  # unblock a put
            self._thread.join(timeout=0.1)
        try:
            if drain:
                self._drain()
            if raise_errors and self._undelivered is not None:
                raise self._undelivered
        except Exception:
            if raise_errors:
                raise
        finally:
            with contextlib.suppress(Exception):
                self.reader.close()

    # reader thread --------------------------------------------------------------------
    def _drain(self) -> None:
        if not self.committed:
            return
        lsn = self.committed[-1]  # appended in commit order: the last is the furthest
        self.reader.confirm(lsn)
        crash_point("after_advance")
        while self.committed and self.committed[0] <= lsn:
            self.committed.popleft()

    def _put(self, item: _Item, drain: bool = True) -> bool:
        """Hand `item` over once there is room; meanwhile (`drain`) advance the slot as batches commit."""
        while not self._halt.is_set():
            if drain:
                self._drain()
            try:
                self._items.put_nowait(item)
                return True
            except queue.Full:
                pass
            if not self.reader.prefetch(0.02):  # stream mode: the next batch fills meanwhile
                self._wake.wait(0.02)
            self._wake.clear()
        return False

    def _run(self) -> None:
        ctx = self.ctx
        until = ctx.until
        last_beat = time.monotonic()
        try:
            while not self._halt.is_set():
                if not self.reader.has_buffered(until.target):
                    self._drain()  # the next read peeks: advance first, so it re-reads less
                if ctx.stop.is_set() and until.target is None:
                    return
                batch = self.reader.read_batch(upto_lsn=until.target)
                if batch is not None:
                    self._put(batch, drain=not self.reader.has_buffered(until.target))
                    continue
                if until.target is not None and ctx.hooks.flushed_past(until.target):
                    self._put(_CAUGHT_UP)
                    return
                if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
                    ctx.hooks.heartbeat()
                    last_beat = time.monotonic()
                self._wake.clear()
                if self.committed:
                    continue
                self._wake.wait(ctx.interval_s)
        except BaseException as exc:  # handed to the applying thread, which raises it
            if not self._put(_Failed(exc), drain=False):
                self._undelivered = exc  # closing meanwhile: `close(raise_errors=True)` raises it


@dataclass(frozen=True)
class _ReaderContext:
    """What the reader thread needs of its run."""

    task: str
    hooks: StreamHooks
    stop: threading.Event
    until: CatchUp
    interval_s: float

    @classmethod
    def of(cls, ctx: StreamContext) -> _ReaderContext:
        return cls(ctx.task, ctx.hooks, ctx.stop, ctx.until, ctx.settings.task.interval_seconds)
