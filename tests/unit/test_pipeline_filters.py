"""Filters: every filter type with hand-computed rows, type checks with field paths, SQL form."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.errors import ValidationFailed
from trempy_nb.pipeline.filters import (
    allowed_filter_types,
    compile_filter,
    compile_filters,
    filter_expr,
    filters_to_sql,
    numeric_key,
    predicate_sql,
)
from trempy_nb.settings import FilterSpec

COLUMNS = [
    ("id", "integer"),
    ("small", "smallint"),
    ("name", "text"),
    ("code", "character(4)"),
    ("salary", "numeric(12,2)"),
    ("amount", "numeric"),
    ("ratio", "double precision"),
    ("score", "real"),
    ("born", "date"),
    ("created", "timestamp without time zone"),
    ("updated", "timestamp with time zone"),
    ("active", "boolean"),
    ("uid", "uuid"),
    ("data", "jsonb"),
    ("tags", "text[]"),
    ("status", "mood"),
    ("at", "time without time zone"),
]
TABLE = TableInfo(
    schema="public",
    name="emp",
    columns=tuple(ColumnInfo(n, t, position=i + 1) for i, (n, t) in enumerate(COLUMNS)),
    primary_key=("id",),
    identity_columns=("id",),
)
U1 = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
ROWS: dict[str, list[Any]] = {
    "id": ["1", "2", "3", "4", "5"],
    "small": ["1", "2", "3", "4", "5"],
    "name": ["Alice", "bob", None, "Carol_%", ""],
    "code": ["AB  ", "CD  ", None, "E\\F ", "AB  "],
    "salary": ["5000.00", "4999.99", "10000", "5000", None],
    "amount": ["12345678901234567890.123456789", "-0.5", "0", "-12.25", "NaN"],
    "ratio": ["1.5", "-2", None, "1e+20", "0"],
    "score": ["1.1", "2.5", None, "-1.5", "0"],
    "born": ["1990-05-17", "2000-02-29", None, "2024-01-02", "infinity"],
    "created": [
        "2024-01-02 03:04:05",
        "2023-12-31 23:59:59.999999",
        None,
        "2024-01-02 00:00:00",
        "2024-06-30 12:00:00",
    ],
    "updated": [
        "2024-01-02 03:04:05.5+00",
        "2023-12-31 23:59:59+00",
        None,
        "2024-01-01 23:00:00-01",
        "infinity",
    ],
    "active": ["t", "f", None, "t", "f"],
    "uid": [U1, None, None, None, None],
    "data": ['{"a": 1}', "{}", None, "[]", "null"],
    "tags": ["{x,y}", "{}", None, "{}", "{}"],
    "status": ["happy", "sad", None, "happy", "ok"],
    "at": ["10:00:00", "23:59:59.5", None, "00:00:00", "12:00:00"],
}
FRAME = pl.DataFrame(ROWS, schema={c: pl.String for c in ROWS})


def spec(column: str, filter_type: str, **inputs: Any) -> FilterSpec:
    return FilterSpec(
        schema_name="public",
        table_name="emp",
        column_name=column,
        filter_type=filter_type,
        **inputs,
    )


def ids(*specs: FilterSpec) -> list[int]:
    out = FRAME.filter(filter_expr(list(specs), TABLE))
    return [int(x) for x in out["id"]]


CASES: list[tuple[str, str, dict[str, Any], list[int]]] = [
    # comparisons on numeric: exact, trailing zeros do not matter
    ("salary", "equals", {"value": 5000}, [1, 4]),
    ("salary", "not_equals", {"value": "5000"}, [2, 3]),
    ("salary", "greater_than", {"value": "4999.99"}, [1, 3, 4]),
    ("salary", "greater_than_or_equal", {"value": 4999.99}, [1, 2, 3, 4]),
    ("amount", "less_than", {"value": 0}, [2, 4]),
    ("amount", "less_than_or_equal", {"value": "-0.5"}, [2, 4]),
    ("amount", "greater_than", {"value": "12345678901234567890.123456788"}, [1, 5]),
    ("amount", "equals", {"value": "12345678901234567890.1234567890"}, [1]),
    ("amount", "equals", {"value": "12345678901234567890.123456788"}, []),
    ("amount", "equals", {"value": "-0.50"}, [2]),
    ("amount", "greater_than", {"value": "-12.2"}, [1, 2, 3, 5]),
    ("amount", "greater_than", {"value": "-12.3"}, [1, 2, 3, 4, 5]),
    # integers
    ("id", "equals", {"value": "3"}, [3]),
    ("id", "greater_than", {"value": 3.0}, [4, 5]),
    ("small", "less_than", {"value": 2}, [1]),
    ("id", "between", {"lower": 2, "upper": 4}, [2, 3, 4]),
    ("id", "not_between", {"lower": 2, "upper": 4}, [1, 5]),
    ("id", "between", {"lower": 4, "upper": 2}, []),
    ("id", "in", {"values": [1, "3", 5.0]}, [1, 3, 5]),
    ("id", "not_in", {"values": [1, 2]}, [3, 4, 5]),
    # floats
    ("ratio", "equals", {"value": 1.5}, [1]),
    ("ratio", "greater_than", {"value": 0}, [1, 4]),
    ("ratio", "less_than", {"value": "0"}, [2]),
    ("score", "equals", {"value": 1.1}, [1]),
    ("score", "between", {"lower": -1.5, "upper": 1.1}, [1, 4, 5]),
    # text
    ("name", "equals", {"value": "bob"}, [2]),
    ("name", "not_equals", {"value": "bob"}, [1, 4, 5]),
    ("name", "equals", {"value": ""}, [5]),
    ("name", "starts_with", {"value": "Car"}, [4]),
    ("name", "starts_with", {"value": "Carol_"}, [4]),
    ("name", "starts_with", {"value": "C_"}, []),
    ("name", "ends_with", {"value": "b"}, [2]),
    ("name", "contains", {"value": "_%"}, [4]),
    ("name", "contains", {"value": "%"}, [4]),
    ("name", "not_contains", {"value": "o"}, [1, 5]),
    ("name", "in", {"values": ["Alice", "bob", "zzz"]}, [1, 2]),
    ("name", "not_in", {"values": ["Alice"]}, [2, 4, 5]),
    # character(n): blank padding does not count, like PostgreSQL
    ("code", "equals", {"value": "AB"}, [1, 5]),
    ("code", "equals", {"value": "AB  "}, [1, 5]),
    ("code", "ends_with", {"value": "B"}, [1, 5]),
    ("code", "ends_with", {"value": "F"}, [4]),
    ("code", "contains", {"value": "\\"}, [4]),
    # nulls
    ("name", "is_null", {}, [3]),
    ("name", "is_not_null", {}, [1, 2, 4, 5]),
    ("data", "is_null", {}, [3]),
    ("tags", "is_not_null", {}, [1, 2, 4, 5]),
    # booleans, uuid, enums (other)
    ("active", "equals", {"value": True}, [1, 4]),
    ("active", "equals", {"value": "f"}, [2, 5]),
    ("active", "not_equals", {"value": "true"}, [2, 5]),
    ("active", "in", {"values": [False]}, [2, 5]),
    ("uid", "equals", {"value": U1.upper()}, [1]),
    ("status", "equals", {"value": "happy"}, [1, 4]),
    ("status", "not_in", {"values": ["happy", "sad"]}, [5]),
    # timestamps
    ("created", "greater_than", {"value": "2024-01-01"}, [1, 4, 5]),
    ("created", "less_than", {"value": "2024-01-02 00:00:00.000001"}, [2, 4]),
    ("created", "equals", {"value": "2023-12-31T23:59:59.999999"}, [2]),
    ("updated", "equals", {"value": "2024-01-02 00:00:00+00:00"}, [4]),
    ("updated", "equals", {"value": "2024-01-02 01:00:00+01:00"}, [4]),
    ("updated", "greater_than", {"value": "2024-01-02 03:04:05"}, [1, 5]),
    ("born", "less_than", {"value": "2000-02-29"}, [1]),
    ("born", "greater_than", {"value": "2000-01-01"}, [2, 4, 5]),
    ("at", "greater_than", {"value": "12:00:00"}, [2]),
    # date filters
    ("updated", "date_equals", {"value": "2024-01-02"}, [1, 4]),
    ("created", "date_equals", {"value": "2024-01-02"}, [1, 4]),
    ("born", "date_equals", {"value": "1990-05-17"}, [1]),
    ("born", "date_greater_than", {"value": "2000-01-01"}, [2, 4, 5]),
    ("created", "date_less_than", {"value": "2024-01-01"}, [2]),
    ("updated", "date_between", {"lower": "2023-12-31", "upper": "2024-01-02"}, [1, 2, 4]),
    ("born", "date_between", {"lower": "1990-05-17", "upper": "2000-02-29"}, [1, 2]),
]


@pytest.mark.parametrize(("column", "filter_type", "inputs", "expected"), CASES)
def test_every_filter_type(
    column: str, filter_type: str, inputs: dict[str, Any], expected: list[int]
) -> None:
    assert ids(spec(column, filter_type, **inputs)) == expected


def test_every_filter_type_is_covered() -> None:
    from trempy_nb.settings import FILTER_TYPES

    assert {c[1] for c in CASES} == set(FILTER_TYPES)


def test_filters_are_anded() -> None:
    assert ids(spec("salary", "equals", value=5000), spec("active", "equals", value=True)) == [1, 4]
    assert ids(spec("salary", "equals", value=5000), spec("name", "starts_with", value="C")) == [4]
    assert ids() == [1, 2, 3, 4, 5]


def test_numeric_key_orders_like_numbers() -> None:
    values = ["-Infinity", "-100", "-12.25", "-12.2", "-1", "-0.5", "-0.05", "0", "0.05", "0.5",
              "1", "1.5", "12.2", "12.25", "100", "99999999999999999999999999999999999999999.1",
              "Infinity", "NaN"]  # fmt: skip
    keys = pl.DataFrame({"v": values}).select(numeric_key(pl.col("v")).alias("v"))["v"].to_list()
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    same = pl.DataFrame({"v": ["1.50", "1.5", "001.5", "-0", "0.000"]}).select(
        numeric_key(pl.col("v")).alias("v")
    )
    assert same["v"][0] == same["v"][1] == same["v"][2]
    assert same["v"][3] == same["v"][4]


ERRORS: list[tuple[str, str, dict[str, Any], str]] = [
    ("name", "greater_than", {"value": "a"}, "filters[0].filter_type: 'greater_than' does not fit column 'name' of type text; valid filter types for it: equals, not_equals,"),
    ("active", "greater_than", {"value": True}, "filters[0].filter_type: 'greater_than' does not fit column 'active'"),
    ("data", "equals", {"value": "{}"}, "filters[0].filter_type: 'equals' does not fit column 'data' of type jsonb; valid filter types for it: is_null, is_not_null"),
    ("id", "starts_with", {"value": "1"}, "filters[0].filter_type: 'starts_with' does not fit column 'id' of type integer"),
    ("name", "date_equals", {"value": "2024-01-01"}, "filters[0].filter_type: 'date_equals' does not fit column 'name'"),
    ("id", "equals", {"value": "abc"}, "filters[0].value: 'abc' needs an integer (column 'id' is integer)"),
    ("id", "equals", {"value": 1.5}, "filters[0].value: 1.5 needs a whole number"),
    ("id", "equals", {"value": True}, "filters[0].value: True needs an integer, not a boolean"),
    ("small", "equals", {"value": 40000}, "filters[0].value: 40000 is out of range for smallint"),
    ("salary", "less_than", {"value": "12,5"}, "filters[0].value: '12,5' needs a number"),
    ("ratio", "less_than", {"value": "nan"}, "filters[0].value: 'nan' needs a finite number"),
    ("id", "between", {"lower": "x", "upper": 2}, "filters[0].lower: 'x' needs an integer"),
    ("id", "between", {"lower": 1, "upper": "y"}, "filters[0].upper: 'y' needs an integer"),
    ("id", "in", {"values": [1, "two"]}, "filters[0].values[1]: 'two' needs an integer"),
    ("born", "equals", {"value": "17/05/1990"}, "filters[0].value: '17/05/1990' needs a date like 2024-01-31"),
    ("born", "date_between", {"lower": "2020-01-01", "upper": "soon"}, "filters[0].upper: 'soon' needs a date"),
    ("created", "equals", {"value": "2024-01-01 10:00+02:00"}, "filters[0].value: '2024-01-01 10:00+02:00' has a time zone offset but the column is timestamp without time zone"),
    ("active", "equals", {"value": "maybe"}, "filters[0].value: 'maybe' needs a boolean (true/false)"),
    ("uid", "equals", {"value": "nope"}, "filters[0].value: 'nope' needs a UUID"),
    ("name", "equals", {"value": True}, "filters[0].value: True needs a text value, not a boolean"),
    ("nope", "is_null", {}, "filters[0].column_name: column 'nope' does not exist in public.emp (columns: id, small, name,"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "filter_type", "inputs", "message"), ERRORS)
def test_validation_errors_name_the_field(
    column: str, filter_type: str, inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationFailed) as err:
        compile_filter(0, spec(column, filter_type, **inputs), TABLE)
    assert str(err.value).startswith(message), str(err.value)


def test_error_path_uses_the_index_in_settings() -> None:
    with pytest.raises(ValidationFailed, match=r"^filters\[7\]\.value: "):
        filter_expr([(7, spec("id", "equals", value="x"))], TABLE)


def test_allowed_filter_types() -> None:
    assert "starts_with" in allowed_filter_types("text")
    assert "greater_than" not in allowed_filter_types("text")
    assert allowed_filter_types("json") == ("is_null", "is_not_null")
    assert "date_between" in allowed_filter_types("timestamptz")
    assert "date_between" not in allowed_filter_types("integer")


def _sql_text(filters: list[FilterSpec]) -> tuple[str, list[Any]]:
    query, params = filters_to_sql(filters, TABLE)
    return query.as_string(), params


def test_filters_to_sql_uses_identifiers_and_parameters() -> None:
    text, params = _sql_text(
        [spec("salary", "greater_than", value=5000), spec("name", "in", values=["a", "b"])]
    )
    assert text == '("salary" > %s) AND ("name"::text IN (%s, %s))'
    assert params == ["5000", "a", "b"]
    text, params = _sql_text([spec("name", "contains", value="50%_a\\b")])
    assert text == "(\"name\"::text LIKE %s ESCAPE '\\')"
    assert params == ["%50\\%\\_a\\\\b%"]
    text, params = _sql_text(
        [spec("updated", "date_between", lower="2024-01-01", upper="2024-01-31")]
    )
    assert text == "((\"updated\" AT TIME ZONE 'UTC')::date BETWEEN %s::date AND %s::date)"
    assert params == ["2024-01-01", "2024-01-31"]
    text, params = _sql_text([spec("updated", "greater_than", value="2024-01-01 12:00+02:00")])
    assert params == ["2024-01-01 10:00:00+00:00"]
    text, params = _sql_text(
        [spec("id", "is_null"), spec("born", "not_between", lower="2000-01-01", upper="2001-01-01")]
    )
    assert text == '("id" IS NULL) AND ("born" NOT BETWEEN %s AND %s)'
    text, params = _sql_text([])
    assert (text, params) == ("TRUE", [])


def test_hostile_column_names_are_quoted() -> None:
    table = TableInfo("public", "t", (ColumnInfo('we"ird; drop', "integer"),))
    query, params = filters_to_sql(
        [
            FilterSpec(
                schema_name="public",
                table_name="t",
                column_name='we"ird; drop',
                filter_type="equals",
                value=1,
            )
        ],
        table,
    )
    assert query.as_string() == '("we""ird; drop" = %s)'
    assert params == ["1"]


# -- OR groups -----------------------------------------------------------------------------


def grouped(group: str | None, column: str, filter_type: str, **inputs: Any) -> FilterSpec:
    return FilterSpec(
        schema_name="public",
        table_name="emp",
        column_name=column,
        filter_type=filter_type,
        or_group=group,
        **inputs,
    )


def test_filters_sharing_a_group_are_ored_and_groups_anded() -> None:
    # salary = 5000 -> 1, 4; name IS NULL -> 3; active = t -> 1, 4; id <= 3 -> 1, 2, 3
    rich_or_unnamed = [grouped("g", "salary", "equals", value=5000), grouped("g", "name", "is_null")]
    assert ids(*rich_or_unnamed) == [1, 3, 4]
    assert ids(*rich_or_unnamed, grouped(None, "id", "less_than_or_equal", value=3)) == [1, 3]
    # two groups: (salary = 5000 OR name IS NULL) AND (active = f OR id = 4)
    two = [*rich_or_unnamed, grouped("h", "active", "equals", value=False), grouped("h", "id", "equals", value=4)]
    assert ids(*two) == [4]
    # a group of one filter is that filter
    assert ids(grouped("alone", "active", "equals", value=True)) == [1, 4]
    # the same name on another table's filters is another group: here only this table's count
    assert ids(grouped("g", "salary", "equals", value=5000)) == [1, 4]


def test_null_never_satisfies_a_branch_but_another_branch_can() -> None:
    # row 5 has a NULL salary: NULL > 1 is unknown, so only the other branch can keep it
    specs = [grouped("g", "salary", "greater_than", value=1), grouped("g", "name", "equals", value="")]
    assert ids(*specs) == [1, 2, 3, 4, 5]
    specs = [grouped("g", "salary", "greater_than", value=1), grouped("g", "name", "equals", value="x")]
    assert ids(*specs) == [1, 2, 3, 4]


def test_grouped_sql_follows_the_first_member_and_binds_parameters_in_order() -> None:
    filters = [
        grouped("g", "salary", "greater_than", value=5000),
        grouped(None, "id", "is_not_null"),
        grouped("g", "name", "in", values=["a", "b"]),
        grouped("solo", "small", "less_than", value=3),
    ]
    text, params = _sql_text(filters)
    assert text == (
        '(("salary" > %s) OR ("name"::text IN (%s, %s))) AND ("id" IS NOT NULL) AND ("small" < %s)'
    )
    assert params == ["5000", "a", "b", "3"]
    # without groups the SQL is what it always was
    text, params = _sql_text([grouped(None, "salary", "greater_than", value=5000)])
    assert (text, params) == ('("salary" > %s)', ["5000"])


def test_predicate_sql_is_pure_with_values_inline() -> None:
    compiled = compile_filters(
        [
            grouped("g", "name", "contains", value="o'k%"),
            grouped("g", "born", "date_between", lower="2000-01-01", upper="2000-12-31"),
            grouped(None, "salary", "not_equals", value="10.50"),
        ],
        TABLE,
    )
    assert predicate_sql(compiled).as_string() == (
        "((\"name\"::text LIKE  E'%o''k\\\\%%' ESCAPE '\\') OR "  # psycopg writes E'' for a backslash
        "(\"born\" BETWEEN '2000-01-01'::date AND '2000-12-31'::date)) AND (\"salary\" <> '10.50')"
    )
    assert predicate_sql([]).as_string() == "TRUE"
