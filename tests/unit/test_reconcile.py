"""Pure tests of reconciliation: the SQL forms of the plan's steps, the canonical row text and
hashes, the selections, every name quoted; bucket counts, differing buckets, result rows."""

from __future__ import annotations

import json

import pytest
from psycopg import sql

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.fullload import target_spec
from trempy_nb.pipeline.plan import compile_plan
from trempy_nb.reconcile import sqlgen
from trempy_nb.reconcile.chunks import (
    TableDiff,
    bucket_count,
    diff_row,
    differing_buckets,
    frame,
    records,
)
from trempy_nb.reconcile.sqlgen import DiffShape, Selection
from trempy_nb.settings import TaskSettings

COLUMNS = [("id", "integer"), ("first", "text"), ("Last Name", "text"), ("pay", "numeric(10,2)"), ("born", "date")]


def _shape(transformations: list[dict], filters: list[dict] | None = None, mode: str = "upsert",
           fast: bool = True, key: tuple[str, ...] = ("id",)) -> DiffShape:
    cols = tuple(ColumnInfo(name=n, pg_type=t, nullable=n != "id", position=i) for i, (n, t) in enumerate(COLUMNS, 1))
    table = TableInfo(schema="s", name="t", columns=cols, primary_key=key, replica_identity="d")
    t = {"schema_name": "s", "table_name": "t"}
    doc = {"task": {"task_name": "x", "source": "postgresql://h/db", "target": "postgresql://h/db2",
                    "cdc_settings": {"mode": mode}},
           "tables": [t], "filters": [{**t, **f} for f in filters or []],
           "transformations": [{**t, **x} for x in transformations]}
    settings = TaskSettings.model_validate(doc)
    plan = compile_plan(settings, table)
    spec = target_spec(plan, settings)
    types = {c.name: c.pg_type for c in plan.target_columns}
    volatile = sqlgen.volatile_columns(plan)
    return DiffShape(plan, spec, types, tuple(c for c in spec.data_columns if c not in volatile),
                     sqlgen.source_exprs(plan), dict.fromkeys(types.values(), True), fast_hash=fast)


def _text(q: sql.Composable) -> str:
    return q.as_string(None)


UPPER = {"priority": 1, "transformation_type": "modify_column_value",
         "contract": {"operation": "uppercase", "column_name": "Last Name"}}
CONCAT = {"priority": 2, "transformation_type": "create_column",
          "contract": {"operation": "concat", "new_column_name": "full", "depends_on": ["first", "Last Name"],
                       "separator": " "}}
NOW = {"priority": 3, "transformation_type": "create_column",
       "contract": {"operation": "datetime_now", "new_column_name": "seen"}}
MATH = {"priority": 3, "transformation_type": "create_column",
        "contract": {"operation": "math_expression", "new_column_name": "twice", "expression": "pay * 2"}}
RENAME = {"priority": 0, "transformation_type": "modify_column_name",
          "contract": {"column_name": "first", "new_column_name": "given"}}


def test_steps_with_a_sql_form_are_evaluated_on_the_source_through_renames() -> None:
    shape = _shape([RENAME, UPPER, {**CONCAT, "contract": {**CONCAT["contract"], "depends_on": ["given", "Last Name"]}}])
    assert shape.hashable
    q = _text(sqlgen.source_buckets_sql(shape, 7))
    assert 'upper("Last Name")' in q
    assert "concat_ws(' ', (\"first\")::text, ((upper(\"Last Name\")))::text)" in q
    assert 'ROW("id", "first", ((upper("Last Name")))::text, "pay"' in q  # the renamed column read by its source name
    assert "hashtextextended" in q and "GROUP BY b" in q
    assert '((("id")::bigint % 7) + 7) % 7' in q  # one integer key: the key is its own bucket hash


def test_a_step_without_exact_sql_form_sends_the_table_through_the_plan() -> None:
    shape = _shape([MATH])
    assert not shape.hashable
    assert sqlgen.keys_selectable(shape)  # the key is a source column: rows of given keys can be read
    q = _text(sqlgen.source_rows_sql(shape, Selection(keys=(("1",), ("2",)))))
    assert 'SELECT "id", "first", "Last Name", "pay", "born" FROM "s"."t" WHERE' in q
    assert "unnest('{1,2}'::text[])" in q


def test_datetime_now_columns_are_not_compared() -> None:
    shape = _shape([NOW, {"priority": 4, "transformation_type": "create_column",
                          "contract": {"operation": "concat", "new_column_name": "stamp", "depends_on": ["seen"]}}])
    assert "seen" not in shape.compared and "stamp" not in shape.compared
    assert shape.hashable and "id" in shape.compared


def test_filters_scd2_current_and_md5_fallback() -> None:
    shape = _shape([], filters=[{"column_name": "pay", "filter_type": "greater_than", "value": 10}], mode="scd2",
                   fast=False, key=("id", "first"))
    src = _text(sqlgen.source_buckets_sql(shape, 3))
    assert "WHERE" in src and "'10'" in src
    assert "md5(" in src and "hashtextextended" not in src
    tgt = _text(sqlgen.target_buckets_sql(shape, 3))
    assert 'WHERE "t"."scd_current"' in tgt
    assert 'md5(ROW(t."id", t."first")::text)' in tgt  # a composite key: bucket from the key's hash


def test_compare_names_kinds_flags_and_keys() -> None:
    shape = _shape([UPPER], mode="scd2", key=("id", "first"))
    q = _text(sqlgen.compare_sql(shape, Selection(buckets=(1, 4), bucket_count=9)))
    assert "FULL JOIN" in q and "'missing'" in q and "'extra'" in q and "'different'" in q
    assert 's."id" = t."id" AND s."first" = t."first"' in q
    assert '(s."Last Name")::text IS DISTINCT FROM (t."Last Name")::text' in q
    assert '"t"."scd_current"' in q and "= ANY('{1,4}'" in q


def test_names_are_always_quoted() -> None:
    shape = _shape([UPPER])
    for q in (sqlgen.create_stage_sql(shape), sqlgen.create_keys_sql(shape), sqlgen.trim_stage_sql(shape),
              sqlgen.insert_staged_sql(shape), sqlgen.fill_keys_sql(shape, [("1",)])):
        text = _text(q)
        assert '"Last Name"' in text or '"id"' in text
        assert " Last Name" not in text.replace('"Last Name"', "")


def test_bucket_arithmetic() -> None:
    assert bucket_count(0, 100) == 1 and bucket_count(1000, 100) == 10 and bucket_count(1001, 100) == 11
    with pytest.raises(ValueError):
        bucket_count(10, 0)
    assert differing_buckets({0: (2, 5), 1: (1, 1)}, {0: (2, 5), 2: (1, 9)}) == [1, 2]
    assert differing_buckets({0: (0, 0)}, {}) == []


def test_rows_frame_and_json() -> None:
    row = diff_row("s.t", "s.t", ("id", "k"), ("id", "k", "a", "b"), ("different", [False, False, True, False],
                                                                       7, "x", "7", "x"))
    assert row.columns == ("a",) and row.key == {"id": 7, "k": "x"} and row.key_text == ("7", "x")
    gone = diff_row("s.t", "s.t", ("id",), ("id", "a"), ("missing", [True, True], 8, "8"))
    assert gone.columns == ()
    t = TableDiff("s.t", "s.t", 10, 9, rows=[row, gone])
    assert t.counts() == {"missing": 1, "extra": 0, "different": 1}
    assert "2 difference(s): 1 missing, 0 extra, 1 different" in t.summary()
    f = frame([t])
    assert f.columns == ["table", "target", "key", "kind", "columns"] and f.height == 2
    assert json.loads(f["key"][0]) == {"id": 7, "k": "x"}
    assert records([t])[1] == {"table": "s.t", "target": "s.t", "key": {"id": 8}, "kind": "missing", "columns": []}
    assert frame([]).height == 0
