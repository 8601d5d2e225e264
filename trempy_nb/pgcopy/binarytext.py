"""PostgreSQL binary values -> the text PostgreSQL prints for them, vectorised.

Why: in a transformed full load the plan reads its inputs as PostgreSQL text. For
a column the plan only reads, asking the source for `col::text` as well as the raw
value costs the source a text conversion and a second field per row (measured: a
fifth of its CPU in the benchmark). For the types below the raw value alone comes,
and it is turned into the very text the source would have sent here, with numpy
and Polars. Types not listed keep `col::text` (pipeline/copylayout.py chooses).
"""

from __future__ import annotations

import decimal
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from trempy_nb.pgcopy.rowbuffer import RowBuffer, large_binary

Decoder = Callable[[pl.Series], pl.Series]

NUMERIC_SPECIALS = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
NUMERIC_NEG = 0x4000
INT64_DIGITS = 18  # every number of up to 18 digits fits int64
POW10 = np.array([10**k for k in range(INT64_DIGITS + 1)], np.int64)


def _integer(dtype: pl.DataType) -> Decoder:
    def dec(s: pl.Series) -> pl.Series:
        return s.bin.reinterpret(dtype=dtype, endianness="big").cast(pl.String).alias(s.name)

    return dec


def _bool(s: pl.Series) -> pl.Series:
    return s.to_frame("b").select(
        pl.when(pl.col("b") == b"\x01").then(pl.lit("t")).when(pl.col("b").is_not_null()).then(pl.lit("f"))
    ).to_series().alias(s.name)


@dataclass
class _Numerics:
    """A batch of numeric_send values (ndigits, weight, sign, dscale, base-10000 digits; all
    16-bit), those of up to 18 digits computed as int64: value x 10^dscale, exactly."""

    n: int
    valid: np.ndarray  # row numbers of the non-NULL values
    sign: np.ndarray  # per valid value
    fits: np.ndarray  # per valid value: not special, and within int64
    scaled: np.ndarray  # per fitting value: its magnitude x 10^dscale
    dscale: np.ndarray  # per fitting value

    @property
    def rows(self) -> np.ndarray:
        return self.valid[self.fits]


def _numerics(s: pl.Series) -> _Numerics:
    arr = large_binary(s.to_arrow())
    n = len(arr)
    valid = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
    offsets = np.frombuffer(arr.buffers()[1], np.int64, n + 1, arr.offset * 8)
    start = offsets[:-1][valid]
    if not len(valid):
        empty = np.zeros(0, np.int64)
        return _Numerics(n, valid, empty, empty.astype(bool), empty, empty)
    values = RowBuffer(arr.buffers()[2], offsets[1:])  # positions below are into the data buffer
    ndigits, weight = values.u16(start), values.u16(start + 2).astype(np.int16).astype(np.int64)
    sign, dscale = values.u16(start + 4), values.u16(start + 6)
    special = sign >= 0xC000
    frac_groups = (dscale + 3) // 4
    fits = ~special & (4 * (weight + 1 + frac_groups) <= INT64_DIGITS)
    fits |= ~special & (ndigits == 0)
    f_start, f_nd, f_ds = start[fits], ndigits[fits], dscale[fits]
    # Horner over the digits sent (base 10000), then the groups PostgreSQL stripped as zeros,
    # then down to dscale
    value = np.zeros(len(f_start), np.int64)
    for k in range(int(f_nd.max(initial=0))):
        has = k < f_nd
        digit = values.u16(np.where(has, f_start + 8 + 2 * k, f_start))
        value = np.where(has, value * 10_000 + digit, value)
    stripped = weight[fits] + frac_groups[fits] + 1 - f_nd
    value *= POW10[4 * np.clip(stripped, 0, 4)]
    value //= POW10[4 * frac_groups[fits] - f_ds]
    return _Numerics(n, valid, sign, fits, value, f_ds)


def numeric_decimal(s: pl.Series, scale: int) -> pl.Series | None:
    """numeric_send values as a Decimal(38, scale) column, when every value has that display
    scale and fits int64 (a numeric(p, scale) column's usual batch); else None.

    Why: a math_expression parses its numeric inputs into Decimal; for a column only such
    steps read, this skips printing the text and parsing it back.
    """
    num = _numerics(s)
    if len(num.scaled) != len(num.valid) or (len(num.valid) and (num.dscale != scale).any()):
        return None
    words = np.zeros((num.n, 2), np.int64)  # decimal128: little-endian two's complement
    value = np.where(num.sign[num.fits] == NUMERIC_NEG, -num.scaled, num.scaled)
    words[num.valid, 0] = value
    words[num.valid, 1] = value >> 63
    mask = None
    if len(num.valid) != num.n:
        flags = np.zeros(num.n, bool)
        flags[num.valid] = True
        mask = pa.array(flags).buffers()[1]
    arr = pa.Array.from_buffers(pa.decimal128(38, scale), num.n, [mask, pa.py_buffer(words)],
                                null_count=num.n - len(num.valid))
    return pl.Series(s.name, arr)


def _numeric(s: pl.Series) -> pl.Series:
    """numeric_send's form as numeric_out's text.

    Values of up to 18 digits are computed as int64 (value x 10^dscale) and printed with
    dscale decimals; NaN and the infinities by their names; longer values one by one.
    """
    num = _numerics(s)
    n, valid, sign = num.n, num.valid, num.sign
    out = pl.Series(s.name, [], dtype=pl.String).extend_constant(None, n)
    if not len(valid):
        return out
    rows, value, f_ds = num.rows, num.scaled, num.dscale
    special = sign >= 0xC000
    fits = num.fits
    if len(rows) == n and f_ds.min() == f_ds.max():  # the common batch: no NULL, one scale, all within int64
        return _decimal_text(value, sign == NUMERIC_NEG, int(f_ds[0])).alias(s.name)
    for scale in np.unique(f_ds):
        pick = f_ds == scale
        out = out.scatter(rows[pick], _decimal_text(value[pick], sign[fits][pick] == NUMERIC_NEG, int(scale)))
    for code, name in NUMERIC_SPECIALS.items():
        hit = valid[special & (sign == code)]
        if len(hit):
            out = out.scatter(hit, name)
    slow = valid[~special & ~fits]
    if len(slow):  # more than 18 digits: rare, one at a time
        out = out.scatter(slow, pl.Series([numeric_text(v) for v in s.gather(slow).to_list()], dtype=pl.String))
    return out


def _decimal_text(value: np.ndarray, negative: np.ndarray, scale: int) -> pl.Series:
    """value / 10^scale printed with exactly `scale` decimals, as numeric_out does.

    Every row is written right-aligned into one character matrix (digits, point, sign),
    and the characters each row uses are cut out with one mask: no Python per row.
    """
    n = len(value)
    mag = np.abs(value)
    width = scale + 1  # digits printed: at least one before the point
    top = int(mag.max(initial=0))
    while top >= 10**width:
        width += 1
    used = np.full(n, scale + 1, np.int64)
    for k in range(scale + 1, width):
        used += mag >= 10**k
    dot = 1 if scale else 0
    negative = negative & (value != 0)
    length = used + dot + negative
    cols = width + dot + 1  # one spare column on the left for a sign
    chars = np.empty((n, cols), np.uint8)
    rest = mag.copy()
    for k in range(width):  # k-th digit from the right
        col = cols - 1 - k - (dot if k >= scale else 0)
        chars[:, col] = 48 + rest % 10
        rest //= 10
    if dot:
        chars[:, cols - 1 - scale] = ord(".")
    neg = np.flatnonzero(negative)
    chars[neg, cols - length[neg]] = ord("-")
    keep = np.arange(cols) >= (cols - length)[:, None]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars[keep]))
    return pl.Series(arr)


def numeric_text(value: bytes) -> str:
    """One numeric_send value as its text (error records, and values beyond int64)."""
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHH", value)
    if sign in NUMERIC_SPECIALS:
        return NUMERIC_SPECIALS[sign]
    digits = struct.unpack_from(f"!{ndigits}h", value, 8)
    with decimal.localcontext() as ctx:
        ctx.prec = 4 * (ndigits + abs(weight)) + dscale + 8
        number = sum((decimal.Decimal(d).scaleb(4 * (weight - i)) for i, d in enumerate(digits)), decimal.Decimal(0))
        number = number.quantize(decimal.Decimal(1).scaleb(-dscale))
    return ("-" if sign == NUMERIC_NEG and number else "") + format(number, "f")


_DECODERS: dict[str, Decoder] = {
    "smallint": _integer(pl.Int16()),
    "integer": _integer(pl.Int32()),
    "bigint": _integer(pl.Int64()),
    "boolean": _bool,
    "numeric": _numeric,
}


def decoder_for(base_type: str) -> Decoder | None:
    """The decoder for a type (format_type's name without typmod), or None: read it as `::text`."""
    return _DECODERS.get(base_type)
