"""Random filter/transformation documents either compile or raise SettingsError; and compiled plans run."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.errors import SettingsError
from trempy_nb.pipeline.plan import compile_plan
from trempy_nb.pipeline.transformations import BatchContext
from trempy_nb.settings import (
    COLUMN_VALUE_OPERATIONS,
    CREATE_COLUMN_OPERATIONS,
    FILTER_TYPES,
    LITERAL_TYPES,
    STRUCTURAL_TRANSFORMATIONS,
    parse_settings,
)

TABLE = TableInfo(
    "s",
    "t",
    (
        ColumnInfo("id", "bigint"),
        ColumnInfo("name", "text"),
        ColumnInfo("amount", "numeric(10,2)"),
        ColumnInfo("ratio", "real"),
        ColumnInfo("day", "date"),
        ColumnInfo("at", "timestamp with time zone"),
        ColumnInfo("flag", "boolean"),
        ColumnInfo("doc", "jsonb"),
    ),
    primary_key=("id",),
)
ROWS = {
    "id": ["1", "2", None],
    "name": ["a b", "", None],
    "amount": ["1.50", "-3.00", None],
    "ratio": ["0.5", "-1e+10", None],
    "day": ["2020-02-29", "infinity", None],
    "at": ["2024-01-02 03:04:05.123456+00", "1999-12-31 23:59:59+00", None],
    "flag": ["t", "f", None],
    "doc": ["{}", "[1]", None],
}
FRAME = pl.DataFrame(ROWS, schema={c: pl.String for c in ROWS})
NAMES = [*ROWS, "x", "y", "Full Name", ""]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["1", "1.5", "abc", "2024-01-02", "2024-01-02 03:04:05+02", "t", "", "1e400", "NaN"]
    ),
    st.text(max_size=6),
)
expressions = st.one_of(
    st.sampled_from(
        ["amount * 1.1 + id", "ratio / (id - 1)", "amount +", "(id", "name * 2", "x", "-id / 0"]
    ),
    st.text(alphabet='idamount rt()+-*/.0123456789"', min_size=1, max_size=25),
)


@st.composite
def filters(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema_name": "s", "table_name": "t", "column_name": draw(st.sampled_from(NAMES)),
                           "filter_type": draw(st.sampled_from([*FILTER_TYPES, "bogus"]))}  # fmt: skip
    for key in draw(st.sets(st.sampled_from(["value", "lower", "upper", "values"]))):
        doc[key] = draw(st.lists(scalars, max_size=3)) if key == "values" else draw(scalars)
    return doc


@st.composite
def transformations(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from([*STRUCTURAL_TRANSFORMATIONS, "modify_column_value", "create_column"])
    )
    name = st.sampled_from(NAMES)
    contract: dict[str, Any]
    if kind == "modify_schema_name":
        contract = {"target_schema_name": draw(name)}
    elif kind == "modify_table_name":
        contract = {"target_table_name": draw(name)}
    elif kind == "modify_column_name":
        contract = {"column_name": draw(name), "new_column_name": draw(name)}
    elif kind in ("add_primary_key", "remove_primary_key"):
        contract = {"column_names": draw(st.lists(name, max_size=3))}
    elif kind == "modify_column_value":
        contract = {
            "column_name": draw(name),
            "operation": draw(st.sampled_from([*COLUMN_VALUE_OPERATIONS, "reverse"])),
        }
        if draw(st.booleans()):
            contract["format"] = draw(st.sampled_from(["%Y", "%d/%m/%Y %H", "%Q", "", "%"]))
    else:
        op = draw(st.sampled_from([*CREATE_COLUMN_OPERATIONS, "nope"]))
        contract = {"new_column_name": draw(name), "operation": op}
        if op in ("concat", "date_diff_years"):
            contract["depends_on"] = draw(st.lists(name, max_size=3))
        if op == "math_expression":
            contract["expression"] = draw(expressions)
        if op == "literal":
            contract["value"] = draw(scalars)
            contract["type"] = draw(st.sampled_from([*LITERAL_TYPES, "money"]))
    return {"schema_name": "s", "table_name": "t", "priority": draw(st.integers(min_value=0, max_value=4)),
            "transformation_type": kind, "contract": contract}  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(filters(), max_size=3), st.lists(transformations(), max_size=5))
def test_random_documents_compile_or_fail_cleanly(
    fs: list[dict[str, Any]], ts: list[dict[str, Any]]
) -> None:
    doc = {
        "task": {"task_name": "fuzz", "source": "a", "target": "b"},
        "tables": [{"schema_name": "s", "table_name": "t"}],
        "filters": fs,
        "transformations": ts,
    }
    try:
        plan = compile_plan(parse_settings(doc), TABLE)
    except SettingsError:
        return
    ctx = BatchContext(now=dt.datetime(2024, 5, 6, tzinfo=dt.timezone.utc))
    try:
        out = plan.apply(FRAME, ctx)
    except ValueError as exc:  # only the documented "value cannot be read" / overflow errors
        assert str(exc).startswith("transformations["), exc
        return
    assert out.columns == [c.name for c in plan.target_columns]
    assert all(dtype == pl.String for dtype in out.schema.values())
    plan.display(out)
