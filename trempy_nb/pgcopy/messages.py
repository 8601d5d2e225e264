"""Wire messages concatenated in one buffer: the numpy-free base of every such buffer.

`rowbuffer.RowBuffer` (vectorised: COPY binary rows, pgoutput rows) and capture's
`MessageWindow` (a few structural messages, no numpy at all) both hold messages
this way; only how they find values differs. Pure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Messages"]


class Messages:
    """Messages concatenated in `buf`; message i spans offs[i]:offs[i+1]."""

    buf: bytes | bytearray
    offs: Any  # a list of ints, or rowbuffer's int64 array

    def __len__(self) -> int:
        return len(self.offs) - 1

    @property
    def nbytes(self) -> int:
        return len(self.buf)

    def message(self, i: int) -> bytes:
        return bytes(self.buf[self.offs[i] : self.offs[i + 1]])
