"""The streaming replication sub-protocol inside COPY BOTH: bytes in, bytes out, no sockets.

After `START_REPLICATION`, every CopyData message from the walsender is either
XLogData ('w': a header, then one pgoutput message) or a primary keepalive
('k': the server's WAL end and whether it wants a reply); the client sends
standby status updates ('r': written/flushed/applied positions). Kept apart
from the connection (`capture/stream.py`) so it is unit-tested on bytes, like
the pgoutput decoder, and the session code only moves bytes.

Layouts (PostgreSQL docs, "Streaming Replication Protocol"), all big-endian:
- XLogData: 'w', Int64 data start, Int64 WAL end, Int64 send clock, then the payload;
- keepalive: 'k', Int64 WAL end, Int64 send clock, Byte1 reply requested;
- status update: 'r', Int64 written, Int64 flushed, Int64 applied, Int64 clock, Byte1 reply.
Clocks are microseconds since 2000-01-01 UTC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timezone

#: a CopyData message as libpq hands it over (psycopg gives a memoryview)
Buffer = bytes | bytearray | memoryview

__all__ = [
    "PG_EPOCH",
    "XLOG_HEADER",
    "XLogHeader",
    "Keepalive",
    "xlog_payload",
    "xlog_header",
    "keepalive",
    "standby_status",
    "pg_clock",
]

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
TAG_XLOG, TAG_KEEPALIVE, TAG_STATUS = 119, 107, b"r"  # 'w', 'k', 'r'
XLOG_HEADER = 25  # 'w' + data start + WAL end + clock
_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")


@dataclass(frozen=True)
class XLogHeader:
    data_start: int  # WAL position the payload starts at (0 for pgoutput messages)
    wal_end: int  # the server's current WAL end
    clock: int  # server send time, microseconds since PG_EPOCH


@dataclass(frozen=True)
class Keepalive:
    wal_end: int  # the server's WAL end: everything before it was sent
    clock: int
    reply: bool  # answer now, or be disconnected after wal_sender_timeout


def xlog_payload(data: Buffer) -> memoryview | None:
    """The pgoutput message an XLogData CopyData carries (a view, no copy); None if not XLogData.

    The hot path of the stream (once per change): one tag test and a slice."""
    if data[0] != TAG_XLOG:
        return None
    if len(data) < XLOG_HEADER:
        raise ValueError(f"XLogData of {len(data)} bytes is shorter than its header")
    return memoryview(data)[XLOG_HEADER:]


def xlog_header(data: Buffer) -> XLogHeader:
    """The positions and clock of an XLogData message."""
    if data[0] != TAG_XLOG or len(data) < XLOG_HEADER:
        raise ValueError("not an XLogData message")
    return XLogHeader(*_XLOG.unpack_from(data, 1))


def keepalive(data: Buffer) -> Keepalive | None:
    """A primary keepalive message, or None if `data` is something else."""
    if data[0] != TAG_KEEPALIVE:
        return None
    if len(data) < 1 + _KEEPALIVE.size:
        raise ValueError(f"keepalive of {len(data)} bytes is too short")
    end, clock, reply = _KEEPALIVE.unpack_from(data, 1)
    return Keepalive(end, clock, bool(reply))


def pg_clock(now: datetime) -> int:
    """`now` as the protocol's clock: microseconds since 2000-01-01 UTC."""
    d = now - PG_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def standby_status(flushed: int, now: datetime, *, reply: bool = False) -> bytes:
    """A standby status update reporting `flushed` as written, flushed and applied.

    The walsender moves the slot's confirmed position to `flushed`: everything
    before it may be released. `reply` asks for a keepalive at once."""
    return _STATUS.pack(TAG_STATUS, flushed, flushed, flushed, pg_clock(now), int(reply))
