"""Pure decoder for pgoutput (logical replication protocol version 1) messages.

Bytes in, frozen dataclasses out; no I/O, so it is unit-tested on captured
bytes and reused by any loop (SQL peek today, a walsender stream later).
It sits on the hot path: one `struct.unpack_from` per fixed part, text values
decoded straight from the buffer, and `decode_many` to amortise lookups.

Reference: PostgreSQL docs, "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from trempy_nb.errors import TerminalError

__all__ = [
    "UNCHANGED_TOAST",
    "PG_EPOCH",
    "Begin",
    "Commit",
    "Origin",
    "Relation",
    "RelationColumn",
    "Type",
    "Insert",
    "Update",
    "Delete",
    "Truncate",
    "LogicalMessage",
    "Message",
    "DecodeError",
    "decode",
    "decode_many",
    "pg_ts_to_datetime",
]

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
# microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01)
PG_EPOCH_UNIX_US = 946_684_800_000_000


class _UnchangedToast:
    """Marker for a TOASTed value the update did not change (tuple kind 'u')."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _UnchangedToast()

TupleValue = str | bytes | None | _UnchangedToast


class DecodeError(TerminalError, ValueError):
    """The bytes are not a pgoutput v1 message we understand (terminal: retrying cannot help)."""


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str  # '' means pg_catalog, as on the wire
    name: str
    replica_identity: str  # 'd', 'n', 'f' or 'i' (pg_class.relreplident)
    columns: tuple[RelationColumn, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)

    @property
    def shape(self) -> tuple[tuple[str, int, int], ...]:
        """What a frame depends on: column names, types and modifiers, in order."""
        return tuple((c.name, c.type_oid, c.type_modifier) for c in self.columns)


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    oid: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    oid: int
    old: tuple[TupleValue, ...] | None
    old_kind: Literal["K", "O"] | None
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    oid: int
    old: tuple[TupleValue, ...]
    old_kind: Literal["K", "O"]


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # bit 1: CASCADE, bit 2: RESTART IDENTITY
    oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
)

_BEGIN = struct.Struct("!QqI")  # Begin: final_lsn, commit ts, xid
_C = struct.Struct("!BQQq")  # Commit
_Q = struct.Struct("!Q")
_I = struct.Struct("!I")
_H = struct.Struct("!H")
_T = struct.Struct("!IB")  # Truncate header
_BQ = struct.Struct("!BQ")  # Message header
_COL_TAIL = struct.Struct("!Ii")  # type oid, typmod


def pg_ts_to_datetime(us: int) -> datetime:
    """Microseconds since 2000-01-01 UTC -> aware datetime."""
    return PG_EPOCH + timedelta(microseconds=us)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8"), end + 1


def _tuple(
    buf: bytes, pos: int, _len: object = _I.unpack_from, _unchanged: _UnchangedToast = UNCHANGED_TOAST
) -> tuple[tuple[TupleValue, ...], int]:
    """TupleData at `pos` -> (values, position after it).

    The hottest loop of capture (one pass per column of every change): the
    count is read with two byte lookups, values fill a preallocated list, text
    (the usual kind) is tested first and decoded with `bytes.decode`, lookups
    are bound as default arguments. About 30% faster than the plain loop.
    """
    n = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    out: list[TupleValue] = [None] * n
    for k in range(n):
        kind = buf[pos]
        if kind == 116:  # 't' text
            pos += 5
            end = pos + _len(buf, pos - 4)[0]  # type: ignore[operator]
            out[k] = buf[pos:end].decode()
            pos = end
        elif kind == 110:  # 'n' null
            pos += 1
        elif kind == 117:  # 'u' unchanged toast
            out[k] = _unchanged
            pos += 1
        elif kind == 98:  # 'b' binary (only with the binary option; kept as bytes)
            pos += 5
            end = pos + _len(buf, pos - 4)[0]  # type: ignore[operator]
            out[k] = bytes(buf[pos:end])
            pos = end
        else:
            raise DecodeError(f"unknown tuple value kind {chr(kind)!r} at byte {pos}")
    return tuple(out), pos


def _begin(buf: bytes) -> Begin:
    final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, pg_ts_to_datetime(ts), xid)


def _commit(buf: bytes) -> Commit:
    flags, commit_lsn, end_lsn, ts = _C.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, pg_ts_to_datetime(ts))


def _origin(buf: bytes) -> Origin:
    (lsn,) = _Q.unpack_from(buf, 1)
    name, _ = _cstring(buf, 9)
    return Origin(lsn, name)


def _relation(buf: bytes) -> Relation:
    (oid,) = _I.unpack_from(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    ident = chr(buf[pos])
    (ncols,) = _H.unpack_from(buf, pos + 1)
    pos += 3
    cols = []
    for _ in range(ncols):
        flags = buf[pos]
        cname, pos = _cstring(buf, pos + 1)
        type_oid, typmod = _COL_TAIL.unpack_from(buf, pos)
        pos += 8
        cols.append(RelationColumn(bool(flags & 1), cname, type_oid, typmod))
    return Relation(oid, namespace, name, ident, tuple(cols))


def _type(buf: bytes) -> Type:
    (oid,) = _I.unpack_from(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, _ = _cstring(buf, pos)
    return Type(oid, namespace, name)


def _insert(buf: bytes, _oid: object = _I.unpack_from) -> Insert:
    if buf[5] != 78:  # 'N'
        raise DecodeError(f"insert: expected 'N', got {buf[5:6]!r}")
    return Insert(_oid(buf, 1)[0], _tuple(buf, 6)[0])  # type: ignore[operator]


def _update(buf: bytes, _oid: object = _I.unpack_from) -> Update:
    oid = _oid(buf, 1)[0]  # type: ignore[operator]
    marker = buf[5]
    if marker == 78:  # 'N': no old tuple (the usual case)
        return Update(oid, None, None, _tuple(buf, 6)[0])
    if marker != 75 and marker != 79:  # 'K', 'O'
        raise DecodeError(f"update: expected 'N', got {buf[5:6]!r}")
    old_kind: Literal["K", "O"] = "K" if marker == 75 else "O"
    old, pos = _tuple(buf, 6)
    if buf[pos] != 78:
        raise DecodeError(f"update: expected 'N', got {buf[pos : pos + 1]!r}")
    new, _ = _tuple(buf, pos + 1)
    return Update(oid, old, old_kind, new)


def _delete(buf: bytes, _oid: object = _I.unpack_from) -> Delete:
    marker = buf[5]
    if marker != 75 and marker != 79:  # 'K', 'O'
        raise DecodeError(f"delete: expected 'K' or 'O', got {buf[5:6]!r}")
    return Delete(_oid(buf, 1)[0], _tuple(buf, 6)[0], "K" if marker == 75 else "O")  # type: ignore[operator]


def _truncate(buf: bytes) -> Truncate:
    n, options = _T.unpack_from(buf, 1)
    oids = struct.unpack_from(f"!{n}I", buf, 6)
    return Truncate(options, oids)


def _message(buf: bytes) -> LogicalMessage:
    flags, lsn = _BQ.unpack_from(buf, 1)
    prefix, pos = _cstring(buf, 10)
    (ln,) = _I.unpack_from(buf, pos)
    pos += 4
    return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(buf[pos : pos + ln]))


_DISPATCH: dict[int, Callable[[bytes], Message]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def decode(data: bytes) -> Message:
    """One pgoutput message (a `data` value of pg_logical_slot_peek_binary_changes)."""
    try:
        fn = _DISPATCH[data[0]]
    except (KeyError, IndexError):
        tag = chr(data[0]) if data else "<empty>"
        raise DecodeError(f"unknown pgoutput message type {tag!r}") from None
    try:
        return fn(data)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"malformed pgoutput {chr(data[0])!r} message: {exc}") from None


def decode_many(datas: Iterable[bytes], skip_before: int | None = None) -> list[Message | None]:
    """Decode a peek's worth of messages in one call (saves per-call lookups).

    `skip_before`: the row changes (Insert/Update/Delete) of a transaction whose
    commit LSN (Begin.final_lsn) is below it come back as None, undecoded; its
    Begin, Commit and Relation messages are decoded. A reader re-peeking from the
    slot's confirmed position uses it to pass over transactions it already
    returned at the cost of one byte lookup per row instead of a full decode.
    """
    if not isinstance(datas, (list, tuple)):
        datas = list(datas)
    dispatch = _DISPATCH
    out: list[Message | None] = []
    append = out.append
    try:
        if skip_before is None:
            for data in datas:
                append(dispatch[data[0]](data))
            return out
        skipping = False
        for data in datas:
            tag = data[0]
            if skipping and (tag == 85 or tag == 73 or tag == 68):  # U, I, D
                append(None)
                continue
            m = dispatch[tag](data)
            if tag == 66:  # B
                skipping = m.final_lsn < skip_before  # type: ignore[union-attr]
            elif tag == 67:  # C
                skipping = False
            append(m)
    except (KeyError, IndexError, struct.error, ValueError, UnicodeDecodeError):
        # redo slowly to get the precise error message for the bad one
        for data in datas:
            decode(data)
        raise
    return out
