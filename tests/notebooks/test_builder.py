"""The widget builder driven programmatically (set .value, .click()), against a real PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ipywidgets as W
import polars as pl
import pytest

from tests.notebooks.conftest import hr_settings
from trempy_nb.notebook.builder import TaskBuilder
from trempy_nb.notebook.commands import SESSION
from trempy_nb.settings import parse_settings


@pytest.fixture(autouse=True)
def _clean_session() -> Any:
    yield
    SESSION.clear()


def _rich_settings() -> dict[str, Any]:
    doc = hr_settings("t_form")
    doc["task"]["description"] = "form round trip"
    doc["error_handling"] = {"stop_if_delete_error": True, "max_retries": 7}
    doc["filters"] += [
        {
            "schema_name": "employees",
            "table_name": "employee",
            "column_name": "id",
            "filter_type": "in",
            "values": [1, 2, 3, 400],
        },
        {
            "schema_name": "employees",
            "table_name": "employee",
            "column_name": "hire_date",
            "filter_type": "date_between",
            "lower": "2005-01-01",
            "upper": "2030-01-01",
        },
        {
            "schema_name": "employees",
            "table_name": "employee",
            "column_name": "email",
            "filter_type": "is_not_null",
        },
        {
            "schema_name": "employees",
            "table_name": "employee_salary",
            "column_name": "salary",
            "filter_type": "between",
            "lower": 1000.5,
            "upper": "99999.99",
        },
    ]
    doc["transformations"] += [
        {
            "schema_name": "employees",
            "table_name": "employee",
            "priority": 4,
            "transformation_type": "create_column",
            "contract": {
                "operation": "literal",
                "new_column_name": "origin",
                "value": "hr",
                "type": "text",
            },
        },
        {
            "schema_name": "employees",
            "table_name": "employee",
            "priority": 2,
            "transformation_type": "modify_column_value",
            "contract": {
                "operation": "format_date",
                "column_name": "hire_date",
                "format": "%d/%m/%Y",
            },
        },
        {
            "schema_name": "employees",
            "table_name": "employee_salary",
            "priority": 4,
            "transformation_type": "create_column",
            "contract": {"operation": "datetime_now", "new_column_name": "loaded_at"},
        },
    ]
    return doc


def test_form_round_trips_settings_exactly(hr: dict) -> None:
    doc = _rich_settings()
    canonical = parse_settings(doc).to_dict()
    builder = TaskBuilder(doc)
    assert builder.settings == canonical
    assert builder.valid, builder.messages
    # and back: a second form from the first form's document
    assert TaskBuilder(builder.settings).settings == canonical


def test_edit_form_operators_follow_column_type(hr: dict) -> None:
    b = TaskBuilder(name="t_new", source="hr", target="dw")
    assert "employees.employee" in b.w_tables.options
    assert not b.valid  # no table yet
    b.w_tables.value = ("employees.employee",)
    assert b.valid, b.messages
    f = b.add_filter()
    f.column.value = "last_name"
    assert "starts_with" in f.op.options and "greater_than" not in f.op.options
    f.column.value = "salary"
    assert "greater_than" in f.op.options and "starts_with" not in f.op.options
    f.column.value = "hire_date"
    assert "date_between" in f.op.options
    f.op.value = "date_between"
    assert f.lower.layout.display == "" and f.value.layout.display == "none"
    f.column.value = "salary"
    f.op.value = "greater_than"
    f.value.value = "abc"
    assert not b.valid and any("filters[0]" in m for m in b.messages)  # shown as you edit
    f.value.value = "9000"
    assert b.valid, b.messages
    assert b.settings["filters"] == [
        {
            "schema_name": "employees",
            "table_name": "employee",
            "column_name": "salary",
            "filter_type": "greater_than",
            "value": 9000,
            "lower": None,
            "upper": None,
            "values": None,
        }
    ]
    t = b.add_transformation()
    t.kind.value = "create_column"
    assert list(t.priority.options) == [2, 3, 4]
    t.fields["operation"].value = "math_expression"
    t.fields["new_column_name"].value = "monthly"
    t.fields["expression"].value = "salary / 12"
    assert b.valid, b.messages
    assert b.settings["transformations"][0]["contract"] == {
        "new_column_name": "monthly",
        "operation": "math_expression",
        "expression": "salary / 12",
    }
    t.fields["expression"].value = "nosuchcol * 2"
    assert not b.valid and any("transformations[0]" in m for m in b.messages)
    t.remove.click()
    f.remove.click()
    assert b.settings["filters"] == [] and b.settings["transformations"] == [] and b.valid


def test_preview_save_run_buttons(hr: dict, tmp_path: Path) -> None:
    b = TaskBuilder(hr_settings("t_btn", "upsert"), settings_dir=tmp_path)
    b.w_limit.value = 6
    b.b_preview.click()
    data = b.out.outputs[-1]["data"]
    assert data["text/plain"].startswith("showing 6 of ~500 rows")
    assert "<table" in data["text/html"]
    b.b_save.click()
    saved = tmp_path / "t_btn.json"
    assert json.loads(saved.read_text()) == b.settings
    assert hr["password"] not in saved.read_text()
    assert "t_btn" in SESSION.tasks
    b.b_run.click()
    deadline = time.monotonic() + 60
    while b.runner.status != "streaming" and time.monotonic() < deadline:
        assert b.runner.status != "failed", b.runner.error
        time.sleep(0.1)
    bundle = b.out.outputs[-1]["data"]
    assert (
        "application/vnd.jupyter.widget-view+json" in bundle
        and "task t_btn" in bundle["text/plain"]
    )
    b.dashboard.refresh(force_store=True)
    assert "employees.employee" in b.dashboard.w["counts"].value or b.dashboard.progress()
    assert isinstance(b.dashboard.w["bars"]["employees.employee"][0], W.IntProgress)
    b.dashboard.request_stop()
    deadline = time.monotonic() + 30
    while b.runner.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b.runner.status in ("stopped", "succeeded")


def test_failures_become_messages_not_tracebacks(hr: dict) -> None:
    doc = hr_settings("t_msg")
    b = TaskBuilder(doc)
    b.w_name.value = "Bad Name"
    assert not b.valid and any("task.task_name" in m for m in b.messages)
    b.b_preview.click()
    assert "task_name" in b.out.outputs[-1]["data"]["text/plain"]


def test_no_password_in_widget_state(hr: dict) -> None:
    doc = hr_settings("t_secret")
    doc["task"]["source"] = hr["source"]  # a literal password URI
    b = TaskBuilder(doc)
    assert b.w_source.value == "t_secret-source"  # saved as a connection, encrypted
    state = json.dumps({k: w.get_state() for k, w in W.Widget.widgets.items()}, default=str)
    assert hr["password"] not in state
    assert hr["password"] not in repr(b) + b._repr_html_()
    assert b.valid, b.messages
    assert b.preview().height > 0


def test_dashboard_without_widgets_is_html_and_text(hr: dict) -> None:
    from trempy_nb.notebook import commands as cmd
    from trempy_nb.notebook.dashboard import Dashboard

    cmd.define_task(hr_settings("t_dash", "upsert"))
    result = cmd.run("t_dash")
    dash = Dashboard(cmd.SESSION.runners["t_dash"], use_widgets=False)
    bundle = dash._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "succeeded" in bundle["text/plain"] and "<progress" in bundle["text/html"]
    assert result.status == "succeeded"
    assert isinstance(dash.counts(), pl.DataFrame)


def _grouped_settings() -> dict[str, Any]:
    doc = hr_settings("t_groups", "upsert")
    emp = {"schema_name": "employees", "table_name": "employee"}
    doc["filters"] = [
        {**emp, "column_name": "department_id", "filter_type": "equals", "value": 10, "or_group": "dept_or_pay"},
        {**emp, "column_name": "hire_date", "filter_type": "is_not_null"},
        {**emp, "column_name": "salary", "filter_type": "greater_than", "value": 9000, "or_group": "dept_or_pay"},
        {**emp, "column_name": "email", "filter_type": "is_not_null", "or_group": "solo"},
    ]
    return doc


def test_or_groups_round_trip_through_the_form(hr: dict) -> None:
    doc = _grouped_settings()
    canonical = parse_settings(doc).to_dict()
    builder = TaskBuilder(doc)
    assert builder.settings == canonical
    assert [f.get("or_group") for f in builder.settings["filters"]] == ["dept_or_pay", None, "dept_or_pay", "solo"]
    assert builder.groups == ["dept_or_pay", "solo"]
    assert builder.valid, builder.messages
    assert TaskBuilder(builder.settings).settings == canonical
    assert "(department_id equals 10 OR salary greater_than 9000) AND hire_date is_not_null AND email" in (
        builder.w_logic.value
    )
    # the form's preview keeps exactly the rows of the grouped predicate
    rows = builder.task().validate().preview("employees.employee", limit=1000)
    assert rows.height > 0
    assert all(
        (r["department_id"] == 10 or (r["salary"] is not None and r["salary"] > 9000))
        and r["hire_date"] is not None and r["email"] is not None
        for r in rows.iter_rows(named=True)
    )


def test_add_a_group_and_move_filters_into_it_and_out(hr: dict) -> None:
    doc = hr_settings("t_move", "upsert")
    emp = {"schema_name": "employees", "table_name": "employee"}
    doc["filters"] = [
        {**emp, "column_name": "department_id", "filter_type": "equals", "value": 10},
        {**emp, "column_name": "salary", "filter_type": "greater_than", "value": 9000},
    ]
    b = TaskBuilder(doc)
    assert b.valid and "department_id equals 10 AND salary greater_than 9000" in b.w_logic.value
    # typed name + button, as a user does it
    b.w_group_name.value = "dept_or_pay"
    b.b_add_group.click()
    assert b.groups == ["dept_or_pay"] and b.w_group_name.value == ""
    assert ("dept_or_pay", "dept_or_pay") in b.filter_rows[1].group.options
    assert "or_group" not in b.settings["filters"][0]  # an empty group is not in the document
    b.filter_rows[0].group.value = "dept_or_pay"  # a group of one filter is accepted
    assert b.valid, b.messages
    assert b.settings["filters"][0]["or_group"] == "dept_or_pay"
    b.move_filter(1, "dept_or_pay")
    assert [f.get("or_group") for f in b.settings["filters"]] == ["dept_or_pay", "dept_or_pay"]
    assert "(department_id equals 10 OR salary greater_than 9000)" in b.w_logic.value
    # an unnamed group gets a free name; a filter added later can join it
    name = b.add_group()
    assert name == "group_1" and b.groups == ["dept_or_pay", "group_1"]
    f = b.add_filter({**emp, "column_name": "email", "filter_type": "is_null"})
    assert ("group_1", "group_1") in f.group.options
    b.move_filter(f, "group_1")
    b.move_filter(0, None)  # back among the ANDed filters
    assert [x.get("or_group") for x in b.settings["filters"]] == [None, "dept_or_pay", "group_1"]
    assert b.valid, b.messages
    assert TaskBuilder(b.settings).settings == b.settings
    # a duplicate name is a message, not a traceback
    b.w_group_name.value = "group_1"
    b.b_add_group.click()
    assert any("already exists" in m for m in b.messages)
