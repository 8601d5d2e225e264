"""PostgreSQL type names (format_type() strings) mapped to coarse categories.

The pipeline holds every value as PostgreSQL text; the category decides how a
column may be parsed for a filter, a transformation or a preview, and which
operators make sense on it. The text PostgreSQL prints for a timestamp is here
too: transformations write it, and the COPY binary codec reads it back for errors.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal, get_args

import polars as pl

TypeCategory = Literal[
    "integer",
    "numeric",
    "float",
    "text",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "time",
    "uuid",
    "json",
    "bytea",
    "array",
    "interval",
    "other",
]
TYPE_CATEGORIES: tuple[str, ...] = get_args(TypeCategory)

_EXACT: dict[str, TypeCategory] = {
    "smallint": "integer",
    "integer": "integer",
    "bigint": "integer",
    "int": "integer",
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "smallserial": "integer",
    "serial": "integer",
    "bigserial": "integer",
    "oid": "integer",
    "numeric": "numeric",
    "decimal": "numeric",
    "real": "float",
    "float4": "float",
    "double precision": "float",
    "float8": "float",
    "float": "float",
    "text": "text",
    "character varying": "text",
    "varchar": "text",
    "character": "text",
    "char": "text",
    "bpchar": "text",
    '"char"': "text",
    "name": "text",
    "citext": "text",
    "boolean": "boolean",
    "bool": "boolean",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp": "timestamp",
    "timestamp with time zone": "timestamptz",
    "timestamptz": "timestamptz",
    "time without time zone": "time",
    "time": "time",
    "uuid": "uuid",
    "json": "json",
    "jsonb": "json",
    "bytea": "bytea",
    "interval": "interval",
}

_TYPMOD = re.compile(r"\([^)]*\)")
_INTEGER_BOUNDS: dict[str, tuple[int, int]] = {
    "smallint": (-(2**15), 2**15 - 1),
    "int2": (-(2**15), 2**15 - 1),
    "smallserial": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "int": (-(2**31), 2**31 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "serial": (-(2**31), 2**31 - 1),
    "oid": (0, 2**32 - 1),
}
_INT64 = (-(2**63), 2**63 - 1)


def base_type(pg_type: str) -> str:
    """'numeric(12,2)' -> 'numeric', 'timestamp(3) with time zone' -> 'timestamp with time zone'.

    Schema qualification of extension types ('public.citext') is dropped too.
    """
    name = _TYPMOD.sub("", pg_type.strip().lower())
    name = " ".join(name.split())
    if not name.startswith('"') and "." in name:
        name = name.rsplit(".", 1)[1]
    return name


def type_category(pg_type: str) -> TypeCategory:
    """The category of a format_type() string; unknown types (enums, domains, inet...) are 'other'."""
    if pg_type.strip().endswith("]"):
        return "array"
    base = base_type(pg_type)
    if base.startswith("interval "):  # 'interval day to second'
        return "interval"
    return _EXACT.get(base, "other")


def is_blank_padded(pg_type: str) -> bool:
    """character(n) values are blank-padded in their text form but compare without the padding."""
    return base_type(pg_type) in ("character", "char", "bpchar")


def is_single_precision(pg_type: str) -> bool:
    """real values must be compared as float32: their text is the shortest float32 form."""
    return base_type(pg_type) in ("real", "float4")


def integer_bounds(pg_type: str) -> tuple[int, int]:
    """The range of an integer type (a value outside it would make PostgreSQL raise)."""
    return _INTEGER_BOUNDS.get(base_type(pg_type), _INT64)


def numeric_scale(pg_type: str) -> int | None:
    """The declared scale of numeric(p,s) (0 for numeric(p)), None when unconstrained."""
    m = re.search(r"\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\)", pg_type)
    if base_type(pg_type) not in ("numeric", "decimal") or m is None:
        return None
    return max(int(m.group(2) or 0), 0)


def polars_dtype(category: str, pg_type: str | None = None) -> pl.DataType | None:
    """The Polars dtype a raw-text column of this category is cast to for display.

    None means "keep it as String" (no lossless typed form). numeric returns a
    Decimal only when the scale is declared; `TablePlan.display` infers it from
    the data otherwise.
    """
    if category == "integer":
        return pl.Int64()
    if category == "float":
        return pl.Float32() if pg_type and is_single_precision(pg_type) else pl.Float64()
    if category == "numeric":
        scale = numeric_scale(pg_type) if pg_type else None
        return pl.Decimal(38, scale) if scale is not None and scale <= 38 else None
    if category == "boolean":
        return pl.Boolean()
    if category == "date":
        return pl.Date()
    if category == "timestamp":
        return pl.Datetime("us")
    if category == "timestamptz":
        return pl.Datetime("us", "UTC")
    if category == "time":
        return pl.Time()
    return None


# -- the text PostgreSQL prints -------------------------------------------------------------


def timestamptz_text(value: dt.datetime) -> str:
    """A datetime as PostgreSQL prints timestamptz in a UTC session: '2024-01-02 03:04:05.5+00'."""
    value = value.astimezone(dt.timezone.utc)
    return timestamp_text(value.replace(tzinfo=None)) + "+00"


def timestamp_text(value: dt.datetime) -> str:
    """A naive datetime as PostgreSQL prints timestamp: fraction only when non-zero, trimmed."""
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    if value.year < 1000:
        text = f"{value.year:04d}" + text[len(str(value.year)) :]
    return text
