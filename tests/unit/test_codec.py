"""The broker wire format: round trips, splitting, and clear errors for bad payloads."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import polars as pl
import pytest

from trempy_nb import changes as ch
from trempy_nb.transport.rabbitmq import codec


def _frame(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [str(i) for i in range(start, start + n)],
            "name": [None if i % 5 == 0 else f"name é {i}" for i in range(n)],
            "payload": ['{"a": [1, 2]}' for _ in range(n)],
            ch.OP: ["I", "U", "D"][0:1] * n,
            ch.LSN: [1000 + i for i in range(n)],
            ch.TS: [datetime(2024, 1, 1, tzinfo=timezone.utc)] * n,
            ch.SEQ: list(range(n)),
            ch.UNCHANGED: [["payload"] if i == 3 else None for i in range(n)],
        },
        schema_overrides={ch.TS: pl.Datetime("us", "UTC"), ch.UNCHANGED: pl.List(pl.String)},
    )


def _batch() -> ch.ChangeBatch:
    return ch.ChangeBatch(
        first_lsn=1000,
        end_lsn=2000,
        tables=[
            ch.TableChanges("public", "t", _frame(50)),
            ch.TableChanges("odd schema", 'we"ird', _frame(0), truncated_at=[(7, 1500)]),
        ],
        n_transactions=3,
        source_bytes=12345,
    )


@pytest.mark.parametrize("compression", ["lz4", "uncompressed", "zstd"])
def test_round_trip(compression: str) -> None:
    batch = _batch()
    out = codec.decode(codec.encode(batch, compression=compression))
    assert (out.first_lsn, out.end_lsn, out.n_transactions, out.source_bytes) == (
        1000,
        2000,
        3,
        12345,
    )
    assert [(t.schema, t.table, t.truncated_at) for t in out.tables] == [
        ("public", "t", []),
        ("odd schema", 'we"ird', [(7, 1500)]),
    ]
    for a, b in zip(batch.tables, out.tables, strict=True):
        assert a.frame.schema == b.frame.schema
        assert a.frame.equals(b.frame, null_equal=True)


def test_truncate_with_time_round_trips() -> None:
    ts = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    batch = ch.ChangeBatch(1, 2, [ch.TableChanges("s", "t", _frame(1), truncated_at=[(0, 2, ts)])])  # type: ignore[list-item]
    assert codec.decode(codec.encode(batch)).tables[0].truncated_at == [(0, 2, ts)]


def test_header_only() -> None:
    h = codec.read_header(codec.encode(_batch()))
    assert h["end_lsn"] == 2000 and [t["rows"] for t in h["tables"]] == [50, 0]


def test_split_and_join() -> None:
    payload = codec.encode(
        ch.ChangeBatch(1, 2, [ch.TableChanges("s", "t", _frame(5000))]), compression="uncompressed"
    )
    parts = codec.split(payload, 4096)
    assert len(parts) > 10 and all(len(p) <= 4096 for p in parts)
    assert codec.join(parts) == payload
    assert codec.decode(codec.join(parts)).tables[0].frame.height == 5000
    assert codec.split(payload, len(payload)) == [payload]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "too short"),
        (b"hello world, not a batch", "not a trempy batch"),
        (b"TRMQ" + struct.pack(">BI", 99, 2) + b"{}", "unknown batch format version 99"),
        (b"TRMQ" + struct.pack(">BI", 1, 500) + b"{}", "runs past the end"),
        (b"TRMQ" + struct.pack(">BI", 1, 5) + b"nope!", "malformed batch header"),
        (b"TRMQ" + struct.pack(">BI", 1, 2) + b"{}", "lacks first_lsn"),
    ],
)
def test_bad_payloads_raise_clear_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(codec.CodecError, match=reason):
        codec.decode(payload)


def test_truncated_arrow_data() -> None:
    payload = codec.encode(_batch())
    with pytest.raises(codec.CodecError, match="runs past the payload end"):
        codec.decode(payload[:-10])
    broken = bytearray(payload)
    hlen = struct.unpack_from(">I", payload, 5)[0]
    start = 9 + hlen
    broken[start : start + 40] = b"\x00" * 40
    with pytest.raises(codec.CodecError, match="corrupt Arrow data"):
        codec.decode(bytes(broken))


def test_codec_error_is_terminal() -> None:
    from trempy_nb.writer.errorpolicy import is_transient

    assert not is_transient(codec.CodecError("x"))
