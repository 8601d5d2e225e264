"""format_type() strings -> categories and display dtypes."""

from __future__ import annotations

import polars as pl
import pytest

from trempy_nb.pgtypes import numeric_scale, polars_dtype, type_category


@pytest.mark.parametrize(
    ("pg_type", "category"),
    [
        ("smallint", "integer"), ("integer", "integer"), ("bigint", "integer"), ("oid", "integer"),
        ("numeric", "numeric"), ("numeric(12,2)", "numeric"), ("numeric(5)", "numeric"),
        ("real", "float"), ("double precision", "float"),
        ("text", "text"), ("character varying(50)", "text"), ("character varying", "text"),
        ("character(3)", "text"), ('"char"', "text"), ("name", "text"), ("citext", "text"),
        ("public.citext", "text"), ("boolean", "boolean"), ("date", "date"),
        ("timestamp without time zone", "timestamp"), ("timestamp(3) without time zone", "timestamp"),
        ("timestamp with time zone", "timestamptz"), ("timestamp(0) with time zone", "timestamptz"),
        ("time without time zone", "time"), ("time with time zone", "other"),
        ("uuid", "uuid"), ("json", "json"), ("jsonb", "json"), ("bytea", "bytea"),
        ("integer[]", "array"), ("character varying(20)[]", "array"), ("interval", "interval"),
        ("interval day to second", "interval"), ("inet", "other"), ("mood", "other"), ('"MyType"', "other"),
    ],
)  # fmt: skip
def test_type_category(pg_type: str, category: str) -> None:
    assert type_category(pg_type) == category


def test_polars_dtype() -> None:
    assert polars_dtype("integer") == pl.Int64
    assert polars_dtype("float", "real") == pl.Float32
    assert polars_dtype("float", "double precision") == pl.Float64
    assert polars_dtype("numeric", "numeric(12,2)") == pl.Decimal(38, 2)
    assert polars_dtype("numeric", "numeric") is None
    assert polars_dtype("timestamptz") == pl.Datetime("us", "UTC")
    assert polars_dtype("json") is None
    assert numeric_scale("numeric(12,2)") == 2 and numeric_scale("numeric(7)") == 0
    assert numeric_scale("numeric") is None and numeric_scale("integer") is None
