"""compile_plan + TablePlan: every transformation with hand-computed values, validation paths, CDC frames."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import polars as pl
import pytest

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.changes import LSN, OP, SEQ, TS, UNCHANGED
from trempy_nb.errors import ValidationFailed
from trempy_nb.pipeline.plan import compile_plan
from trempy_nb.pipeline.transformations import BatchContext, timestamptz_text
from trempy_nb.settings import TaskSettings

NOW = dt.datetime(2024, 3, 15, 10, 30, 0, 250000, tzinfo=dt.timezone.utc)
CTX = BatchContext(now=NOW)
COLUMNS = [
    ("id", "integer"),
    ("first_name", "character varying(50)"),
    ("last_name", "text"),
    ("salary", "numeric(12,2)"),
    ("bonus", "numeric"),
    ("rate", "double precision"),
    ("born", "date"),
    ("hired", "timestamp without time zone"),
    ("updated", "timestamp with time zone"),
    ("active", "boolean"),
]
TABLE = TableInfo(
    schema="hr",
    name="emp",
    columns=tuple(
        ColumnInfo(n, t, nullable=n != "id", position=i + 1) for i, (n, t) in enumerate(COLUMNS)
    ),
    primary_key=("id",),
    identity_columns=("id",),
)
OTHER = TableInfo(
    "hr", "dept", (ColumnInfo("id", "integer"), ColumnInfo("name", "text")), primary_key=("id",)
)
DATA: dict[str, list[Any]] = {
    "id": ["1", "2", "3"],
    "first_name": ["  Ana ", "bob", None],
    "last_name": ["Smith", "o'Neil", "Éclair"],
    "salary": ["5000.00", "4999.99", None],
    "bonus": ["100.5", "0", "12"],
    "rate": ["1.5", "2", None],
    "born": ["1990-05-17", "2000-03-15", "infinity"],
    "hired": ["2023-03-15 10:30:00.25", "2023-03-15 10:30:00.250001", None],
    "updated": ["2024-01-02 03:04:05.5+00", None, "2020-02-29 00:00:00+00"],
    "active": ["t", "f", None],
}
FRAME = pl.DataFrame(DATA, schema={c: pl.String for c in DATA})


def settings(
    transformations: list[dict[str, Any]] = (),  # type: ignore[assignment]
    filters: list[dict[str, Any]] = (),  # type: ignore[assignment]
    mode: str = "upsert",
) -> TaskSettings:
    return TaskSettings.model_validate(
        {
            "task": {
                "task_name": "t",
                "source": "s",
                "target": "t",
                "cdc_settings": {"mode": mode},
            },
            "tables": [
                {"schema_name": "hr", "table_name": "dept"},
                {"schema_name": "hr", "table_name": "emp"},
            ],
            "filters": [{"schema_name": "hr", "table_name": "emp", **f} for f in filters],
            "transformations": [
                {"schema_name": "hr", "table_name": "emp", **t} for t in transformations
            ],
        }
    )


def value(op: str, column: str, priority: int = 1, **extra: Any) -> dict[str, Any]:
    return {"priority": priority, "transformation_type": "modify_column_value",
            "contract": {"operation": op, "column_name": column, **extra}}  # fmt: skip


def create(op: str, new: str, priority: int = 2, **extra: Any) -> dict[str, Any]:
    return {"priority": priority, "transformation_type": "create_column",
            "contract": {"operation": op, "new_column_name": new, **extra}}  # fmt: skip


def structural(kind: str, **contract: Any) -> dict[str, Any]:
    return {"priority": 0, "transformation_type": kind, "contract": contract}


def run(*transformations: dict[str, Any], column: str | None = None) -> Any:
    plan = compile_plan(settings(list(transformations)), TABLE)
    out = plan.apply(FRAME, CTX)
    return out[column].to_list() if column else out


# -- modify_column_value -------------------------------------------------------------------


def test_uppercase_lowercase_trim() -> None:
    assert run(value("uppercase", "last_name"), column="last_name") == ["SMITH", "O'NEIL", "ÉCLAIR"]
    assert run(value("lowercase", "last_name"), column="last_name") == ["smith", "o'neil", "éclair"]
    assert run(value("trim", "first_name"), column="first_name") == ["Ana", "bob", None]


def test_format_date_on_date_timestamp_timestamptz() -> None:
    plan = compile_plan(settings([value("format_date", "born", format="%d/%m/%Y")]), TABLE)
    assert plan.apply(FRAME, CTX)["born"].to_list() == ["17/05/1990", "15/03/2000", None]
    assert plan.target_columns[6] == ColumnInfo("born", "text", True, 7)
    assert run(value("format_date", "hired", format="%Y%m%d %H:%M"), column="hired") == [
        "20230315 10:30",
        "20230315 10:30",
        None,
    ]
    assert run(value("format_date", "updated", format="%H:%M:%S %z"), column="updated") == [
        "03:04:05 +0000",
        None,
        "00:00:00 +0000",
    ]


def test_format_date_refuses_unparseable_values() -> None:
    plan = compile_plan(settings([value("format_date", "born", format="%Y")]), TABLE)
    bad = FRAME.with_columns(pl.lit("17.05.1990").alias("born"))
    with pytest.raises(
        ValueError,
        match=r"transformations\[0\] \(modify_column_value/format_date, column 'born'\): column 'born' holds '17.05.1990', which is not a valid date",
    ):
        plan.apply(bad, CTX)


# -- create_column -----------------------------------------------------------------------------


def test_concat_skips_nulls_like_concat_ws() -> None:
    plan = compile_plan(
        settings(
            [
                create(
                    "concat",
                    "full",
                    depends_on=["first_name", "last_name", "salary", "active"],
                    separator=" ",
                )
            ]
        ),
        TABLE,
    )
    out = plan.apply(FRAME, CTX)
    assert out["full"].to_list() == ["  Ana  Smith 5000.00 t", "bob o'Neil 4999.99 f", "Éclair"]
    assert plan.target_columns[-1] == ColumnInfo("full", "text", True, 11)
    assert out.columns == [*TABLE.column_names, "full"]
    assert run(create("concat", "c", depends_on=["salary", "rate"]), column="c") == [
        "5000.001.5",
        "4999.992",
        "",
    ]


def test_date_diff_years_matches_age() -> None:
    # today is 2024-03-15 (UTC): 1990-05-17 -> 33, 2000-03-15 -> 24 (birthday today), infinity -> NULL
    assert run(create("date_diff_years", "age", depends_on=["born"]), column="age") == [
        "33",
        "24",
        None,
    ]
    # 2023-03-15 10:30:00.25 is less than a year before 2024-03-15 00:00
    assert run(create("date_diff_years", "y", depends_on=["hired"]), column="y") == ["0", "0", None]
    assert run(create("date_diff_years", "y", depends_on=["updated"]), column="y") == [
        "0",
        None,
        "4",
    ]
    plan = compile_plan(settings([create("date_diff_years", "y", depends_on=["born"])]), TABLE)
    assert plan.target_columns[-1].pg_type == "integer"
    future = pl.DataFrame(
        {"born": ["2030-06-01", "2030-01-01", "2029-12-31", "2023-03-16", "2023-03-15"]}
    )
    out = plan.steps[0].apply(future, CTX)
    assert out["y"].to_list() == ["-6", "-5", "-5", "0", "1"]


def test_math_expression_exact() -> None:
    plan = compile_plan(
        settings([create("math_expression", "total", expression="salary * 1.1 + bonus")]), TABLE
    )
    out = plan.apply(FRAME, CTX)["total"].to_list()
    assert [Decimal(x) if x is not None else None for x in out] == [
        Decimal("5600.5"),
        Decimal("5499.989"),
        None,
    ]
    assert plan.target_columns[-1].pg_type == "numeric"
    plan = compile_plan(
        settings([create("math_expression", "r", expression="rate * id / (id - 1)")]), TABLE
    )
    assert plan.target_columns[-1].pg_type == "double precision"
    assert plan.apply(FRAME, CTX)["r"].to_list() == [None, "4.0", None]


def test_math_expression_refuses_unparseable_input() -> None:
    plan = compile_plan(settings([create("math_expression", "t", expression="bonus + 1")]), TABLE)
    with pytest.raises(
        ValueError,
        match=r"transformations\[0\] \(create_column/math_expression, column 't'\): column 'bonus' holds 'NaN'",
    ):
        plan.apply(FRAME.with_columns(pl.lit("NaN").alias("bonus")), CTX)


def test_math_expression_overflow_is_a_value_error() -> None:
    plan = compile_plan(
        settings([create("math_expression", "t", expression="bonus * bonus * bonus")]), TABLE
    )
    big = FRAME.with_columns(pl.lit("1" * 15).alias("bonus"))
    with pytest.raises(ValueError, match=r"transformations\[0\] \(create_column/math_expression"):
        plan.apply(big, CTX)


@pytest.mark.parametrize(
    ("value_", "type_", "text", "pg_type"),
    [
        ("hello", "text", "hello", "text"),
        (42, "integer", "42", "integer"),
        ("9000000000", "integer", "9000000000", "bigint"),
        (12.5, "numeric", "12.5", "numeric"),
        ("1E+3", "numeric", "1000", "numeric"),
        (True, "boolean", "t", "boolean"),
        ("false", "boolean", "f", "boolean"),
        ("2024-02-29", "date", "2024-02-29", "date"),
        (
            "2024-02-29T13:45:00.120",
            "timestamp",
            "2024-02-29 13:45:00.12",
            "timestamp without time zone",
        ),
        (None, "date", None, "date"),
    ],
)
def test_literal(value_: Any, type_: str, text: str | None, pg_type: str) -> None:
    plan = compile_plan(settings([create("literal", "k", value=value_, type=type_)]), TABLE)
    assert plan.apply(FRAME, CTX)["k"].to_list() == [text] * 3
    assert plan.target_columns[-1].pg_type == pg_type


@pytest.mark.parametrize(
    ("value_", "type_"),
    [("abc", "integer"), (1.5, "integer"), ("x", "numeric"), ("maybe", "boolean"), ("2024-02-30", "date"),
     ("2024-01-01 10:00+02:00", "timestamp"), (10**20, "integer"), (True, "numeric")],
)  # fmt: skip
def test_literal_refuses_bad_values(value_: Any, type_: str) -> None:
    with pytest.raises(ValidationFailed, match=r"^transformations\[0\]\.contract\.value: "):
        compile_plan(settings([create("literal", "k", value=value_, type=type_)]), TABLE)


def test_datetime_now_is_one_timestamp_per_batch() -> None:
    assert timestamptz_text(NOW) == "2024-03-15 10:30:00.25+00"
    assert timestamptz_text(NOW.replace(microsecond=0)) == "2024-03-15 10:30:00+00"
    plan = compile_plan(
        settings([create("datetime_now", "loaded_at", priority=4)]), TABLE, clock=lambda: NOW
    )
    assert plan.apply(FRAME)["loaded_at"].to_list() == ["2024-03-15 10:30:00.25+00"] * 3
    assert plan.target_columns[-1].pg_type == "timestamp with time zone"


# -- structural -------------------------------------------------------------------------------


def test_structural_transformations() -> None:
    plan = compile_plan(
        settings([
            structural("modify_schema_name", target_schema_name="dw"),
            structural("modify_table_name", target_table_name="dim_emp"),
            structural("modify_column_name", column_name="last_name", new_column_name="surname"),
            structural("modify_column_name", column_name="id", new_column_name="emp_id"),
            structural("add_primary_key", column_names=["emp_id", "surname"]),
            structural("remove_primary_key", column_names=["surname"]),
            value("uppercase", "surname"),
        ]),
        TABLE,
    )  # fmt: skip
    assert (plan.target_schema, plan.target_table) == ("dw", "dim_emp")
    assert plan.target_primary_key == ("emp_id",)
    assert [c.name for c in plan.target_columns][:3] == ["emp_id", "first_name", "surname"]
    assert plan.target_columns[0] == ColumnInfo("emp_id", "integer", False, 1)
    assert plan.source_columns == tuple(TABLE.column_names)
    assert not plan.passthrough
    out = plan.apply(FRAME, CTX)
    assert out.columns == [c.name for c in plan.target_columns]
    assert out["surname"].to_list() == ["SMITH", "O'NEIL", "ÉCLAIR"]
    assert out["emp_id"].to_list() == ["1", "2", "3"]


def test_renames_only_are_passthrough() -> None:
    plan = compile_plan(
        settings([structural("modify_column_name", column_name="id", new_column_name="key")]), TABLE
    )
    assert plan.passthrough and plan.target_primary_key == ("key",)
    assert plan.filter_sql() is None
    assert plan.apply(FRAME)["key"].to_list() == ["1", "2", "3"]
    assert compile_plan(settings(), TABLE).passthrough
    assert not compile_plan(
        settings(filters=[{"column_name": "id", "filter_type": "is_not_null"}]), TABLE
    ).passthrough


def test_swap_column_names() -> None:
    plan = compile_plan(settings([
        structural("modify_column_name", column_name="first_name", new_column_name="tmp"),
        structural("modify_column_name", column_name="last_name", new_column_name="first_name"),
        structural("modify_column_name", column_name="tmp", new_column_name="last_name"),
    ]), TABLE)  # fmt: skip
    out = plan.apply(FRAME)
    assert out.columns[1:3] == ["last_name", "first_name"]
    assert out["first_name"].to_list() == FRAME["last_name"].to_list()


def test_plan_tells_what_it_reads_writes_and_may_hand_over_as_decimal() -> None:
    rules = [
        structural("modify_column_name", column_name="last_name", new_column_name="surname"),
        value("uppercase", "surname"),
        create("math_expression", "pay", expression="salary * 2"),
        create("math_expression", "net", expression="salary - 1"),
        create("math_expression", "ratio", priority=3, expression="bonus * rate"),
        create("concat", "label", priority=4, depends_on=["first_name", "net"]),
    ]
    plan = compile_plan(settings(rules, [{"column_name": "active", "filter_type": "is_not_null"}]), TABLE)
    assert plan.source_column("surname") == "last_name"
    assert plan.source_column("last_name") is None  # renamed away
    assert plan.source_column("pay") is None and plan.source_column("id") == "id"
    assert plan.writes == {"surname", "pay", "net", "ratio", "label"}
    assert plan.reads == {"last_name", "salary", "bonus", "rate", "first_name", "active"}
    # salary: only exact math reads it, at its declared scale; bonus has no declared scale, and
    # rate makes its math inexact (float)
    assert plan.decimal_inputs == {"salary": 2}
    assert plan.decimal_results == ("pay",)  # net is read by label, ratio is a float
    filtered = compile_plan(settings(rules, [{"column_name": "salary", "filter_type": "is_not_null"}]), TABLE)
    assert filtered.decimal_inputs == {}  # the filter reads salary's text


def test_order_is_priority_then_list_order() -> None:
    # the concat (priority 2) sees the uppercase (priority 1) though it comes first in the list
    out = run(
        create("concat", "full", depends_on=["last_name"]),
        value("uppercase", "last_name"),
        create("concat", "again", priority=3, depends_on=["full", "id"], separator="-"),
    )
    assert out["full"].to_list() == ["SMITH", "O'NEIL", "ÉCLAIR"]
    assert out["again"].to_list() == ["SMITH-1", "O'NEIL-2", "ÉCLAIR-3"]


ERRORS = [
    ([value("uppercase", "nope")], "transformations[0].contract.column_name: column 'nope' does not exist at this point (columns: id, first_name,"),
    ([value("uppercase", "salary")], "transformations[0].contract.column_name: operation 'uppercase' needs a text column; 'salary' is numeric(12,2)"),
    ([value("trim", "active")], "transformations[0].contract.column_name: operation 'trim' needs a text column"),
    ([value("format_date", "last_name", format="%Y")], "transformations[0].contract.column_name: operation 'format_date' needs a date or timestamp column"),
    ([value("format_date", "born", format="%Q")], "transformations[0].contract.format: '%Q' is not a valid strftime format"),
    ([create("concat", "id", depends_on=["first_name"])], "transformations[0].contract.new_column_name: column 'id' already exists at this point"),
    ([create("concat", "x", depends_on=["first_name", "ghost"])], "transformations[0].contract.depends_on[1]: column 'ghost' does not exist"),
    ([create("date_diff_years", "x", depends_on=["salary"])], "transformations[0].contract.depends_on[0]: date_diff_years needs a date or timestamp column"),
    ([create("math_expression", "x", expression="salary +")], "transformations[0].contract.expression: expression ends where a value was expected"),
    ([create("math_expression", "x", expression="last_name * 2")], "transformations[0].contract.expression: column 'last_name' is text, not a number"),
    ([structural("modify_column_name", column_name="id", new_column_name="salary")], "transformations[0].contract.new_column_name: column 'salary' already exists"),
    ([structural("modify_column_name", column_name="x", new_column_name="y")], "transformations[0].contract.column_name: column 'x' does not exist"),
    ([structural("modify_column_name", column_name="last_name", new_column_name="surname"), value("uppercase", "last_name")],
     "transformations[1].contract.column_name: column 'last_name' does not exist at this point"),
    ([structural("add_primary_key", column_names=["id", "ghost"])], "transformations[0].contract.column_names[1]: column 'ghost' does not exist"),
    ([structural("add_primary_key", column_names=["id", "id"])], "transformations[0].contract.column_names[1]: column 'id' is listed twice"),
    ([structural("remove_primary_key", column_names=["salary"])], "transformations[0].contract.column_names[0]: column 'salary' is not part of the primary key (primary key: id)"),
    ([create("concat", "b", priority=3, depends_on=["a"]), create("concat", "a", depends_on=["id"]), create("concat", "a", priority=4, depends_on=["id"])],
     "transformations[2].contract.new_column_name: column 'a' already exists at this point"),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "message"), ERRORS)
def test_validation_errors(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        compile_plan(settings(rules), TABLE)
    assert str(err.value).startswith(message), str(err.value)


def test_document_index_counts_other_tables_rules() -> None:
    doc = settings([value("uppercase", "ghost")]).model_dump()
    doc["transformations"].insert(0, {"schema_name": "hr", "table_name": "dept", "priority": 1,
                                      "transformation_type": "modify_column_value",
                                      "contract": {"operation": "uppercase", "column_name": "name"}})  # fmt: skip
    doc["filters"] = [{"schema_name": "hr", "table_name": "dept", "column_name": "id", "filter_type": "is_null"},
                      {"schema_name": "hr", "table_name": "emp", "column_name": "id", "filter_type": "equals", "value": "x"}]  # fmt: skip
    s = TaskSettings.model_validate(doc)
    with pytest.raises(ValidationFailed, match=r"^filters\[1\]\.value"):
        compile_plan(s, TABLE)
    doc["filters"] = []
    with pytest.raises(ValidationFailed, match=r"^transformations\[1\]\.contract\.column_name"):
        compile_plan(TaskSettings.model_validate(doc), TABLE)
    assert compile_plan(TaskSettings.model_validate(doc), OTHER).steps[0].index == 0


def test_scd2_validity_columns_must_not_collide() -> None:
    with pytest.raises(
        ValidationFailed, match=r"^task\.cdc_settings\.scd2_settings\.current: column 'scd_current'"
    ):
        compile_plan(
            settings([create("literal", "scd_current", value=True, type="boolean")], mode="scd2"),
            TABLE,
        )


# -- filters in the plan, CDC frames, display ---------------------------------------------------


def test_apply_filters_then_transforms() -> None:
    plan = compile_plan(
        settings(
            [value("uppercase", "last_name")],
            filters=[{"column_name": "salary", "filter_type": "greater_than", "value": 4999.99}],
        ),
        TABLE,
    )
    out = plan.apply(FRAME, CTX)
    assert out["id"].to_list() == ["1"]
    assert out["last_name"].to_list() == ["SMITH"]
    query, params = plan.filter_sql()  # type: ignore[misc]
    assert query.as_string() == '("salary" > %s)' and params == ["4999.99"]
    assert plan.stats_filtered(FRAME, out) == {"rows_in": 3, "rows_out": 1, "rows_filtered": 2}


def _changes() -> pl.DataFrame:
    meta = pl.DataFrame(
        {
            OP: ["I", "U", "D", "U"],
            LSN: [10, 10, 11, 12],
            TS: [NOW] * 4,
            SEQ: [0, 1, 2, 3],
            UNCHANGED: [None, ["last_name"], None, ["salary"]],
        },
        schema={
            OP: pl.String,
            LSN: pl.Int64,
            TS: pl.Datetime("us", "UTC"),
            SEQ: pl.Int64,
            UNCHANGED: pl.List(pl.String),
        },
    )
    data = pl.DataFrame(
        {
            "id": ["1", "2", "3", "4"],
            "first_name": ["a", "b", None, "d"],
            "last_name": ["x", None, None, "y"],
            "salary": ["6000", "10", None, None],
            "bonus": ["1", "2", None, "3"],
            "rate": [None] * 4,
            "born": [None] * 4,
            "hired": [None] * 4,
            "updated": [None] * 4,
            "active": [None] * 4,
        },
        schema={c: pl.String for c, _ in COLUMNS},
    )
    return pl.concat([data, meta], how="horizontal")


def test_apply_changes() -> None:
    plan = compile_plan(
        settings(
            [
                structural(
                    "modify_column_name", column_name="last_name", new_column_name="surname"
                ),
                value("uppercase", "surname"),
                create("concat", "tag", depends_on=["first_name", "id"], separator=":"),
            ],
            filters=[{"column_name": "salary", "filter_type": "greater_than", "value": 5000}],
        ),
        TABLE,
    )
    out = plan.apply_changes(_changes(), CTX)
    assert out.columns == [*(c.name for c in plan.target_columns), OP, LSN, TS, SEQ, UNCHANGED]
    # row 1 passes, row 2 fails -> delete of its key with other columns nulled,
    # row 3 is a delete and passes through, row 4's salary is unchanged (TOAST) -> kept
    assert out[OP].to_list() == ["I", "D", "D", "U"]
    assert out["id"].to_list() == ["1", "2", "3", "4"]
    assert out["first_name"].to_list() == ["a", None, None, "d"]
    assert out["surname"].to_list() == ["X", None, None, "Y"]
    assert out["tag"].to_list() == ["a:1", "2", "3", "d:4"]
    assert out[UNCHANGED].to_list() == [None, ["surname"], None, ["salary"]]
    assert out[LSN].to_list() == [10, 10, 11, 12]


def test_display_casts_losslessly() -> None:
    plan = compile_plan(settings([create("math_expression", "t", expression="bonus * 2")]), TABLE)
    shown = plan.display(plan.apply(FRAME, CTX))
    assert shown.schema["id"] == pl.Int64
    assert shown.schema["salary"] == pl.Decimal(38, 2)
    assert shown.schema["bonus"] == pl.Decimal(38, 1)
    assert shown.schema["rate"] == pl.Float64
    assert shown.schema["hired"] == pl.Datetime("us")
    assert shown.schema["updated"] == pl.Datetime("us", "UTC")
    assert shown.schema["active"] == pl.Boolean
    assert shown.schema["last_name"] == pl.String
    assert shown.schema["born"] == pl.String  # 'infinity' has no Date form: kept as text
    assert shown["active"].to_list() == [True, False, None]
    assert shown["t"].to_list() == [Decimal("201.0"), Decimal("0.0"), Decimal("24.0")]
    empty = plan.display(plan.apply(FRAME.head(0), CTX))
    assert empty.height == 0 and empty.schema["id"] == pl.Int64


def test_apply_changes_moves_rows_across_an_or_group() -> None:
    """(salary > 5000 OR first_name = 'b') AND bonus IS NOT NULL: a row moves out only when it
    leaves every branch of the group; an unchanged (TOAST) column lets its branch pass."""
    plan = compile_plan(
        settings(
            filters=[
                {"column_name": "salary", "filter_type": "greater_than", "value": 5000, "or_group": "g"},
                {"column_name": "bonus", "filter_type": "is_not_null"},
                {"column_name": "first_name", "filter_type": "equals", "value": "b", "or_group": "g"},
            ]
        ),
        TABLE,
    )
    out = plan.apply_changes(_changes(), CTX)
    # 1: salary 6000 passes; 2: salary 10 but first_name 'b' passes (the other branch);
    # 3: a delete passes through; 4: salary unchanged (TOAST) counts as passing, bonus '3'
    assert out[OP].to_list() == ["I", "U", "D", "U"]
    changes = _changes().with_columns(pl.lit("z").alias("first_name"))
    out = plan.apply_changes(changes, CTX)
    # now row 2 leaves both branches (10 <= 5000, 'z' <> 'b'): a delete of its key
    assert out[OP].to_list() == ["I", "D", "D", "U"]
    assert out["first_name"].to_list() == ["z", None, "z", "z"]  # moved out: nulled; a delete keeps its row
    bonus_gone = changes.with_columns(pl.lit(None, dtype=pl.String).alias("bonus"))
    assert plan.apply_changes(bonus_gone, CTX)[OP].to_list() == ["D", "D", "D", "D"]  # the AND term fails
