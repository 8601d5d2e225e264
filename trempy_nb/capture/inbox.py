"""Streamed pgoutput messages waiting to be framed, and where whole units end among them.

A walsender sends one message at a time; a batch may only hold whole units
(a transaction Begin..Commit, or a non-transactional message such as a
heartbeat). The inbox appends every message to one buffer, notes the end of
each whole unit with its LSN, and hands out a `Window` of the leading whole
units while the rest (a transaction still arriving, or units past a catch-up
bound) stays for later. Pure: fed bytes, unit-tested on captured messages.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from trempy_nb.capture.msgwindow import MessageWindow
from trempy_nb.lazyattrs import lazy_module

if TYPE_CHECKING:
    from trempy_nb.capture import tuples as tp
else:
    tp = lazy_module("trempy_nb.capture.tuples")  # numpy: loaded with the first row

__all__ = ["Inbox"]

_Q = struct.Struct("!Q")


class Inbox:
    """Received messages in one buffer; `units` lists (messages through, lsn) of whole units.

    A transaction's LSN is its commit LSN; a non-transactional message's is its own.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends: list[int] = []  # where each message ends in the buffer
        self.units: list[tuple[int, int]] = []
        self.in_txn = False  # a Begin arrived whose Commit has not
        self.txn_lsn = 0  # final LSN the open transaction's Begin announced
        self.txn_since = 0.0  # monotonic time its Begin arrived

    def __len__(self) -> int:
        """Messages held."""
        return len(self._ends)

    def add(self, msg: bytes | memoryview) -> None:
        """Append a streamed message; note where whole units (transactions, messages) end.

        Called once per change: the tags are literals (a global lookup each costs more)."""
        self._buf += msg
        self._ends.append(len(self._buf))
        tag = msg[0]
        if tag == 66:  # 'B'
            self.in_txn = True
            self.txn_lsn = _Q.unpack_from(msg, 1)[0]
            self.txn_since = time.monotonic()
        elif tag == 67:  # 'C'
            self.in_txn = False
            self.units.append((len(self._ends), _Q.unpack_from(msg, 2)[0]))
        elif tag == 77 and not self.in_txn and not msg[1] & 1:  # non-transactional 'M'
            self.units.append((len(self._ends), _Q.unpack_from(msg, 2)[0]))

    def lone_message(self, end: int, after: int) -> bool:
        """Whether the unit ending at message `end`, right after a unit ending at `after`, is
        one non-transactional message (a heartbeat) rather than a transaction."""
        if end - 1 != after:
            return False
        start = self._ends[end - 2] if end > 1 else 0
        return self._buf[start] == 77  # 'M'

    def take(self, n: int) -> tp.Window | MessageWindow:
        """The first `n` messages (the end of a whole unit, or 0) as a window; the rest stays.
        Without a row among them (idle: heartbeats, a beacon) a `MessageWindow`, no numpy."""
        nbytes = self._ends[n - 1] if n else 0
        buf, self._buf = self._buf, bytearray(memoryview(self._buf)[nbytes:])  # the rest
        del buf[nbytes:]  # the window keeps the received buffer itself: no copy of it
        ends = self._ends[:n]
        win = MessageWindow(buf, ends) if MessageWindow.fits(buf, ends) else tp.Window.from_buffer(buf, ends)
        self._ends = [e - nbytes for e in self._ends[n:]]
        self.units = [(end - n, lsn) for end, lsn in self.units if end > n]
        return win
