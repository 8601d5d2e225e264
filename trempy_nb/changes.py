"""The one event type shared by capture, transport, pipeline and writer.

A `ChangeBatch` is a run of whole source transactions. Per table it holds one
Polars frame: data columns carry PostgreSQL's *text representation* of each
value (exactly what pgoutput sends and COPY text reads, so every type
round-trips without conversion), plus the meta columns below. Rows are in
source commit order (`_trempy_seq`).

Full-load frames use the same data-column convention without the meta columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

OP = "_trempy_op"  # "I" insert, "U" update, "D" delete (data columns hold the key)
LSN = "_trempy_lsn"  # commit LSN of the source transaction (int)
TS = "_trempy_ts"  # commit time of the source transaction (UTC datetime, microseconds)
SEQ = "_trempy_seq"  # order of the change inside the batch
UNCHANGED = "_trempy_unchanged"  # list of columns whose TOASTed value did not change (or null)
META_COLUMNS = (OP, LSN, TS, SEQ, UNCHANGED)
META_SCHEMA: dict[str, pl.DataType] = {
    OP: pl.String(),
    LSN: pl.Int64(),
    TS: pl.Datetime("us", "UTC"),
    SEQ: pl.Int64(),
    UNCHANGED: pl.List(pl.String()),
}


@dataclass
class TableChanges:
    """The changes of one source table in a batch (source column names, text values)."""

    schema: str
    table: str
    frame: pl.DataFrame
    truncated_at: list[tuple[int, int]] = field(default_factory=list)  # (seq, lsn) of TRUNCATEs

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.table)

    @property
    def data_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in META_SCHEMA]


@dataclass
class ChangeBatch:
    """Whole transactions from `first_lsn` up to and including the commit at `end_lsn`."""

    first_lsn: int
    end_lsn: int
    tables: list[TableChanges] = field(default_factory=list)
    n_transactions: int = 0
    source_bytes: int = 0

    @property
    def n_changes(self) -> int:
        return sum(t.frame.height for t in self.tables) + sum(len(t.truncated_at) for t in self.tables)


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> int."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
