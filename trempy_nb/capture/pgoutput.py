"""Pure decoder for pgoutput (logical replication protocol version 1) messages.

Bytes in, frozen dataclasses out; no I/O, so it is unit-tested on captured
bytes and reused by any loop (SQL peek today, a walsender stream later).
It sits on the hot path: one `struct.unpack_from` per fixed part, text values
decoded straight from the buffer, and `decode_many` to amortise lookups.

Reference: PostgreSQL docs, "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
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
_IB = struct.Struct("!Ic")  # oid + tuple marker
_T = struct.Struct("!IB")  # Truncate header
_BQ = struct.Struct("!BQ")  # Message header
_COL_TAIL = struct.Struct("!Ii")  # type oid, typmod


def pg_ts_to_datetime(us: int) -> datetime:
    """Microseconds since 2000-01-01 UTC -> aware datetime."""
    return PG_EPOCH + timedelta(microseconds=us)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8"), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[tuple[TupleValue, ...], int]:
    """TupleData at `pos` -> (values, position after it)."""
    (n,) = _H.unpack_from(buf, pos)
    pos += 2
    out: list[TupleValue] = []
    append = out.append
    unpack_len = _I.unpack_from
    for _ in range(n):
        kind = buf[pos]
        if kind == 116:  # 't' text
            end = pos + 5 + unpack_len(buf, pos + 1)[0]
            append(str(buf[pos + 5 : end], "utf-8"))
            pos = end
        elif kind == 110:  # 'n' null
            append(None)
            pos += 1
        elif kind == 117:  # 'u' unchanged toast
            append(UNCHANGED_TOAST)
            pos += 1
        elif kind == 98:  # 'b' binary (only with the binary option; kept as bytes)
            (ln,) = unpack_len(buf, pos + 1)
            pos += 5
            append(bytes(buf[pos : pos + ln]))
            pos += ln
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


def _insert(buf: bytes) -> Insert:
    oid, marker = _IB.unpack_from(buf, 1)
    if marker != b"N":
        raise DecodeError(f"insert: expected 'N', got {marker!r}")
    new, _ = _tuple(buf, 6)
    return Insert(oid, new)


def _update(buf: bytes) -> Update:
    oid, marker = _IB.unpack_from(buf, 1)
    old = None
    old_kind: Literal["K", "O"] | None = None
    pos = 6
    if marker == b"K" or marker == b"O":
        old_kind = "K" if marker == b"K" else "O"
        old, pos = _tuple(buf, pos)
        marker = buf[pos : pos + 1]
        pos += 1
    if marker != b"N":
        raise DecodeError(f"update: expected 'N', got {marker!r}")
    new, _ = _tuple(buf, pos)
    return Update(oid, old, old_kind, new)


def _delete(buf: bytes) -> Delete:
    oid, marker = _IB.unpack_from(buf, 1)
    if marker != b"K" and marker != b"O":
        raise DecodeError(f"delete: expected 'K' or 'O', got {marker!r}")
    old, _ = _tuple(buf, 6)
    return Delete(oid, old, "K" if marker == b"K" else "O")


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


_DISPATCH = {
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


def decode_many(datas: Iterable[bytes]) -> list[Message]:
    """Decode a peek's worth of messages in one call (saves per-call lookups)."""
    if not isinstance(datas, (list, tuple)):
        datas = list(datas)
    dispatch = _DISPATCH
    out: list[Message] = []
    append = out.append
    try:
        for data in datas:
            append(dispatch[data[0]](data))
    except (KeyError, IndexError, struct.error, ValueError, UnicodeDecodeError):
        # redo slowly to get the precise error message for the bad one
        for data in datas:
            decode(data)
        raise
    return out
