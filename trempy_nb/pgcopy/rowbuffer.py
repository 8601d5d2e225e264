"""Many wire messages in one buffer, and their values sliced out as Polars columns, no Python objects per value.

Shared by change capture (pgoutput messages, capture/tuples.py) and the full load
(COPY binary rows, pgcopy/binarycodec.py): both receive one message per row from
libpq, keep the messages of a batch in one buffer, locate every value with a few
numpy operations per column, and let Polars cut the values out as views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from trempy_nb.pgcopy.messages import Messages


class RowBuffer(Messages):
    """Messages concatenated in `buf`; message i spans offs[i]:offs[i+1]."""

    def __init__(self, buf: bytes | bytearray, ends: np.ndarray) -> None:
        n = len(ends)
        self.offs = np.zeros(n + 1, np.int64)
        self.offs[1:] = ends
        self.buf = buf
        self.arr = np.frombuffer(self.buf, np.uint8)
        self._series: pl.Series | None = None

    def _words(self, dtype: str) -> np.ndarray:
        """The buffer read as big-endian words of `dtype` starting at every byte (an overlapping
        view, no copy): one gather per column instead of one per byte."""
        size = np.dtype(dtype).itemsize
        n = max(len(self.arr) - size + 1, 0)
        return np.ndarray(shape=(n,), dtype=dtype, buffer=self.arr, strides=(1,))

    def u16(self, pos: np.ndarray) -> np.ndarray:
        """Big-endian uint16 at each position (as int64)."""
        return self._words(">u2")[pos].astype(np.int64)

    def u32(self, pos: np.ndarray) -> np.ndarray:
        """Big-endian uint32 at each position (as int64)."""
        return self._words(">u4")[pos].astype(np.int64)

    def i32(self, pos: np.ndarray) -> np.ndarray:
        """Big-endian int32 at each position (as int64): COPY binary writes NULL as -1."""
        return self._words(">i4")[pos].astype(np.int64)

    def series(self) -> pl.Series:
        """Every message as a Binary value (views of the buffer, made once)."""
        if self._series is None:
            self._series = pl.Series("m", self._views())
        return self._series

    def _views(self) -> pa.Array:
        """The messages as an Arrow binary_view array over the buffer: Polars' own layout, so it
        takes them without copying (a LargeBinary array it would copy into views)."""
        n, start = len(self), self.offs[:-1]
        size = np.diff(self.offs)
        if len(self.buf) >= 2**31 or n == 0 or size.min() <= 12:  # offsets are 32-bit; short ones go inline
            return pa.LargeBinaryArray.from_buffers(
                pa.large_binary(), n, [None, pa.py_buffer(self.offs), pa.py_buffer(self.buf)])
        prefix = np.ndarray((len(self.arr) - 3,), "<u4", buffer=self.arr, strides=(1,))[start]
        views = np.empty((n, 2), np.uint64)  # little-endian: length, 4-byte prefix; buffer 0, offset
        views[:, 0] = size.astype(np.uint64) | (prefix.astype(np.uint64) << np.uint64(32))
        views[:, 1] = start.astype(np.uint64) << np.uint64(32)
        return pa.Array.from_buffers(pa.binary_view(), n, [None, pa.py_buffer(views), pa.py_buffer(self.buf)])

    def slices(self, msg: np.ndarray | None, starts: np.ndarray, lens: np.ndarray) -> pl.DataFrame:
        """A frame with the messages (`m`) of `msg` (None: all) and each value's offset inside its message."""
        base = self.offs[:-1] if msg is None else self.offs[msg]
        cols: dict[str, object] = {"m": self.series() if msg is None else self.series().gather(pl.Series(msg))}
        for k in range(starts.shape[0]):
            cols[f"s{k}"] = starts[k] - base
            cols[f"l{k}"] = lens[k].astype(np.uint64)  # bin.slice takes lengths as UInt64
        return pl.DataFrame(cols)

    def columns(
        self,
        msg: np.ndarray | None,
        names: Sequence[str],
        starts: np.ndarray,
        lens: np.ndarray,
        valid: np.ndarray,
        as_text: Sequence[bool] | None = None,
    ) -> list[pl.Series]:
        """One series per column, its values sliced out of the buffer, null where not `valid`.

        Text columns (all, unless `as_text` says which) are checked to be UTF-8 and
        come out as String; the others stay Binary (a value's bytes as sent).
        Raises ValueError on a value that is not UTF-8.
        """
        text = list(as_text) if as_text is not None else [True] * len(names)
        if (len(self) if msg is None else len(msg)) == 0:
            return [pl.Series(n, [], dtype=pl.String if t else pl.Binary) for n, t in zip(names, text, strict=True)]
        df = self.slices(msg, starts, lens)
        exprs = []
        for k, name in enumerate(names):
            value = pl.col("m").bin.slice(pl.col(f"s{k}"), pl.col(f"l{k}"))
            v = valid[k]
            if not v.all():
                value = pl.when(pl.Series(v)).then(value)
            exprs.append(value.alias(name))
        out = df.select(exprs)
        try:
            return [
                out.get_column(name).cast(pl.String) if t else out.get_column(name)
                for name, t in zip(names, text, strict=True)
            ]
        except pl.exceptions.PolarsError as exc:
            raise ValueError(f"a text value is not valid UTF-8: {exc}") from None


def large_binary(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous LargeBinary array (int64 offsets): the form the numpy code here reads."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    return a if a.type == pa.large_binary() else a.cast(pa.large_binary())
