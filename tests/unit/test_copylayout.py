"""Which columns of a transformed table pass through in binary, which travel as text (pure)."""

from __future__ import annotations

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.pgcopy.binarycodec import Tail
from trempy_nb.pipeline.copylayout import RAW_PREFIX, base_type, copy_layout
from trempy_nb.pipeline.plan import compile_plan
from trempy_nb.settings import TaskSettings

COLUMNS = [("id", "integer"), ("name", "text"), ("amount", "numeric(12,2)"), ("span", "interval"), ("note", "text")]


def _table() -> TableInfo:
    cols = tuple(ColumnInfo(name=n, pg_type=t, nullable=n != "id", position=i) for i, (n, t) in enumerate(COLUMNS, 1))
    return TableInfo(schema="s", name="t", columns=cols, primary_key=("id",), replica_identity="d")


def _plan(transformations: list[dict], filters: list[dict] | None = None):  # type: ignore[no-untyped-def]
    t = {"schema_name": "s", "table_name": "t"}
    doc = {"task": {"task_name": "x", "source": "postgresql://h/db", "target": "postgresql://h/db2"},
           "tables": [t], "filters": [{**t, **f} for f in filters or []],
           "transformations": [{**t, **x} for x in transformations]}
    return compile_plan(TaskSettings.model_validate(doc), _table())


SOURCE = dict(COLUMNS)


def test_untouched_and_read_only_columns_ride_in_the_tail_written_ones_are_encoded() -> None:
    plan = _plan(
        [{"priority": 0, "transformation_type": "modify_column_name", "contract": {"column_name": "note", "new_column_name": "memo"}},
         {"priority": 1, "transformation_type": "modify_column_value", "contract": {"operation": "uppercase", "column_name": "name"}},
         {"priority": 2, "transformation_type": "create_column",
          "contract": {"operation": "math_expression", "new_column_name": "double", "expression": "amount * 2"}}],
        [{"column_name": "span", "filter_type": "is_not_null"}],
    )
    target = {c.name: c.pg_type for c in plan.target_columns}
    columns = [c.name for c in plan.target_columns]
    layout = copy_layout(plan, target, columns, SOURCE)
    assert layout is not None
    # the plan reads name (text), span (interval: as text, and raw again in the tail) and amount
    # (numeric: comes raw once, printed as text here, and selected where the tail begins, so
    # that its field is also the target's); id and note (renamed memo) ride in the tail
    assert layout.select == (("name", True), ("span", True), ("amount", False), ("id", False), ("span", False),
                             ("note", False))
    assert layout.names == ("name", "span", RAW_PREFIX + "amount") and layout.as_text == (True, True, False)
    assert layout.decoded == ((RAW_PREFIX + "amount", "amount", "numeric"),)
    # encoded: name and double; then the tail, which begins with amount's field as it came
    assert layout.columns == ("name", "double", "amount", "id", "span", "memo")
    assert layout.outputs == ("name", "double") and len(layout.encoders) == 2
    assert layout.raw_columns == ("amount", "id", "span", "memo")
    assert layout.tail == Tail(RAW_PREFIX, 4, 1)


def test_a_read_column_the_plan_rewrites_comes_raw_once_and_goes_out_encoded() -> None:
    plan = _plan([{"priority": 2, "transformation_type": "create_column",
                   "contract": {"operation": "math_expression", "new_column_name": "amount_x", "expression": "id + 1"}},
                  {"priority": 1, "transformation_type": "modify_column_value",
                   "contract": {"operation": "uppercase", "column_name": "name"}}])
    target = {c.name: c.pg_type for c in plan.target_columns} | {"id": "bigint"}  # the target widened id
    columns = [c.name for c in plan.target_columns]
    layout = copy_layout(plan, target, columns, SOURCE)
    assert layout is not None
    assert layout.select[:2] == (("id", False), ("name", True))
    assert dict(zip(layout.columns, layout.encoders, strict=False))["id"] is not None  # integer -> bigint: encoded


def test_a_target_type_without_an_encoder_sends_the_table_as_text() -> None:
    plan = _plan([{"priority": 1, "transformation_type": "modify_column_value",
                   "contract": {"operation": "uppercase", "column_name": "name"}}])
    columns = [c.name for c in plan.target_columns]
    target = {c.name: c.pg_type for c in plan.target_columns} | {"span": "interval(0)"}  # an existing table differs
    assert copy_layout(plan, target, columns, SOURCE) is None
    target["span"] = "interval"
    assert copy_layout(plan, target, columns, SOURCE) is not None


def test_base_type_drops_typmods_and_arrays() -> None:
    assert base_type("character varying(20)[]") == "character varying"
    assert base_type("numeric(12, 2)") == "numeric"
    assert base_type("timestamp(3) with time zone") == "timestamp with time zone"


def test_a_numeric_only_exact_math_reads_goes_to_it_as_decimal() -> None:
    math = {"priority": 2, "transformation_type": "create_column",
            "contract": {"operation": "math_expression", "new_column_name": "double", "expression": "amount * 2"}}
    plan = _plan([math])
    columns = [c.name for c in plan.target_columns]
    target = {c.name: c.pg_type for c in plan.target_columns}
    layout = copy_layout(plan, target, columns, SOURCE)
    assert layout is not None and layout.typed == (("amount", 2),)
    assert layout.decimals == ("double",)  # nothing reads the result: it goes to the encoder as Decimal
    # a filter, or another step, reads the text: amount stays text for everyone
    read_by_filter = _plan([math], [{"column_name": "amount", "filter_type": "greater_than", "value": 1}])
    assert copy_layout(read_by_filter, target, columns, SOURCE).typed == ()  # type: ignore[union-attr]
    concat = {"priority": 2, "transformation_type": "create_column",
              "contract": {"operation": "concat", "new_column_name": "label", "depends_on": ["name", "amount"]}}
    read_by_concat = _plan([math, concat])
    target2 = {c.name: c.pg_type for c in read_by_concat.target_columns}
    columns2 = [c.name for c in read_by_concat.target_columns]
    assert copy_layout(read_by_concat, target2, columns2, SOURCE).typed == ()  # type: ignore[union-attr]


def test_a_math_result_another_step_reads_stays_text() -> None:
    plan = _plan([
        {"priority": 2, "transformation_type": "create_column",
         "contract": {"operation": "math_expression", "new_column_name": "double", "expression": "amount * 2"}},
        {"priority": 3, "transformation_type": "create_column",
         "contract": {"operation": "concat", "new_column_name": "label", "depends_on": ["name", "double"]}},
    ])
    target = {c.name: c.pg_type for c in plan.target_columns}
    layout = copy_layout(plan, target, [c.name for c in plan.target_columns], SOURCE)
    assert layout is not None and layout.decimals == ()
