"""What capture hands on, as types: a change source, the window sources under it, a checkpoint.

A *batch* (`changes.ChangeBatch`) is a run of whole source transactions in
commit order, never part of one. It carries two positions, both *commit* LSNs:
`first_lsn` of its first transaction and `end_lsn` of its last one. Giving
`end_lsn` to a `Checkpoint` says "every transaction that committed at or
before this LSN is durable downstream": the source may then let the slot
release them (see `positions.py` for how a commit LSN becomes a slot
position). Until then a restart delivers them again: capture is
at-least-once, and the target's checkpoint turns a replay into a no-op.

`ChangeSource` is what a runner or a transport reads from (`reader.ChangeReader`
implements it); `WindowSource` is what a change source reads raw pgoutput
messages from: the replication stream (`stream.StreamWindows`, the main path)
or peeks (`peek.PeekWindows`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from trempy_nb.changes import ChangeBatch

if TYPE_CHECKING:  # typing only: the protocols stay free of numpy (start-up speed of full loads)
    from trempy_nb.capture.msgwindow import MessageWindow
    from trempy_nb.capture.tuples import Window

__all__ = ["Checkpoint", "ChangeSource", "WindowSource"]

#: "every transaction that committed at or before this LSN (a batch's `end_lsn`) is durable"
Checkpoint = Callable[[int], None]


class ChangeSource(Protocol):
    """Whole transactions from a slot, in commit order, until they are confirmed."""

    def read_batch(self, upto_lsn: int | None = None) -> ChangeBatch | None:
        """The next transactions not yet returned, about `max_changes` changes (never fewer
        than one whole transaction); None when there are none for now. With `upto_lsn`:
        only transactions that committed before it, and None only once all of those were
        returned (the catch-up end)."""
        ...

    def confirm(self, lsn: int) -> None:
        """The `Checkpoint`: the batch ending at commit `lsn` (and all before it) is durable."""
        ...

    def has_buffered(self, upto_lsn: int | None = None) -> bool:
        """Whether the next `read_batch(upto_lsn)` is served without asking the server
        (a caller confirms before a read that will ask, so the server decodes less)."""
        ...

    def prefetch(self, timeout: float) -> bool:
        """While the consumer is busy: receive what arrives within `timeout`, so the next
        batch is one big batch. False when nothing was received (or nothing streams)."""
        ...

    def close(self) -> None: ...


class WindowSource(Protocol):
    """Raw pgoutput messages in windows of whole units (transactions, logical messages)."""

    @property
    def resends(self) -> bool:
        """True when every fetch starts again at the slot's confirmed position (a peek), so
        units already returned come again and must be skipped; False for a stream."""
        ...

    @property
    def blocked_at(self) -> int | None:
        """The `upto_lsn` the last fetch stopped at because a unit at or past it arrived."""
        ...

    def fetch(self, upto_lsn: int | None, nchanges: int) -> Window | MessageWindow:
        """Whole units, about `nchanges` messages, only those before `upto_lsn` (a
        `MessageWindow` when none of them is a row)."""
        ...

    def advance(self, lsn: int) -> None:
        """Let the slot release everything before `lsn` (raises psycopg errors as they are)."""
        ...

    def prefetch(self, timeout: float, limit: int) -> bool:
        """Receive up to `limit` messages within `timeout` for the next fetch."""
        ...

    def close(self) -> None: ...
