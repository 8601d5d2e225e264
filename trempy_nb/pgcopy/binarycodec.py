"""COPY binary encoding of frames that hold PostgreSQL's text form of each value.

Why: on a small machine the target parsing COPY *text* is the transformed full
load's bottleneck (a timestamptz or numeric costs it far more in text than in
binary). The frames keep the pipeline's convention (String columns of
PostgreSQL text); each value is converted here by the *target* column's type,
vectorised in Polars and numpy; one Arrow kernel joins the rows. Columns the plan does not
touch arrive from the source in binary (read_copy_binary) and pass through unparsed.

PostgreSQL's own parsing stays the reference: `encoder_for` returns None for a
type with no encoder here (arrays, intervals, enums, ...: the table then loads as
COPY text), and `encode` names the columns whose values did not all convert
exactly (a BC date, a malformed value, an out-of-range integer): those travel as
text in that batch and the target casts them, reporting any error itself.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from trempy_nb.pgcopy.binarytext import numeric_text
from trempy_nb.pgcopy.rowbuffer import RowBuffer, large_binary
from trempy_nb.pgtypes import timestamp_text

#: PostgreSQL's epoch (2000-01-01) from the Unix epoch.
PG_EPOCH_US = 946_684_800_000_000
PG_EPOCH_DAYS = 10_957

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
TRAILER = struct.pack("!h", -1)
HEADER = SIGNATURE + struct.pack("!ii", 0, 0)  # no flags, no header extension

_TYPMOD = re.compile(r"\(\s*\d+\s*(,\s*\d+\s*)?\)")
_NUMERIC_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"
_UUID_TEXT = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

Encoder = Callable[[pl.Series], pa.Array]

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


class NotExact(Exception):
    """A value an encoder cannot convert exactly: that column travels as text this batch."""


def _valid(s: pl.Series) -> np.ndarray:
    return s.is_not_null().to_numpy()


def _check(parsed: pl.Series, s: pl.Series) -> None:
    """Every non-NULL text value must have converted."""
    if parsed.null_count() != s.null_count():
        raise NotExact


def _fixed(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Fixed-width big-endian values, one per row, as a fixed-size binary column with NULLs."""
    n = len(valid)
    width = values.dtype.itemsize * (values.shape[1] if values.ndim > 1 else 1)
    matrix = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    mask = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(matrix.shape[1]), n, [mask, pa.py_buffer(matrix)],
                                                null_count=int(n - valid.sum()))


def _specials(s: pl.Series, table: dict[str, int]) -> tuple[pl.Series, np.ndarray | None]:
    """Text with the special words of `table` (e.g. 'infinity') set NULL, and their codes."""
    hit = s.is_in(list(table))
    if not hit.any():
        return s, None
    codes = s.replace_strict(list(table), list(table.values()), default=0, return_dtype=pl.Int64).to_numpy()
    return pl.Series(s.name, s).set(hit, None), np.where(hit.to_numpy(), codes, 0)


def _integer(kind: str) -> Encoder:
    dtype, lo, hi = {"int2": (">i2", -(2**15), 2**15 - 1), "int4": (">i4", -(2**31), 2**31 - 1),
                     "int8": (">i8", -(2**63), 2**63 - 1)}[kind]

    def enc(s: pl.Series) -> pa.Array:
        v = s.cast(pl.Int64, strict=False)
        _check(v, s)
        if v.len() > v.null_count() and (v.min() < lo or v.max() > hi):  # type: ignore[operator]
            raise NotExact
        return _fixed(v.fill_null(0).to_numpy().astype(dtype), _valid(s))

    return enc


def _bool(s: pl.Series) -> pa.Array:
    if not (s.is_null() | s.is_in(["t", "f"])).all():
        raise NotExact
    return _fixed((s == "t").fill_null(False).to_numpy().astype(np.uint8), _valid(s))


def _float8(s: pl.Series) -> pa.Array:
    v = s.cast(pl.Float64, strict=False)
    _check(v, s)
    return _fixed(v.fill_null(0.0).to_numpy().astype(">f8"), _valid(s))


def _date(s: pl.Series) -> pa.Array:
    text, special = _specials(s, {"infinity": INT32_MAX, "-infinity": INT32_MIN})
    v = text.str.to_date("%Y-%m-%d", strict=False)
    _check(v, text)
    days = v.cast(pl.Int32).fill_null(0).to_numpy().astype(np.int64) - PG_EPOCH_DAYS
    if special is not None:
        days = np.where(special != 0, special, days)
    return _fixed(days.astype(">i4"), _valid(s))


def _timestamp(with_zone: bool) -> Encoder:
    def enc(s: pl.Series) -> pa.Array:
        text, special = _specials(s, {"infinity": INT64_MAX, "-infinity": INT64_MIN})
        if with_zone:  # sessions run in UTC (db.SESSION_OPTIONS): every value ends in +00
            if not (text.is_null() | text.str.ends_with("+00")).all():
                raise NotExact
            text = text.str.strip_suffix("+00")
        v = text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False)
        _check(v, text)
        us = v.dt.epoch("us").fill_null(0).to_numpy() - PG_EPOCH_US
        if special is not None:
            us = np.where(special != 0, special, us)
        return _fixed(us.astype(">i8"), _valid(s))

    return enc


def _numeric(s: pl.Series) -> pa.Array:
    """numeric: ndigits, weight, sign, dscale, then base-10000 digits (all int16).

    Every row of a batch gets the same digit count: the integer part padded on the
    left and the fraction on the right to whole groups of four. PostgreSQL strips
    leading and trailing zero digits on receipt, so the value and its display
    scale (dscale = the text's fraction digits) come out as from the text. NaN and
    the infinities are a sign code with (ignored) zero digits. A Decimal column (a
    math_expression result the full load keeps as Decimal, pipeline/copylayout.py) is taken as its
    values, with its scale as the display scale, as its text would give.
    """
    if isinstance(s.dtype, pl.Decimal):
        fast = _decimal_groups(s)
        return _numeric_out(*fast, None, _valid(s)) if fast is not None else _numeric(s.cast(pl.String))
    text, special = s, None
    fast = _numeric_uniform(text)  # the common batch has no NaN or infinity: try it as it is
    if fast is None:
        text, special = _specials(s, {"NaN": 0xC000, "Infinity": 0xD000, "-Infinity": 0xF000})
        fast = _numeric_uniform(text) if special is not None else None
    return _numeric_out(*(fast if fast is not None else _numeric_any(text)), special, _valid(s))


def _numeric_out(groups: np.ndarray, int_groups: int, dscale: int | np.ndarray, neg: np.ndarray,
                 special: np.ndarray | None, valid: np.ndarray) -> pa.Array:
    """The binary values from their base-10000 digit groups (the same count in every row)."""
    out = np.empty((len(valid), 4 + groups.shape[1]), dtype=">i2")
    out[:, 0] = groups.shape[1]
    out[:, 1] = int_groups - 1
    out[:, 2] = np.where(neg, 0x4000, 0).astype(np.uint16).view(np.int16)
    out[:, 3] = dscale
    out[:, 4:] = groups
    if special is not None:
        rows = special != 0
        out[rows, 2] = special[rows].astype(np.uint16).view(np.int16)
        out[rows, 3] = 0
        out[rows, 4:] = 0
    return _fixed(out, valid)


def _int64_groups(v: np.ndarray, dscale: int) -> tuple[np.ndarray, int, int, np.ndarray] | None:
    """Values given as value x 10^dscale in int64, as digit groups; None if padding the fraction
    to whole groups could leave int64."""
    frac_groups = -(-dscale // 4)
    scale = 10 ** (4 * frac_groups - dscale)  # to whole groups of four fraction digits
    if v.min(initial=0) > INT64_MIN and int(np.abs(v).max(initial=0)) < INT64_MAX // scale:
        mag = np.abs(v) * scale
        ngroups = max(frac_groups + 1, -(-len(str(int(mag.max(initial=0)))) // 4))
        groups = np.stack([(mag // 10_000**k) % 10_000 for k in reversed(range(ngroups))], axis=1)
        return groups.astype(np.int16), ngroups - frac_groups, dscale, v < 0
    return None


def _decimal_groups(s: pl.Series) -> tuple[np.ndarray, int, int, np.ndarray] | None:
    """A Decimal column's digit groups, when every value fits int64 (else None)."""
    arr = s.to_arrow()
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    words = np.frombuffer(arr.buffers()[1], np.int64, 2 * len(arr), arr.offset * 16).reshape(-1, 2)
    valid = _valid(s)
    low, high = words[:, 0], words[:, 1]
    if not (high == low >> 63)[valid].all():  # the high word only extends the sign: within int64
        return None
    return _int64_groups(np.where(valid, low, 0), arr.type.scale)


def _numeric_uniform(text: pl.Series) -> tuple[np.ndarray, int, int, np.ndarray] | None:
    """The common case, every value with the same number of decimals (numeric(p,s) columns,
    computed values): the digits as int64 (or one Int128), split into base-10000 groups
    arithmetically. None when the batch needs the general path."""
    dot = text.str.find(".", literal=True)
    scales = (text.str.len_bytes().cast(pl.Int64) - dot.cast(pl.Int64) - 1).fill_null(0)
    lo, hi = scales.min(), scales.max()
    if lo is None or lo != hi or not 0 <= int(hi) <= 0x3FFF:  # type: ignore[arg-type, operator]
        return None
    dscale = int(hi)  # type: ignore[arg-type]
    digits = text.str.replace(".", "", literal=True)
    frac_groups = -(-dscale // 4)
    scale = 10 ** (4 * frac_groups - dscale)  # to whole groups of four fraction digits
    small = digits.cast(pl.Int64, strict=False)  # up to 18 digits: numpy does the arithmetic
    if small.null_count() == text.null_count():
        found = _int64_groups(small.fill_null(0).to_numpy(), dscale)
        if found is not None:
            return found
    value = digits.cast(pl.Int128, strict=False)
    if value.null_count() != text.null_count():
        return None  # not plain digits, or more than 38 of them
    top = int(value.abs().max() or 0) * scale  # type: ignore[arg-type]
    if top >= 2**126:
        return None  # scaled to whole groups it might not fit Int128
    ngroups = max(frac_groups + 1, -(-len(str(top)) // 4))
    mag = pl.col("v").fill_null(0).abs() * pl.lit(scale, dtype=pl.Int128)
    groups = pl.DataFrame({"v": value}).select(
        ((mag // pl.lit(10_000**k, dtype=pl.Int128)) % 10_000).cast(pl.Int16).alias(f"g{k}")
        for k in reversed(range(ngroups))
    ).to_numpy()
    return groups, ngroups - frac_groups, dscale, (value.fill_null(0) < 0).to_numpy()


def _numeric_any(text: pl.Series) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Any plain decimals: integer and fraction parts padded to whole groups, as characters."""
    n = text.len()
    if not (text.is_null() | text.str.contains(_NUMERIC_TEXT)).all():
        raise NotExact
    body = text.fill_null("0")
    neg = body.str.starts_with("-").to_numpy()
    parts = body.str.strip_prefix("-").str.split_exact(".", 1).struct.unnest()
    whole, frac = parts.get_column("field_0"), parts.get_column("field_1").fill_null("")
    flen = frac.str.len_bytes()
    int_groups = max(1, -(-int(whole.str.len_bytes().max() or 1) // 4))  # type: ignore[operator]
    frac_digits = int(flen.max() or 0)  # type: ignore[operator]
    frac_groups = -(-frac_digits // 4)
    groups = int_groups + frac_groups
    if groups > 0x7FFF or frac_digits > 0x3FFF:
        raise NotExact
    digits = whole.str.pad_start(int_groups * 4, "0") + frac.str.pad_end(frac_groups * 4, "0")
    arr = digits.to_arrow().cast(pa.large_binary())
    start = int(np.frombuffer(arr.buffers()[1], dtype=np.int64, count=1, offset=arr.offset * 8)[0])
    chars = np.frombuffer(arr.buffers()[2], dtype=np.uint8, count=n * groups * 4, offset=start)
    base = (chars.reshape(n, groups, 4).astype(np.int16) - 48) @ np.array([1000, 100, 10, 1], dtype=np.int16)
    return base, int_groups, flen.to_numpy(), neg


def _text(prefix: str = "") -> Encoder:
    def enc(s: pl.Series) -> pa.Array:
        return ((prefix + s) if prefix else s).to_arrow()

    return enc


def _hex(kind: str) -> Encoder:
    """uuid (with dashes) and bytea (\\x...): hex text -> bytes."""

    def enc(s: pl.Series) -> pa.Array:
        if kind == "uuid":
            if not (s.is_null() | s.str.contains(_UUID_TEXT)).all():
                raise NotExact
            text = s.str.replace_all("-", "", literal=True)
        else:
            if not (s.is_null() | s.str.starts_with("\\x")).all():
                raise NotExact  # bytea_output = escape
            text = s.str.strip_prefix("\\x")
        v = text.str.decode("hex", strict=False)
        _check(v, s)
        return v.to_arrow()

    return enc


_ENCODERS: dict[str, Encoder] = {
    "smallint": _integer("int2"),
    "integer": _integer("int4"),
    "bigint": _integer("int8"),
    "boolean": _bool,
    "double precision": _float8,
    "date": _date,
    "timestamp without time zone": _timestamp(False),
    "timestamp with time zone": _timestamp(True),
    "numeric": _numeric,
    "text": _text(),
    "character varying": _text(),
    "character": _text(),
    "json": _text(),
    "jsonb": _text("\x01"),  # jsonb's binary form is a version byte, then the text
    "uuid": _hex("uuid"),
    "bytea": _hex("bytea"),
}


def type_name(pg_type: str) -> str:
    """'character varying(20)' -> 'character varying': format_type's name without the typmod."""
    return _TYPMOD.sub("", pg_type).strip().lower()


def encoder_for(pg_type: str) -> Encoder | None:
    """The encoder for a target column type (as format_type prints it), or None."""
    return _ENCODERS.get(type_name(pg_type))


def encoders_for(pg_types: Sequence[str]) -> list[Encoder] | None:
    """One encoder per column, or None when some column must travel as text."""
    found = [encoder_for(t) for t in pg_types]
    return None if any(e is None for e in found) else found  # type: ignore[return-value]


@dataclass(frozen=True)
class Tail:
    """The last `fields` fields of every COPY binary row, kept as one Binary value `name`.

    Why: the columns no step writes only travel from source to target. Kept as one
    slice of the row they are never cut into values, and the target receives the
    very bytes the source sent. The first `overlap` of them are also cut out as
    values (the last of the named columns): the plan reads them, the target takes
    them as they came.
    """

    name: str
    fields: int
    overlap: int = 0


def encode(df: pl.DataFrame, encoders: Sequence[Encoder | None],
           tail: Tail | None = None) -> tuple[list[Any], list[str]]:
    """The frame as a COPY binary stream (a list of buffers, in order), and the columns sent as text.

    A column with encoder None is already in binary form (a Binary column of each
    value's bytes) and passes as is. A String column whose values do not all convert
    exactly travels as its text bytes: the caller loads such a batch through a table
    where those columns are text, and PostgreSQL parses them (copyio.copy_binary).
    With a `tail`, that column (the last) is appended to each row as it is.
    One Arrow kernel joins each row from its fields: no Python per row.
    """
    n = df.height
    columns = df.columns[:-1] if tail else df.columns
    pieces: list[pa.Array] = [_words(np.full(n, len(columns) + (tail.fields if tail else 0), ">i2"))]
    as_text: list[str] = []
    for enc, name in zip(encoders, columns, strict=True):
        s = df.get_column(name)
        if enc is None:
            value = s.to_arrow()
        elif s.dtype != pl.String and not (isinstance(s.dtype, pl.Decimal) and enc is _numeric):
            raise TypeError(f"column {s.name} is {s.dtype}, expected String (PostgreSQL text)")
        else:
            try:
                value = enc(s)
            except NotExact:
                as_text.append(s.name)
                value = s.to_arrow()
        pieces += _field(value)
    if tail:
        pieces.append(large_binary(df.get_column(tail.name).to_arrow()))
    rows = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.large_binary()))
    offsets = np.frombuffer(rows.buffers()[1], np.int64, n + 1, rows.offset * 8)
    body = rows.buffers()[2][int(offsets[0]):int(offsets[n])] if n else b""
    return [HEADER, body, TRAILER], as_text


def _words(values: np.ndarray) -> pa.Array:
    """Fixed-width values (one per row) as a LargeBinary column, their bytes not copied."""
    n, width = len(values), values.dtype.itemsize
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def _field(value: pa.Array) -> list[pa.Array]:
    """One column's COPY binary fields: each value's length (-1 for NULL), then its bytes."""
    value = large_binary(value)
    lengths = np.diff(np.frombuffer(value.buffers()[1], np.int64, len(value) + 1, value.offset * 8))
    if value.null_count:
        lengths = np.where(value.is_valid().to_numpy(zero_copy_only=False), lengths, -1)
        value = value.fill_null(b"")
    return [_words(lengths.astype(">i4")), value]


def read_copy_binary(buf: bytes | bytearray, ends: np.ndarray, names: Sequence[str],
                     as_text: Sequence[bool], tail: Tail | None = None) -> pl.DataFrame:
    """COPY binary rows (one libpq message each, message i ending at ends[i]) as a frame.

    Columns marked `as_text` come out as String (UTF-8 checked): the source sent them
    as text (`col::text`). The others stay Binary: each value's bytes in the type's
    binary form, to be written to the target as they are. With a `tail`, the fields
    after `names` (and the last `tail.overlap` of them) stay together, uncut, as one
    Binary column (see Tail).
    """
    rows = RowBuffer(buf, np.asarray(ends, np.int64))
    shared = tail.overlap if tail else 0
    n = len(rows)
    first = 0
    if n and bytes(buf[: len(SIGNATURE)]) == SIGNATURE:
        (flags, ext) = struct.unpack_from("!ii", buf, len(SIGNATURE))
        if flags & (1 << 16):
            raise ValueError("COPY binary data with OIDs is not supported")
        first = len(SIGNATURE) + 8 + ext
    starts = rows.offs[:-1].copy()
    if n:
        starts[0] += first
    keep = rows.offs[1:] - starts != 0
    if n and rows.offs[n] - starts[n - 1] == 2 and bytes(buf[-2:]) == TRAILER:
        keep[n - 1] = False
    msg = np.flatnonzero(keep)
    pos, end = starts[msg], rows.offs[msg + 1]
    ncols = len(names)
    fields = ncols - shared + (tail.fields if tail else 0)
    if len(msg) and (rows.u16(pos) != fields).any():
        raise ValueError(f"COPY binary rows do not have {fields} fields")
    p = pos + 2
    width = ncols + (1 if tail else 0)
    vstarts = np.empty((width, len(msg)), np.int64)
    lens = np.empty((width, len(msg)), np.int64)
    valid = np.ones((width, len(msg)), bool)
    for k in range(ncols):
        if (p + 4 > end).any():
            raise ValueError("truncated COPY binary row")
        length = rows.i32(p)
        valid[k] = length >= 0
        lens[k] = np.maximum(length, 0)
        vstarts[k] = p + 4
        p = p + 4 + lens[k]
    if tail:
        vstarts[ncols] = vstarts[ncols - shared] - 4 if shared else p  # a field begins with its length
        lens[ncols] = end - vstarts[ncols]
        if (lens[ncols] < 4 * tail.fields).any():
            raise ValueError("truncated COPY binary row")
    elif (p != end).any():
        raise ValueError("COPY binary row length does not match its fields")
    names, as_text = [*names, *([tail.name] if tail else [])], [*as_text, *([False] if tail else [])]
    series = rows.columns(msg if len(msg) < n else None, names, vstarts, lens, valid, as_text)
    return pl.DataFrame(series)


def split_tail(value: bytes, fields: int) -> list[bytes | None]:
    """A Tail value back into its fields (for error records of single rows)."""
    out: list[bytes | None] = []
    pos = 0
    for _ in range(fields):
        (size,) = struct.unpack_from("!i", value, pos)
        pos += 4
        out.append(None if size < 0 else value[pos : pos + size])
        pos += max(size, 0)
    return out


def describe_raw(value: bytes, pg_type: str) -> object:
    """A binary value as a person would read it, for error records of rows that passed through raw."""
    kind = type_name(pg_type)
    try:
        if kind in ("smallint", "integer", "bigint"):
            return int.from_bytes(value, "big", signed=True)
        if kind == "boolean":
            return value != b"\x00"
        if kind == "double precision":
            return struct.unpack("!d", value)[0]
        if kind == "real":
            return struct.unpack("!f", value)[0]
        if kind in ("text", "character varying", "character", "json", "name", "xml"):
            return value.decode()
        if kind == "jsonb":
            return value[1:].decode()
        if kind == "date":
            return str(dt.date(2000, 1, 1) + dt.timedelta(days=int.from_bytes(value, "big", signed=True)))
        if kind in ("timestamp without time zone", "timestamp with time zone"):
            us = int.from_bytes(value, "big", signed=True)
            moment = timestamp_text(dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=us))
            return moment + ("+00" if "with time" in kind else "")
        if kind == "uuid":
            return str(uuid.UUID(bytes=value))
        if kind == "numeric":
            return numeric_text(value)
    except (ValueError, OverflowError, struct.error):
        pass
    return "\\x" + value.hex()
