"""A window of structural messages only: what an idle stream delivers.

Heartbeats, the catch-up beacon and transactions with no published change
carry no row, so they need none of `tuples.Window`'s vectorised framing: this
window decodes its few messages one by one, with no numpy. A run that never
receives a row (an idle `--until-caught-up`, an idle worker's tasks) then never
loads numpy or pyarrow, a third of its start-up CPU. Pure.
"""

from __future__ import annotations

from trempy_nb.capture.pgoutput import Message, decode
from trempy_nb.pgcopy.messages import Messages

__all__ = ["MessageWindow", "LIGHT_TAGS", "LIGHT_MAX"]

#: Begin, Commit, logical Message: a window of only these has no row to frame
LIGHT_TAGS = frozenset(b"BCM")
#: at most this many messages are looked at (an idle fetch holds one to a few)
LIGHT_MAX = 16


class MessageWindow(Messages):
    """Messages concatenated in `buf` (message i ending at `ends[i]`), none of them a row."""

    def __init__(self, buf: bytes | bytearray, ends: list[int]) -> None:
        self.buf = buf
        self.offs = [0, *ends]
        self.structure: list[tuple[int, Message]] = [(i, decode(self.message(i))) for i in range(len(ends))]

    @staticmethod
    def fits(buf: bytes | bytearray, ends: list[int]) -> bool:
        """Whether the messages of `buf` can go in a `MessageWindow`: few, and none a row."""
        if len(ends) > LIGHT_MAX:
            return False
        starts = [0, *ends[:-1]] if ends else []
        return all(buf[start] in LIGHT_TAGS for start in starts)
