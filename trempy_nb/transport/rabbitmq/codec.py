"""Versioned binary encoding of a `ChangeBatch`: one broker message per batch.

Layout (all integers big-endian):

    b"TRMQ"  magic
    u8       format version (VERSION)
    u32      header length H
    H bytes  UTF-8 JSON header: batch fields and, per table, its name, TRUNCATE
             positions and the (offset, length) of its Arrow IPC stream
    ...      the Arrow IPC streams of the table frames, back to back

Data columns stay PostgreSQL text (see `changes.py`), so every type round-trips
exactly; the meta columns keep their Polars types. `decode` validates the magic,
version and every length and raises `CodecError` (terminal) with a reason, so a
malformed or foreign message is dead-lettered instead of crashing the consumer.

A payload larger than the broker's message size limit is cut into parts
(`split`); the consumer puts them back together (`join`) before decoding.
"""

from __future__ import annotations

import io
import json
import struct
from datetime import datetime
from typing import Any

import polars as pl

from trempy_nb.changes import ChangeBatch, TableChanges
from trempy_nb.errors import TerminalError

MAGIC = b"TRMQ"
VERSION = 1
_FIXED = struct.Struct(">4sBI")
CONTENT_TYPE = "application/x-trempy-batch"
DEFAULT_COMPRESSION = "lz4"


class CodecError(TerminalError):
    """A message that is not a batch this version can read (dead-lettered with this reason)."""


def encode(batch: ChangeBatch, compression: str = DEFAULT_COMPRESSION) -> bytes:
    """The batch as one byte string (Arrow IPC stream per table + a small JSON header)."""
    blobs: list[bytes] = []
    tables: list[dict[str, Any]] = []
    offset = 0
    for tc in batch.tables:
        buf = io.BytesIO()
        tc.frame.write_ipc_stream(buf, compression=compression)  # type: ignore[call-overload]  # a str option
        blob = buf.getvalue()
        tables.append(
            {
                "schema": tc.schema,
                "table": tc.table,
                "truncated_at": [_trunc_out(t) for t in tc.truncated_at],
                "offset": offset,
                "length": len(blob),
                "rows": tc.frame.height,
            }
        )
        blobs.append(blob)
        offset += len(blob)
    header = json.dumps(
        {
            "first_lsn": int(batch.first_lsn),
            "end_lsn": int(batch.end_lsn),
            "n_transactions": int(batch.n_transactions),
            "source_bytes": int(batch.source_bytes),
            "tables": tables,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join([_FIXED.pack(MAGIC, VERSION, len(header)), header, *blobs])


def read_header(payload: bytes) -> dict[str, Any]:
    """The JSON header only (cheap: no Arrow decoding); raises CodecError."""
    return _header(payload)[0]


def _header(payload: bytes) -> tuple[dict[str, Any], int]:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload is {type(payload).__name__}, not bytes")
    if len(payload) < _FIXED.size:
        raise CodecError(f"payload of {len(payload)} bytes is too short for a trempy batch")
    magic, version, hlen = _FIXED.unpack_from(payload, 0)
    if magic != MAGIC:
        raise CodecError(f"not a trempy batch (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CodecError(
            f"unknown batch format version {version} (this consumer reads version {VERSION})"
        )
    start = _FIXED.size
    if start + hlen > len(payload):
        raise CodecError(f"header length {hlen} runs past the end of a {len(payload)}-byte payload")
    try:
        header = json.loads(bytes(payload[start : start + hlen]))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        for name in ("first_lsn", "end_lsn", "tables"):
            if name not in header:
                raise ValueError(f"header lacks {name}")
        if not isinstance(header["tables"], list):
            raise ValueError("tables is not a list")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"malformed batch header: {exc}") from None
    return header, start + hlen


def decode(payload: bytes) -> ChangeBatch:
    """Back to a `ChangeBatch`; raises CodecError naming what is wrong."""
    header, body = _header(payload)
    view = memoryview(payload)
    tables: list[TableChanges] = []
    for i, t in enumerate(header["tables"]):
        try:
            schema, table = str(t["schema"]), str(t["table"])
            offset, length = int(t["offset"]), int(t["length"])
            truncated = [_trunc_in(x) for x in t.get("truncated_at", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"malformed table entry {i} in batch header: {exc}") from None
        if offset < 0 or length < 0 or body + offset + length > len(payload):
            raise CodecError(
                f"table {schema}.{table}: data ({offset}+{length}) runs past the payload end"
            )
        try:
            frame = pl.read_ipc_stream(io.BytesIO(view[body + offset : body + offset + length]))
        except Exception as exc:  # noqa: BLE001 - any Arrow failure means a corrupt payload
            raise CodecError(
                f"table {schema}.{table}: corrupt Arrow data: {type(exc).__name__}: {exc}"
            ) from None
        tables.append(TableChanges(schema, table, frame, truncated_at=truncated))
    try:
        return ChangeBatch(
            first_lsn=int(header["first_lsn"]),
            end_lsn=int(header["end_lsn"]),
            tables=tables,
            n_transactions=int(header.get("n_transactions", 0)),
            source_bytes=int(header.get("source_bytes", 0)),
        )
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed batch header: {exc}") from None


def _trunc_out(t: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = [int(t[0]), int(t[1])]
    if len(t) > 2 and t[2] is not None:
        out.append(t[2].isoformat() if isinstance(t[2], datetime) else t[2])
    return out


def _trunc_in(x: list[Any]) -> tuple[Any, ...]:
    if not isinstance(x, list) or len(x) < 2:
        raise ValueError(f"bad truncate entry {x!r}")
    head = (int(x[0]), int(x[1]))
    return (*head, datetime.fromisoformat(x[2])) if len(x) > 2 else head


def split(payload: bytes, max_part: int) -> list[bytes]:
    """Cut a payload into parts of at most `max_part` bytes (one part when it fits)."""
    if max_part < 1:
        raise ValueError("max_part must be >= 1")
    if len(payload) <= max_part:
        return [payload]
    return [payload[i : i + max_part] for i in range(0, len(payload), max_part)]


def join(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


__all__ = [
    "CodecError",
    "CONTENT_TYPE",
    "VERSION",
    "decode",
    "encode",
    "join",
    "read_header",
    "split",
]
