"""Peek mode: windows from `pg_logical_slot_peek_binary_changes`, for previews and tests.

Not the runners' path (they stream, see `stream.py`): every peek and every
`pg_replication_slot_advance` decodes the WAL again from the slot's
`restart_lsn`, so its cost is paid per call, not per change. A peek also
starts at the slot's confirmed position every time: it resends what was
returned but not yet confirmed, which the reader skips (`resends`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from trempy_nb.lazyattrs import lazy_module

if TYPE_CHECKING:
    from trempy_nb.capture import tuples as tp
else:
    tp = lazy_module("trempy_nb.capture.tuples")  # numpy: only once a window is framed

__all__ = ["PeekWindows"]


class PeekWindows:
    """A `WindowSource` over a peek function (`SlotConnection.peek`, or captured bytes)."""

    resends = True
    blocked_at: int | None = None  # a peek's upto_lsn bound is exact: it never blocks early

    def __init__(
        self, peek: Callable[[int | None, int], list[bytes]], advance: Callable[[int], None]
    ) -> None:
        self._peek, self._advance = peek, advance

    def fetch(self, upto_lsn: int | None, nchanges: int) -> tp.Window:
        return tp.Window(self._peek(upto_lsn, nchanges))

    def advance(self, lsn: int) -> None:
        self._advance(lsn)

    def prefetch(self, timeout: float, limit: int) -> bool:
        return False  # nothing arrives by itself: a peek is a query

    def close(self) -> None:
        pass  # the connection is the reader's
