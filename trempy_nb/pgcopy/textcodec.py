"""COPY text format <-> Polars frames of raw PostgreSQL text, vectorized.

COPY ... TO STDOUT (text format) writes one line per row, fields separated by
tabs, NULL as ``\\N``, and escapes backslash, tab, newline, carriage return,
backspace, form feed and vertical tab with a backslash. These functions parse
and produce exactly that, so a value read here and written back is the same
bytes PostgreSQL produced.

Decoding first swaps every escaped backslash for a NUL placeholder: PostgreSQL
text can never contain NUL, so ``\\\\n`` (an escaped backslash followed by
``n``) cannot be mistaken for an escaped newline. COPY FROM also accepts octal
(``\\123``) and hex (``\\x41``) escapes and ``\\<any>``; COPY TO never emits
them, so they are not decoded here.
"""

from __future__ import annotations

import io

import polars as pl

_PLACEHOLDER = "\x00"
# (escape sequence, raw character); order of application matters only for the backslash.
_ESCAPES: tuple[tuple[str, str], ...] = (
    ("\\t", "\t"),
    ("\\n", "\n"),
    ("\\r", "\r"),
    ("\\b", "\b"),
    ("\\f", "\f"),
    ("\\v", "\v"),
)
_NEEDS_ESCAPE = "[\\\\\t\n\r\b\f\v]"


def _string_columns(df: pl.DataFrame) -> list[str]:
    return [name for name, dtype in df.schema.items() if dtype == pl.String]


def _columns_matching(df: pl.DataFrame, pattern: str, literal: bool) -> list[str]:
    """String columns with at least one value matching `pattern` (one pass over the frame)."""
    cols = _string_columns(df)
    if not cols or df.height == 0:
        return []
    hits = df.select(pl.col(c).str.contains(pattern, literal=literal).any() for c in cols).row(0)
    return [c for c, hit in zip(cols, hits, strict=True) if hit]


def decode_text_expr(expr: pl.Expr) -> pl.Expr:
    """Unescape one column of COPY text (see module docstring)."""
    out = expr.str.replace_all("\\\\", _PLACEHOLDER, literal=True)
    for seq, raw in _ESCAPES:
        out = out.str.replace_all(seq, raw, literal=True)
    return out.str.replace_all(_PLACEHOLDER, "\\", literal=True)


def encode_text_expr(expr: pl.Expr) -> pl.Expr:
    """Escape one column of raw text for COPY text format (backslash first)."""
    out = expr.str.replace_all("\\", "\\\\", literal=True)
    for seq, raw in _ESCAPES:
        out = out.str.replace_all(raw, seq, literal=True)
    return out


def decode_copy_text(df: pl.DataFrame) -> pl.DataFrame:
    """COPY-escaped text columns -> raw values; only columns holding a backslash are touched."""
    cols = _columns_matching(df, "\\", literal=True)
    if not cols:
        return df
    return df.with_columns(decode_text_expr(pl.col(c)).alias(c) for c in cols)


def encode_copy_text(df: pl.DataFrame) -> pl.DataFrame:
    """Raw text columns -> COPY-escaped text; only columns needing an escape are touched."""
    cols = _columns_matching(df, _NEEDS_ESCAPE, literal=False)
    if not cols:
        return df
    return df.with_columns(encode_text_expr(pl.col(c)).alias(c) for c in cols)


def read_copy_text(data: bytes, columns: list[str]) -> pl.DataFrame:
    """Parse whole lines of COPY text format into a frame of raw String values."""
    if not data:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    if data == b"\\.\n" or data.endswith(b"\n\\.\n"):  # end-of-data marker, if a client kept it
        data = data[: -len(b"\\.\n")]
        if not data:
            return pl.DataFrame(schema={c: pl.String for c in columns})
    df = pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\t",
        quote_char=None,
        null_values="\\N",
        infer_schema=False,
        empty_string_is_null=False,
        new_columns=list(columns),
        comment_prefix=None,
    )
    if df.width != len(columns):
        raise ValueError(f"COPY data has {df.width} fields per line, expected {len(columns)}")
    return decode_copy_text(df)


def write_copy_text(df: pl.DataFrame) -> bytes:
    """Encode a frame as COPY text format lines (what COPY ... FROM STDIN reads)."""
    if df.height == 0:
        return b""
    non_text = [c for c, t in df.schema.items() if t != pl.String]
    if non_text:  # the data convention says String; be forgiving with typed columns
        df = df.with_columns(
            (
                pl.when(pl.col(c)).then(pl.lit("t")).when(~pl.col(c)).then(pl.lit("f"))
                if df.schema[c] == pl.Boolean
                else pl.col(c).cast(pl.String)
            ).alias(c)
            for c in non_text
        )
    df = encode_copy_text(df)
    buf = io.BytesIO()
    df.write_csv(
        buf,
        separator="\t",
        quote_style="never",
        null_value="\\N",
        include_header=False,
        line_terminator="\n",
    )
    return buf.getvalue()
