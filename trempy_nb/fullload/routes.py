"""The copy route of a transformed table: COPY text both ways, or COPY binary both ways.

Why: text and binary differ in how a batch is read from the source, shaped by
the plan, encoded for the target, copied in, and shown in an error record.
`choose_route` decides once per table (where `pipeline/copylayout.py` finds a
layout, binary; otherwise, or with TREMPY_COPY_FORMAT=text, text), and the
table writer and the pipeline pump only speak to the `CopyRoute` they are given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.pgcopy.copyio import (
    copy_binary,
    copy_frame,
    iter_binary_frames,
    iter_frames,
    select_query,
)
from trempy_nb.pgcopy.textcodec import write_copy_text
from trempy_nb.pipeline.plan import TablePlan

if TYPE_CHECKING:
    from trempy_nb.pipeline.copylayout import CopyLayout

# The binary codecs (numpy, pyarrow) and the copy layout are imported where the binary route needs
# them, not here: start-up speed, a pass-through load never uses them.

#: 'binary' (default) or 'text': how transformed tables travel (see fullload/__init__.py).
COPY_FORMAT = os.environ.get("TREMPY_COPY_FORMAT", "binary").lower()


class CopyRoute(Protocol):
    """How one table's batches travel from the source through its plan into the target."""

    #: 'binary' or 'text' (TableLoadResult.copy_format)
    name: str

    def frames(self, cur: psycopg.Cursor, chunk_bytes: int) -> Iterator[pl.DataFrame]:
        """The table's rows from the source, in batches of about `chunk_bytes`."""
        ...

    def shape(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A batch as read, through the plan, as `encode` and `copy` take it."""
        ...

    def encode(self, df: pl.DataFrame) -> Any:
        """The shaped batch in the target's COPY form (done in the pump's middle thread)."""
        ...

    def copy(self, cur: psycopg.Cursor, target: sql.Composable, df: pl.DataFrame, payload: Any) -> None:
        """COPY `df` into `target` (a table identifier); `payload` is its `encode`, or None."""
        ...

    def bad_row(self, df: pl.DataFrame) -> dict[str, Any]:
        """The first row of `df` by target column, as its error record stores it (JSON)."""
        ...


def choose_route(plan: TablePlan, columns: Sequence[str], types: dict[str, str]) -> CopyRoute:
    """The route for writing `columns` (target names) of types `types` (the target's)."""
    source_types = {c.name: c.pg_type for c in plan.source.columns}
    if COPY_FORMAT != "text" and types:
        # start-up speed (see the imports)
        from trempy_nb.pipeline.copylayout import copy_layout

        layout = copy_layout(plan, types, columns, source_types)
        if layout is not None:
            return BinaryRoute(plan, layout, columns, types, source_types)
    return TextRoute(plan, columns, types)


class TextRoute:
    """COPY text both ways: every column as String frames of PostgreSQL's text."""

    name = "text"

    def __init__(self, plan: TablePlan, columns: Sequence[str], types: dict[str, str]) -> None:
        self.plan, self.columns, self.types = plan, list(columns), types

    def frames(self, cur: psycopg.Cursor, chunk_bytes: int) -> Iterator[pl.DataFrame]:
        source_cols = list(self.plan.source_columns)
        query = select_query(self.plan.source.schema, self.plan.source.name, source_cols)
        return iter_frames(cur, query, source_cols, chunk_bytes=chunk_bytes)

    def shape(self, frame: pl.DataFrame) -> pl.DataFrame:
        return self.plan.apply(frame).select(self.columns)

    def encode(self, df: pl.DataFrame) -> bytes:
        return write_copy_text(df)

    def copy(self, cur: psycopg.Cursor, target: sql.Composable, df: pl.DataFrame, payload: Any) -> None:
        copy_frame(cur, target, self.columns, df, payload)

    def bad_row(self, df: pl.DataFrame) -> dict[str, Any]:
        return readable(df.row(0, named=True), self.types)


class BinaryRoute:
    """COPY binary both ways, laid out by `CopyLayout`: the columns the plan reads come as text or
    printed from raw, the ones it writes are encoded, the rest ride as the source's bytes."""

    name = "binary"

    def __init__(self, plan: TablePlan, layout: CopyLayout, columns: Sequence[str], types: dict[str, str],
                 source_types: dict[str, str]) -> None:
        self.plan, self.layout, self.types, self.source_types = plan, layout, types, source_types
        self.target_columns = list(columns)  # the target's column order, for error records
        self.columns = list(layout.columns)  # COPY order: the encoded columns, then the tail's

    def frames(self, cur: psycopg.Cursor, chunk_bytes: int) -> Iterator[pl.DataFrame]:
        # start-up speed (see the imports)
        from trempy_nb.pipeline.copylayout import select_sql

        layout = self.layout
        query = select_sql(self.plan.source.schema, self.plan.source.name, layout, self.source_types)
        return iter_binary_frames(cur, query, layout.names, layout.as_text, chunk_bytes, layout.tail)

    def shape(self, frame: pl.DataFrame) -> pl.DataFrame:
        return self.layout.apply(self.plan, frame)

    def encode(self, df: pl.DataFrame) -> tuple[list[Any], list[str]]:
        from trempy_nb.pgcopy.binarycodec import encode  # start-up speed (see the imports)

        return encode(df, self.layout.encoders, self.layout.tail)

    def copy(self, cur: psycopg.Cursor, target: sql.Composable, df: pl.DataFrame, payload: Any) -> None:
        data, as_text = payload if payload is not None else self.encode(df)
        copy_binary(cur, target, self.columns, data, as_text, self.types)

    def bad_row(self, df: pl.DataFrame) -> dict[str, Any]:
        row = df.row(0, named=True)
        tail = self.layout.tail
        if tail is not None:  # the tail cut back into the target's values
            from trempy_nb.pgcopy.binarycodec import split_tail  # start-up speed (see the imports)

            fields = split_tail(row.pop(tail.name), tail.fields)
            row.update(zip(self.layout.raw_columns, fields, strict=True))
            row = {c: row[c] for c in self.target_columns if c in row}
        return readable(row, self.types)


def readable(row: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """A bad row's values as its error record stores them (JSON): raw bytes and Decimals as text."""
    return {k: _readable(v, types.get(k, "")) for k, v in row.items()}


def _readable(value: Any, pg_type: str) -> Any:
    if isinstance(value, bytes):
        from trempy_nb.pgcopy.binarycodec import describe_raw  # start-up speed (see the imports)

        return describe_raw(value, pg_type)
    if isinstance(value, Decimal):
        return format(value, "f")
    return value
