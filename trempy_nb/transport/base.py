"""What a transport is, as types: how capture's batches travel to the applier (protocols, no I/O).

A run has three parts (pgstream's listener → processor → checkpointer):

- a `ChangeSource` (capture's protocol, `capture/source.py`, re-exported here;
  `ChangeReader` implements it): whole source transactions, read up to a bound,
  and `confirm(lsn)` once they are durable downstream (the slot moves);
- a `ChangeSink` (the engine's `ChangeApplier`): `put(batch, checkpoint)` applies a
  batch in one target transaction with its checkpoint row, then calls
  `checkpoint(batch.end_lsn)`;
- a `Transport` in between: `local` hands batches from the source to the sink in
  one process; `rabbitmq` publishes them to a durable queue (its checkpoint is the
  publisher-confirm tracker's safe LSN) and applies them from it.

A `Checkpoint` says "every transaction that committed at or before this LSN is
durable". A transport asks the engine for anything else through `StreamHooks`
(slot health, heartbeats, logs, status, a fresh source after a reconnect): it
never imports the engine. `Role` says which side(s) of a transport a run plays.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from trempy_nb.capture.source import ChangeSource, Checkpoint
from trempy_nb.changes import ChangeBatch
from trempy_nb.settings import TaskSettings
from trempy_nb.writer.fence import Fence

if TYPE_CHECKING:  # a type only: this module stays free of I/O (the dialect's module connects)
    from trempy_nb.writer.dialect import TargetDialect

__all__ = [
    "HEARTBEAT_EVERY_S",
    "STATS_EVERY_S",
    "CatchUp",
    "ChangeSink",
    "ChangeSource",
    "Checkpoint",
    "DeadLetter",
    "Role",
    "StreamContext",
    "StreamHooks",
    "TableHook",
    "Transport",
]

HEARTBEAT_EVERY_S = float(os.environ.get("TREMPY_HEARTBEAT_S", "10"))  # idle heartbeat period
STATS_EVERY_S = 2.0  # slot health and lag are refreshed this often while streaming

#: which side(s) of the transport a run plays: both (one process), or one of them alone
Role = Literal["both", "producer", "consumer"]
ROLES: tuple[Role, ...] = ("both", "producer", "consumer")

#: called with a source table's key as the sink takes it up (None: past the tables), so a
#: caller can pin a failure on its table
TableHook = Callable[[tuple[str, str] | None], None]


class ChangeSink(Protocol):
    """Applies batches to the target, one target transaction each, with its checkpoint row."""

    def put(self, batch: ChangeBatch, checkpoint: Checkpoint | None = None, *,
            stream: str | None = None, on_table: TableHook | None = None) -> int:
        """Apply `batch` and commit it with the checkpoint of `stream` (default: the task's);
        then call `checkpoint(batch.end_lsn)`. Returns the changes applied."""
        ...

    def durable_lsn(self, stream: str | None = None) -> int | None:
        """The target's checkpoint of `stream` (default: the task's); None when it has none."""
        ...

    def reset(self) -> None:
        """After a failed `put`: roll back, or drop a broken connection (the next put reconnects)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeadLetter:
    """A part of a batch a transport gave up on (recorded in the run's metadata)."""

    tables: str | None  # "schema.table,..." (None: an unreadable message)
    first_lsn: int | None
    end_lsn: int | None
    error: str
    attempts: int
    where: str  # e.g. "rabbitmq:dlx_queue_<task>"


class StreamHooks(Protocol):
    """What a transport may ask of the engine running it."""

    def heartbeat(self) -> None:
        """Idle: write a heartbeat into the source's WAL (the slot can then move past it). The
        engine skips it while the slot moved within HEARTBEAT_EVERY_S anyway (another task's
        heartbeat in the same database reaches this slot too)."""
        ...

    def flushed_past(self, lsn: int) -> bool:
        """Whether the source's flushed WAL reached `lsn` (decoding sees only flushed WAL)."""
        ...

    def current_lsn(self) -> int: ...

    def flush_lsn(self) -> int: ...

    def slot_confirmed_lsn(self) -> int:
        """Where the slot's confirmed position stands now (0 when there is no slot)."""
        ...

    def refresh_lag(self) -> None:
        """Refresh the counters' lag and slot health (warns when the slot is close to lost)."""
        ...

    def log(self, level: str, message: str, *, table: str | None = None,
            fields: dict[str, Any] | None = None) -> None:
        """One record in the run's log: `table` schema.table, `fields` structured extras."""
        ...

    def status(self, state: str) -> None: ...

    def new_source(self) -> ChangeSource:
        """A fresh reader at the slot's confirmed position (start, reconnect, republish)."""
        ...

    def dead_lettered(self, letter: DeadLetter) -> None: ...


class CatchUp:
    """The LSN a catch-up run ends at (None: run until stopped). Any thread may set it: a
    runner asked to stop when caught up sets it while its transport streams."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target


@dataclass(frozen=True)
class StreamContext:
    """One run's stream, as a transport sees it."""

    task: str
    settings: TaskSettings
    target: str  # the target's connection string (resolved)
    hooks: StreamHooks
    stop: threading.Event
    until: CatchUp
    until_caught_up: bool = False
    #: the target's database (the engine's choice for the run): state a transport keeps on the
    #: target goes through it; None = PostgreSQL
    dialect: TargetDialect | None = None
    #: the run's fencing token (a worker's lease): a transport writing the target itself (held tables)
    #: checks it in the same transaction; None = not fenced
    fence: Fence | None = None

    def stopping(self) -> bool:
        """Stop asked and no catch-up bound left to reach."""
        return self.stop.is_set() and self.until.target is None


class Transport(Protocol):
    """Carries batches from the slot to the sink; returns the changes it handled."""

    #: the application_name suffix of the sink's target connection (`trempy_nb:<task>:<name>`)
    sink_name: str

    def run(self, role: Role, ctx: StreamContext, sink: ChangeSink | None) -> int:
        """Stream until `ctx.stop` (or caught up). `sink` is None for a producer alone."""
        ...
