"""Vectorised pgoutput framing: a peek's messages in one buffer, tuples walked for all rows at once.

Why: decoding TupleData value by value in Python cost about 10 µs per changed
row and was the ceiling of change capture. Here the messages of one peek stay
in a single `bytes` buffer; numpy walks every row's tuple one *column* at a
time (a handful of array operations per column, whatever the row count), and
Polars slices the text values out of the buffer as string views. No Python
object is made per value. The structural messages (Begin, Commit, Relation,
Truncate, ...) are few and are decoded one by one with `pgoutput.decode`.

Pure: no I/O, unit-tested on captured bytes through the reader. The buffer and the
slicing are shared with the full load's COPY binary reader (pgcopy/rowbuffer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from trempy_nb.capture.pgoutput import DecodeError, Message, decode
from trempy_nb.pgcopy.rowbuffer import RowBuffer

__all__ = ["Window", "Tuples", "ROW_TAGS", "walk", "text_columns", "equal_values"]

TAG_I, TAG_U, TAG_D = 73, 85, 68
ROW_TAGS = (TAG_I, TAG_U, TAG_D)
K_TEXT, K_NULL, K_UNCHANGED, K_BINARY = 116, 110, 117, 98
M_NEW, M_KEY, M_OLD = 78, 75, 79  # 'N', 'K', 'O' tuple markers


class Window(RowBuffer):
    """The rows of one peek: one buffer, message offsets, tags; structural messages decoded."""

    def __init__(self, datas: list[bytes]) -> None:
        n = len(datas)
        ends = np.cumsum(np.fromiter(map(len, datas), np.int64, n))
        self._setup(b"".join(datas), ends)

    @classmethod
    def from_buffer(cls, buf: bytes | bytearray, ends: list[int]) -> Window:
        """Messages already concatenated in `buf`, message i ending at `ends[i]`."""
        win = cls.__new__(cls)
        win._setup(buf, np.array(ends, np.int64))
        return win

    def _setup(self, buf: bytes | bytearray, ends: np.ndarray) -> None:
        RowBuffer.__init__(self, buf, ends)
        self.structure: list[tuple[int, Message]] = []
        if not len(ends):  # an idle stream's fetch, once a second per task: no numpy passes over nothing
            self.tags = np.zeros(0, np.uint8)
            self.row_idx = self.row_oid = np.zeros(0, np.int64)
            return
        if not (np.diff(self.offs) > 0).all():
            raise DecodeError("empty pgoutput message")
        self.tags = self.arr[self.offs[:-1]]
        is_row = np.isin(self.tags, ROW_TAGS)
        self.row_idx = np.flatnonzero(is_row)  # indices of Insert/Update/Delete messages
        self.row_oid = self.u32(self.offs[self.row_idx] + 1)
        self.structure = [(int(i), decode(self.message(int(i)))) for i in np.flatnonzero(~is_row)]


@dataclass
class Tuples:
    """TupleData of many rows, column-major: kind byte, value start (absolute) and length."""

    kinds: np.ndarray  # (ncols, n) uint8: K_TEXT, K_NULL, K_UNCHANGED or K_BINARY
    starts: np.ndarray  # (ncols, n) int64
    lens: np.ndarray  # (ncols, n) int64 (0 unless the value has bytes)
    end: np.ndarray  # (n,) position right after each tuple


def walk(win: Window, pos: np.ndarray, msg_end: np.ndarray, ncols: int) -> Tuples:
    """Walk the TupleData starting at each of `pos` (all of a relation with `ncols` columns)."""
    n = len(pos)
    arr = win.arr
    size = len(arr)
    kinds = np.empty((ncols, n), np.uint8)
    starts = np.empty((ncols, n), np.int64)
    lens = np.zeros((ncols, n), np.int64)
    if n == 0:
        return Tuples(kinds, starts, lens, pos.copy())
    if (pos + 2 > msg_end).any():
        raise DecodeError("truncated pgoutput tuple header")
    counts = (arr[pos].astype(np.int64) << 8) | arr[pos + 1]
    if (counts != ncols).any():
        bad = int(counts[counts != ncols][0])
        raise DecodeError(f"a tuple has {bad} columns, its relation {ncols}")
    p = pos + 2
    for k in range(ncols):
        if (p >= msg_end).any():
            raise DecodeError("truncated pgoutput tuple")
        kind = arr[p]
        has = (kind == K_TEXT) | (kind == K_BINARY)
        if not (has | (kind == K_NULL) | (kind == K_UNCHANGED)).all():
            bad_kind = int(kind[~(has | (kind == K_NULL) | (kind == K_UNCHANGED))][0])
            raise DecodeError(f"unknown tuple value kind {chr(bad_kind)!r}")
        kinds[k] = kind
        starts[k] = p + 5
        idx = np.flatnonzero(has)
        if len(idx):
            if (p[idx] + 5 > size).any():
                raise DecodeError("truncated pgoutput value length")
            lens[k, idx] = win.u32(p[idx] + 1)
        p = p + np.where(has, 5 + lens[k], 1)
    if (p > msg_end).any():
        raise DecodeError("a pgoutput value runs past its message")
    return Tuples(kinds, starts, lens, p)


def text_columns(
    win: Window,
    msg: np.ndarray,
    names: tuple[str, ...] | list[str],
    starts: np.ndarray,
    lens: np.ndarray,
    valid: np.ndarray,
) -> list[pl.Series]:
    """One String series per column: the value bytes sliced out of the buffer, null where not valid.

    Values are checked to be UTF-8 (the text of a UTF8 database) like `bytes.decode` did."""
    try:
        return win.columns(msg, names, starts, lens, valid)
    except ValueError as exc:
        raise DecodeError(f"pgoutput {exc}") from None


def equal_values(
    win: Window,
    msg: np.ndarray,
    a_start: np.ndarray,
    a_len: np.ndarray,
    b_start: np.ndarray,
    b_len: np.ndarray,
) -> np.ndarray:
    """Whether the bytes at (a_start, a_len) equal those at (b_start, b_len), row by row."""
    if len(msg) == 0:
        return np.zeros(0, bool)
    same = a_len == b_len
    if not same.any():
        return same
    df = win.slices(msg, np.stack([a_start, b_start]), np.stack([a_len, b_len]))
    eq = df.select(
        (
            pl.col("m").bin.slice(pl.col("s0"), pl.col("l0"))
            == pl.col("m").bin.slice(pl.col("s1"), pl.col("l1"))
        ).alias("eq")
    ).get_column("eq")
    return eq.to_numpy() & same
