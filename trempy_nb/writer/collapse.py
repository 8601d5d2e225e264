"""Reduce one table's change rows in a batch to what the target needs: pure Polars, no I/O.

The writer applies a batch with one statement per operation kind, so each
statement must see each key at most once (upsert) or once per source
transaction (SCD2). This module decides, per key, which rows survive and in
which order; `apply.py` only stages and runs the result.

- Rows at or below the checkpoint LSN are dropped (a partly replayed batch).
- Unchanged TOAST values are forward-filled from an earlier change of the same
  key in the batch; what cannot be filled here stays marked (one boolean
  column per such data column) and is filled from the target in SQL.
- upsert: the last change of a key (in SEQ order) wins; a TRUNCATE makes every
  earlier row irrelevant.
- scd2: the last change of a key in each source transaction is one version
  event; each event knows the next event's commit time (its version's end)
  and whether it is the key's first in the segment (it closes the target's
  current version). TRUNCATEs split the batch into segments applied in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union

import polars as pl

from trempy_nb.changes import LSN, OP, SEQ, TS, UNCHANGED
from trempy_nb.writer.sql import S_END, S_FIRST, S_OP, S_TS

MARKER_PREFIX = "_trempy_u"
_RN = "_trempy_rn"
_TS_FORMAT = "%Y-%m-%d %H:%M:%S%.6f%:z"


@dataclass(frozen=True)
class Truncate:
    """A TRUNCATE of the table at `seq` in the batch, committed at `lsn`/`ts` (ts None: unknown)."""

    seq: int
    lsn: int
    ts: datetime | None = None


@dataclass
class Rows:
    """Staging-ready rows: data columns (text), S_OP, S_TS (+ S_END, S_FIRST in scd2), markers, SEQ/LSN."""

    frame: pl.DataFrame
    markers: list[tuple[str, str]] = field(default_factory=list)  # (data column, marker column)


Step = Union[Truncate, Rows]  # noqa: UP007 (runtime alias must work on 3.10)


@dataclass
class TablePlan:
    steps: list[Step]
    replayed: int = 0  # rows dropped: already applied (LSN <= checkpoint)
    merged: int = 0  # rows folded into a later change of the same key


def normalize_truncates(
    truncated_at: Sequence[tuple], frame: pl.DataFrame | None = None
) -> list[Truncate]:
    """(seq, lsn[, ts]) tuples -> Truncate, sorted by seq; a missing ts is taken from a row of the same transaction."""
    out: list[Truncate] = []
    for item in truncated_at:
        seq, lsn = int(item[0]), int(item[1])
        ts = item[2] if len(item) > 2 else None
        if ts is None and frame is not None and frame.height and TS in frame.columns:
            same = frame.filter(pl.col(LSN) == lsn).get_column(TS)
            ts = same.item(0) if same.len() else None
        out.append(Truncate(seq, lsn, ts))
    return sorted(out, key=lambda t: t.seq)


def forward_fill_unchanged(
    df: pl.DataFrame, key: Sequence[str], columns: Sequence[str]
) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """Fill unchanged-TOAST values from the key's previous change in the batch; mark the rest.

    `df` must be sorted by SEQ. A delete row with a NULL value is not a source
    (a real delete carries only the key). Returns the frame without the
    UNCHANGED list, plus (column, marker) pairs for markers still set somewhere.
    """
    if UNCHANGED not in df.columns:
        return df, []
    listed = set(df.get_column(UNCHANGED).explode().drop_nulls().unique().to_list())
    toast = [c for c in columns if c in listed and c not in key]
    if not toast:
        return df.drop(UNCHANGED), []
    keys = list(key)
    df = df.with_row_index(_RN)
    exprs: list[pl.Expr] = []
    pairs: list[tuple[str, str]] = []
    for i, col in enumerate(toast):
        marker = f"{MARKER_PREFIX}{i}"
        marked = pl.col(UNCHANGED).list.contains(pl.lit(col)).fill_null(False)
        is_source = ~marked & ~((pl.col(OP) == "D") & pl.col(col).is_null())
        src = pl.when(is_source).then(pl.col(_RN)).forward_fill().over(keys)
        exprs.append(
            pl.when(marked).then(pl.col(col).gather(src)).otherwise(pl.col(col)).alias(col)
        )
        exprs.append((marked & src.is_null()).alias(marker))
        pairs.append((col, marker))
    df = df.with_columns(exprs).drop(_RN, UNCHANGED)
    still = df.select(pl.col(m).any() for _, m in pairs).row(0)
    keep = [p for p, any_left in zip(pairs, still, strict=True) if any_left]
    df = df.drop([m for (_, m), any_left in zip(pairs, still, strict=True) if not any_left])
    return df, keep


def fill_moved_toast(
    frame: pl.DataFrame, key: Sequence[str], lookup: Callable[[str, tuple], tuple[bool, Any]]
) -> pl.DataFrame:
    """An update that changed the key arrives as 'D' old key + 'I' new key; under REPLICA IDENTITY
    DEFAULT a TOASTed value it left unchanged is not in the WAL (the 'I' lists it as unchanged,
    the 'D' holds only the key). Take it from the old key: its last value earlier in the batch,
    else `lookup(column, old key)` -> (found, value): the old key's row on the target as it is
    before this batch, in the frame's text form (the writer asks it first: the batch deletes it)."""
    if UNCHANGED not in frame.columns or frame.height == 0:
        return frame
    if not frame.select(((pl.col(OP) == "I") & pl.col(UNCHANGED).is_not_null()).any()).item():
        return frame  # the usual case: no moved row lacks a value (checked without Python lists)
    df = frame.sort(SEQ)
    key = list(key)
    ops, seqs, lsns = df.get_column(OP).to_list(), df.get_column(SEQ).to_list(), df.get_column(LSN).to_list()
    unchanged = df.get_column(UNCHANGED).to_list()
    keys = df.select(key).rows()
    moved = [i for i in range(1, df.height) if ops[i] == "I" and unchanged[i] and ops[i - 1] == "D"
             and lsns[i] == lsns[i - 1] and seqs[i] == seqs[i - 1] + 1 and keys[i] != keys[i - 1]]
    if not moved:
        return frame
    values: dict[tuple[int, str], Any] = {}
    for i in moved:
        for col in unchanged[i]:
            if col not in df.columns or col in key:
                continue
            j = i - 2
            while j >= 0 and not (keys[j] == keys[i - 1] and ops[j] != "D" and col not in (unchanged[j] or [])):
                j -= 1
            if j >= 0:
                values[(i, col)] = df.get_column(col)[j]
                continue
            found, value = lookup(col, keys[i - 1])
            if found:
                values[(i, col)] = value
    for (i, col), value in values.items():
        seq = seqs[i]
        df = df.with_columns(
            pl.when(pl.col(SEQ) == seq).then(pl.lit(value, df.schema[col])).otherwise(pl.col(col)).alias(col),
            pl.when(pl.col(SEQ) == seq).then(pl.col(UNCHANGED).list.set_difference(pl.lit([col])))
            .otherwise(pl.col(UNCHANGED)).alias(UNCHANGED),
        )
    return df


def collapse_upsert(df: pl.DataFrame, key: Sequence[str]) -> pl.DataFrame:
    """The last change of each key (SEQ order) wins."""
    return df.filter(pl.col(SEQ) == pl.col(SEQ).max().over(list(key)))


def collapse_scd2(df: pl.DataFrame, key: Sequence[str]) -> pl.DataFrame:
    """One event per key and source transaction; adds the version end and the first-event flag.

    `df` must be sorted by SEQ (hence by commit order).
    """
    keys = list(key)
    df = df.filter(pl.col(SEQ) == pl.col(SEQ).max().over([*keys, LSN]))
    return df.with_columns(
        pl.col(TS).shift(-1).over(keys).alias(S_END),
        (pl.col(SEQ) == pl.col(SEQ).min().over(keys)).alias(S_FIRST),
    )


def _ts_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A commit time as timestamptz input text (microseconds, explicit UTC offset)."""
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        expr = expr.dt.replace_time_zone("UTC")
    return expr.dt.to_string(_TS_FORMAT)


def _stage(df: pl.DataFrame, scd2: bool) -> pl.DataFrame:
    ts_type = df.schema[TS] if TS in df.columns else pl.Datetime("us", "UTC")
    exprs = [pl.col(OP).alias(S_OP)]
    if TS in df.columns:
        exprs.append(_ts_text(pl.col(TS), ts_type).alias(S_TS))
    else:
        exprs.append(pl.lit(None, pl.String).alias(S_TS))
    if scd2:
        exprs.append(_ts_text(pl.col(S_END), ts_type).alias(S_END))
    return df.with_columns(exprs)


def plan_table(
    frame: pl.DataFrame,
    key: Sequence[str],
    columns: Sequence[str],
    *,
    scd2: bool,
    truncated_at: Sequence[tuple] = (),
    checkpoint: int | None = None,
) -> TablePlan:
    """The ordered steps (truncates and row sets) that apply one table's batch."""
    truncates = normalize_truncates(truncated_at, frame)
    df = frame.sort(SEQ)
    n_in = df.height
    if checkpoint is not None:
        df = df.filter(pl.col(LSN) > checkpoint)
        truncates = [t for t in truncates if t.lsn > checkpoint]
    replayed = n_in - df.height
    df, markers = forward_fill_unchanged(df, key, columns)
    n_live = df.height
    steps: list[Step] = []

    def rows(part: pl.DataFrame) -> None:
        if part.height:
            steps.append(Rows(_stage(part, scd2), markers))

    if not scd2:
        if truncates:
            last = truncates[-1]
            steps.append(last)
            df = df.filter(pl.col(SEQ) > last.seq)
        collapsed = collapse_upsert(df, key)
        merged = n_live - collapsed.height
        rows(collapsed)
        return TablePlan(steps, replayed, merged)

    merged = 0
    lower: int | None = None
    bounds: list[Truncate | None] = [*truncates, None]
    for trunc in bounds:
        seg = df
        if lower is not None:
            seg = seg.filter(pl.col(SEQ) > lower)
        if trunc is not None:
            # A change in the truncating transaction itself would open a zero-length version.
            seg = seg.filter((pl.col(SEQ) < trunc.seq) & (pl.col(LSN) != trunc.lsn))
        events = collapse_scd2(seg, key)
        merged += seg.height - events.height
        rows(events)
        if trunc is not None:
            steps.append(trunc)
            lower = trunc.seq
    return TablePlan(steps, replayed, merged)
