"""The copy route of a full-load table: chosen once, and a bad row described readably (pure)."""

from __future__ import annotations

import struct
from decimal import Decimal

import polars as pl
import pytest

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.fullload import routes
from trempy_nb.fullload.routes import BinaryRoute, TextRoute, choose_route
from trempy_nb.pgcopy.textcodec import write_copy_text
from trempy_nb.pipeline.copylayout import RAW_PREFIX
from trempy_nb.pipeline.plan import TablePlan, compile_plan
from trempy_nb.settings import TaskSettings

COLUMNS = [("id", "integer"), ("name", "text"), ("amount", "numeric(12,2)"), ("note", "text")]


def _plan() -> TablePlan:
    """Uppercases name: the plan reads and writes name; id, amount and note pass through."""
    cols = tuple(ColumnInfo(name=n, pg_type=t, nullable=n != "id", position=i) for i, (n, t) in enumerate(COLUMNS, 1))
    table = TableInfo(schema="s", name="t", columns=cols, primary_key=("id",), replica_identity="d")
    t = {"schema_name": "s", "table_name": "t"}
    doc = {"task": {"task_name": "x", "source": "postgresql://h/db", "target": "postgresql://h/db2"},
           "tables": [t], "transformations": [{**t, "priority": 1, "transformation_type": "modify_column_value",
                                               "contract": {"operation": "uppercase", "column_name": "name"}}]}
    return compile_plan(TaskSettings.model_validate(doc), table)


def _target(plan: TablePlan) -> tuple[list[str], dict[str, str]]:
    return [c.name for c in plan.target_columns], {c.name: c.pg_type for c in plan.target_columns}


def test_binary_when_a_layout_exists_text_when_forced_or_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan()
    columns, types = _target(plan)
    route = choose_route(plan, columns, types)
    assert isinstance(route, BinaryRoute) and route.name == "binary"
    assert route.columns == ["name", "id", "amount", "note"]  # encoded first, then the tail's
    assert isinstance(choose_route(plan, columns, types | {"name": "interval"}), TextRoute)  # no encoder
    assert choose_route(plan, columns, {}).name == "text"  # target types unknown
    monkeypatch.setattr(routes, "COPY_FORMAT", "text")
    route = choose_route(plan, columns, types)
    assert isinstance(route, TextRoute) and route.columns == columns


def _field(value: bytes | None) -> bytes:
    return struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value


def test_a_bad_row_of_the_binary_route_has_its_tail_cut_back_into_readable_values() -> None:
    plan = _plan()
    columns, types = _target(plan)
    route = choose_route(plan, columns, types)
    tail = _field(struct.pack("!i", 7)) + _field(None) + _field("ünï".encode())
    shaped = pl.DataFrame({"name": ["BAD"], RAW_PREFIX: [tail]}, schema={"name": pl.String, RAW_PREFIX: pl.Binary})
    row = route.bad_row(shaped)
    assert row == {"id": 7, "name": "BAD", "amount": None, "note": "ünï"}
    assert list(row) == columns  # the target's column order


def test_a_bad_row_of_the_text_route_keeps_text_and_prints_decimals() -> None:
    route = TextRoute(_plan(), ["id", "amount"], {"id": "integer", "amount": "numeric"})
    df = pl.DataFrame({"id": ["1"], "amount": [Decimal("1.50")]})
    assert route.bad_row(df) == {"id": "1", "amount": "1.50"}
    assert route.encode(df.select("id")) == write_copy_text(df.select("id"))
