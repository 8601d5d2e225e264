"""COPY in and out: the only way rows move between Python and PostgreSQL.

Reading yields chunks of COPY *text* format cut on line boundaries (text
format escapes newlines, so one line is one row); writing sends a Polars
frame as COPY text. Pass-through tables skip Python rows entirely and stream
COPY binary from source to target.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.pipeline.textcodec import read_copy_text, write_copy_text

CHUNK_BYTES = 16 * 1024 * 1024


def column_list(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def select_query(
    schema: str,
    table: str,
    columns: Sequence[str],
    where: sql.Composable | None = None,
    limit: int | None = None,
) -> sql.Composed:
    """SELECT cols FROM schema.table [WHERE ...] [LIMIT n], identifiers quoted."""
    q = sql.SQL("SELECT {} FROM {}").format(column_list(columns), sql.Identifier(schema, table))
    if where is not None:
        q = sql.SQL("{} WHERE {}").format(q, where)
    if limit is not None:
        q = sql.SQL("{} LIMIT {}").format(q, sql.Literal(int(limit)))
    return q


def iter_text_chunks(
    cur: psycopg.Cursor, query: sql.Composable, params: Sequence[object] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[bytes]:
    """COPY (query) TO STDOUT in text format, re-cut into chunks of whole lines."""
    copy_sql = sql.SQL("COPY ({}) TO STDOUT").format(query)
    if params:
        # COPY cannot take bind parameters: inline them as literals, safely quoted by psycopg.
        copy_sql = sql.SQL("COPY ({}) TO STDOUT").format(_bind(cur, query, params))
    pending: list[bytes] = []
    size = 0
    with cur.copy(copy_sql) as copy:
        for data in copy:
            pending.append(bytes(data))
            size += len(data)
            if size >= chunk_bytes:
                blob = b"".join(pending)
                cut = blob.rfind(b"\n") + 1
                yield blob[:cut]
                rest = blob[cut:]
                pending, size = ([rest], len(rest)) if rest else ([], 0)
    if pending:
        blob = b"".join(pending)
        if blob:
            yield blob


def _bind(cur: psycopg.Cursor, query: sql.Composable, params: Sequence[object]) -> sql.Composable:
    """Replace %s placeholders with quoted literals (COPY takes no parameters)."""
    text = query.as_string(cur)
    parts = text.split("%s")
    if len(parts) - 1 != len(params):
        raise ValueError("placeholder count does not match parameters")
    out: list[sql.Composable] = [sql.SQL(parts[0].replace("%%", "%"))]
    for value, part in zip(params, parts[1:], strict=True):
        out.append(sql.Literal(value))
        out.append(sql.SQL(part.replace("%%", "%")))
    return sql.Composed(out)


def iter_frames(
    cur: psycopg.Cursor, query: sql.Composable, columns: Sequence[str],
    params: Sequence[object] | None = None, chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pl.DataFrame]:
    """Batches of rows as String frames holding PostgreSQL's text form of each value."""
    for chunk in iter_text_chunks(cur, query, params, chunk_bytes):
        yield read_copy_text(chunk, list(columns))


def copy_frame(cur: psycopg.Cursor, target: sql.Composable, columns: Sequence[str], df: pl.DataFrame) -> int:
    """COPY a String frame (PostgreSQL text values) into `target` (a table identifier)."""
    if df.height == 0:
        return 0
    payload = write_copy_text(df.select(list(columns)))
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(target, column_list(columns))
    with cur.copy(stmt) as copy:
        copy.write(payload)
    return df.height


def stream_copy(
    src_cur: psycopg.Cursor,
    tgt_cur: psycopg.Cursor,
    query: sql.Composable,
    target: sql.Composable,
    target_columns: Sequence[str],
    binary: bool = True,
) -> int:
    """COPY source query straight into the target table, no Python rows. Returns rows copied."""
    fmt = sql.SQL(" (FORMAT binary)") if binary else sql.SQL("")
    out_sql = sql.SQL("COPY ({}) TO STDOUT{}").format(query, fmt)
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN{}").format(target, column_list(target_columns), fmt)
    with src_cur.copy(out_sql) as out, tgt_cur.copy(in_sql) as inp:
        for data in out:
            inp.write(data)
    return max(tgt_cur.rowcount, 0)
