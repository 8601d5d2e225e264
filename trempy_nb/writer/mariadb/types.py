"""PostgreSQL output types -> MariaDB column types, and PostgreSQL text values -> MariaDB input text.

Pure (no I/O). The pipeline hands every value over as PostgreSQL's text form;
`to_load_text` rewrites only what MariaDB reads differently (booleans, time zone
offsets, array literals, bytea), with Polars expressions per column. A value
MariaDB cannot hold exactly is left in a form the server refuses (strict mode,
LOAD DATA warnings turned into errors), so it goes through the error policy and
is never silently changed. The mapping is documented in docs/mariadb.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from trempy_nb.pgtypes import base_type, type_category

#: InnoDB's longest index key (DYNAMIC rows, 16k pages), in bytes
INDEX_LIMIT_BYTES = 3072
#: A text key column becomes VARCHAR of this many characters (utf8mb4: 4 bytes each)
TEXT_KEY_CHARS = 255
#: The longest VARCHAR kept as VARCHAR (larger ones become LONGTEXT)
MAX_VARCHAR = 16383

_TYPMOD = re.compile(r"\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)")


@dataclass(frozen=True)
class MariaType:
    """A MariaDB column type: its SQL, how its values load, and its size in an index key."""

    sql: str
    load: str = "text"  # 'text' | 'hex' (bytea: UNHEX on load) | 'bool' | 'tz' | 'array'
    key_bytes: int | None = None  # None: cannot be part of a key (LONGTEXT, LONGBLOB, JSON)


def _typmod(pg_type: str) -> tuple[int | None, int | None]:
    m = _TYPMOD.search(pg_type)
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


_INTEGERS = {
    "smallint": MariaType("SMALLINT", key_bytes=2), "int2": MariaType("SMALLINT", key_bytes=2),
    "smallserial": MariaType("SMALLINT", key_bytes=2),
    "integer": MariaType("INT", key_bytes=4), "int": MariaType("INT", key_bytes=4),
    "int4": MariaType("INT", key_bytes=4), "serial": MariaType("INT", key_bytes=4),
    "oid": MariaType("INT UNSIGNED", key_bytes=4),
}


def mariadb_type(pg_type: str, *, key: bool = False, native_uuid: bool = True) -> MariaType:
    """The MariaDB type for a plan output type (`key`: the column is part of the target key)."""
    cat = type_category(pg_type)
    base = base_type(pg_type)
    if cat == "array":
        return MariaType("JSON", "array")
    if cat == "integer":
        return _INTEGERS.get(base, MariaType("BIGINT", key_bytes=8))
    if cat == "numeric":
        p, s = _typmod(pg_type)
        if p is not None and p <= 65 and 0 <= (s or 0) <= min(p, 38):
            return MariaType(f"DECIMAL({p},{s or 0})", key_bytes=p // 2 + 2)
        return MariaType("DECIMAL(65,30)", key_bytes=34)  # beyond: an error, never rounded
    if cat == "float":
        single = base in ("real", "float4")
        return MariaType("FLOAT" if single else "DOUBLE", key_bytes=4 if single else 8)
    if cat == "boolean":
        return MariaType("BOOLEAN", "bool", key_bytes=1)
    if cat == "date":
        return MariaType("DATE", key_bytes=3)
    if cat in ("timestamp", "timestamptz"):
        return MariaType("DATETIME(6)", "tz" if cat == "timestamptz" else "text", key_bytes=8)
    if cat == "time":
        return MariaType("TIME(6)", key_bytes=6)
    if cat == "uuid":
        return MariaType("UUID", key_bytes=16) if native_uuid else MariaType("CHAR(36)", key_bytes=144)
    if cat == "json":
        return MariaType("JSON")
    if cat == "bytea":
        return MariaType("VARBINARY(3072)", "hex", 3072) if key else MariaType("LONGBLOB", "hex")
    if cat == "text" and base in ("character varying", "varchar", "character", "char", "bpchar"):
        n, _ = _typmod(pg_type)
        if n is not None and n <= MAX_VARCHAR:
            return MariaType(f"VARCHAR({n})", key_bytes=4 * n + 2)
    # text, unbounded varchar, interval, enums, inet and every other type: their PostgreSQL text
    if key:
        return MariaType(f"VARCHAR({TEXT_KEY_CHARS})", key_bytes=4 * TEXT_KEY_CHARS + 2)
    return MariaType("LONGTEXT")


# --- values ---------------------------------------------------------------------------------

_TZ_FORMAT = "%Y-%m-%d %H:%M:%S%.f%#z"
_DT_OUT = "%Y-%m-%d %H:%M:%S%.6f"


def _bool(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr == "t").then(pl.lit("1")).when(expr == "f").then(pl.lit("0")).otherwise(expr)


def _utc(expr: pl.Expr) -> pl.Expr:
    """'2024-01-01 12:00:00+02' -> '2024-01-01 10:00:00.000000' (UTC). What does not parse (BC,
    infinity, a year past 9999) stays as written: MariaDB refuses it."""
    parsed = expr.str.to_datetime(_TZ_FORMAT, time_zone="UTC", strict=False)
    return pl.when(parsed.is_not_null() & (parsed.dt.year() <= 9999)).then(
        parsed.dt.to_string(_DT_OUT)).otherwise(expr)


def _hex(expr: pl.Expr) -> pl.Expr:
    """bytea text '\\x0a0b' -> '0a0b' (UNHEX on load); the escape format is left to fail."""
    return pl.when(expr.str.starts_with("\\x")).then(expr.str.slice(2)).otherwise(pl.lit("not hex: ") + expr)


def _array_json(expr: pl.Expr, element_type: str) -> pl.Expr:
    cat = type_category(element_type)
    return expr.map_elements(lambda v: array_to_json(v, cat), return_dtype=pl.String, skip_nulls=True)


def to_load_text(frame: pl.DataFrame, types: Mapping[str, MariaType], pg_types: Mapping[str, str]) -> pl.DataFrame:
    """The frame's data columns rewritten as MariaDB reads them (other columns unchanged)."""
    exprs = []
    for name, mt in types.items():
        if name not in frame.columns or mt.load == "text":
            continue
        col = pl.col(name)
        if mt.load == "bool":
            exprs.append(_bool(col).alias(name))
        elif mt.load == "tz":
            exprs.append(_utc(col).alias(name))
        elif mt.load == "hex":
            exprs.append(_hex(col).alias(name))
        elif mt.load == "array":
            exprs.append(_array_json(col, pg_types.get(name, "text[]").removesuffix("[]")).alias(name))
    return frame.with_columns(exprs) if exprs else frame


# --- PostgreSQL array literals -> JSON -------------------------------------------------------


class ArrayParseError(ValueError):
    pass


def _parse_array(text: str, pos: int = 0) -> tuple[list, int]:
    """Parse '{...}' starting at text[pos] == '{'; returns (elements, position after '}')."""
    if pos >= len(text) or text[pos] != "{":
        raise ArrayParseError(f"not an array literal: {text!r}")
    pos += 1
    out: list = []
    if pos < len(text) and text[pos] == "}":
        return out, pos + 1
    while pos < len(text):
        ch = text[pos]
        if ch == "{":
            inner, pos = _parse_array(text, pos)
            out.append(inner)
        elif ch == '"':
            pos += 1
            buf = []
            while pos < len(text) and text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                buf.append(text[pos])
                pos += 1
            pos += 1
            out.append(("q", "".join(buf)))
        else:
            end = pos
            while end < len(text) and text[end] not in ",}":
                end += 1
            raw = text[pos:end].strip()
            out.append(None if raw.upper() == "NULL" else ("u", raw))
            pos = end
        if pos >= len(text):
            break
        if text[pos] == ",":
            pos += 1
        elif text[pos] == "}":
            return out, pos + 1
    raise ArrayParseError(f"unterminated array literal: {text!r}")


def _element(v: object, cat: str) -> object:
    if v is None:
        return None
    if isinstance(v, list):
        return [_element(x, cat) for x in v]
    raw = str(v[1])  # type: ignore[index]  # ('q' quoted | 'u' unquoted, text)
    if cat == "integer":
        return int(raw)
    if cat == "boolean":
        return raw == "t"
    if cat in ("numeric", "float"):
        return _Number(raw)
    if cat == "json":
        return json.loads(raw)
    return raw


class _Number(str):
    """A number kept as its exact text (no float rounding) in the JSON output."""


def _dump(v: object) -> str:
    if isinstance(v, _Number):
        if v in ("NaN", "Infinity", "-Infinity"):
            raise ArrayParseError(f"{v} has no JSON form")
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_dump(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def array_to_json(text: str, element_category: str) -> str:
    """'{1,2,NULL}' -> '[1, 2, null]'; text elements become JSON strings, numbers stay exact.

    A literal with explicit bounds ('[0:1]={...}') or that does not parse is returned marked
    so that MariaDB's JSON check refuses it (an error per the error policy)."""
    try:
        if text.startswith("["):
            raise ArrayParseError("explicit array bounds")
        values, end = _parse_array(text)
        if text[end:].strip():
            raise ArrayParseError("trailing text")
        return _dump([_element(v, element_category) for v in values])
    except (ArrayParseError, ValueError, IndexError):
        return "not a JSON array: " + text
