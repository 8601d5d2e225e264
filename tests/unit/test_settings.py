"""The settings contract: every name of docs/settings.md parses, bad documents fail with a field path."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema  # in the dev extras through nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trempy_nb.errors import SettingsError
from trempy_nb.settings import (
    CREATE_COLUMN_OPERATIONS,
    FILTER_TYPES,
    TRANSFORMATION_TYPES,
    TaskSettings,
    json_schema,
    parse_settings,
)

T = {"schema_name": "employees", "table_name": "employee"}
BASE: dict[str, Any] = {
    "task": {
        "task_name": "fl_cdc_scd2_employees",
        "description": "employees into a type-2 dimension",
        "source": "hr",
        "target": "dw",
        "replication_type": "full_load_and_cdc",
        "start_mode": "reload",
        "transport": "local",
        "interval_seconds": 1.0,
        "full_load_settings": {
            "create_table_if_not_exists": True,
            "recreate_table_if_exists": False,
            "truncate_before_insert": True,
        },
        "cdc_settings": {
            "mode": "scd2",
            "scd2_settings": {"start_date": "scd_start_date", "end_date": "scd_end_date", "current": "scd_current"},
        },
    },
    "error_handling": {
        "stop_if_insert_error": True,
        "stop_if_update_error": True,
        "stop_if_delete_error": False,
        "stop_if_upsert_error": True,
        "stop_if_scd2_error": True,
        "max_retries": 3,
    },
    "tables": [T],
    "filters": [{**T, "column_name": "salary", "filter_type": "greater_than", "value": 5000}],
    "transformations": [
        {**T, "priority": 0, "transformation_type": "modify_table_name", "contract": {"target_table_name": "dim_employee"}},
        {**T, "priority": 2, "transformation_type": "modify_column_value",
         "contract": {"operation": "uppercase", "column_name": "last_name"}},
        {**T, "priority": 3, "transformation_type": "create_column",
         "contract": {"operation": "concat", "new_column_name": "full_name",
                      "depends_on": ["first_name", "last_name"], "separator": " "}},
    ],
}

FILTER_INPUTS: dict[str, dict[str, Any]] = {
    **{f: {"value": 1} for f in ("equals", "not_equals", "greater_than", "greater_than_or_equal", "less_than", "less_than_or_equal")},
    **{f: {"lower": 1, "upper": 2} for f in ("between", "not_between")},
    **{f: {"value": "a"} for f in ("starts_with", "ends_with", "contains", "not_contains")},
    **{f: {"values": [1, 2]} for f in ("in", "not_in")},
    **{f: {} for f in ("is_null", "is_not_null")},
    "date_equals": {"value": "2024-01-01"},
    "date_between": {"lower": "2024-01-01", "upper": "2024-12-31"},
    "date_greater_than": {"value": "2024-01-01"},
    "date_less_than": {"value": "2024-01-01"},
}

TRANSFORMATIONS: dict[str, tuple[int, dict[str, Any]]] = {
    "modify_schema_name": (0, {"target_schema_name": "dw"}),
    "modify_table_name": (0, {"target_table_name": "t"}),
    "modify_column_name": (0, {"column_name": "a", "new_column_name": "b"}),
    "add_primary_key": (0, {"column_names": ["id"]}),
    "remove_primary_key": (0, {"column_names": ["id"]}),
    "modify_column_value": (1, {"operation": "format_date", "column_name": "d", "format": "%d/%m/%Y"}),
    "create_column": (4, {"operation": "literal", "new_column_name": "x", "value": None, "type": "integer"}),
}

CREATE_OPS: dict[str, dict[str, Any]] = {
    "concat": {"depends_on": ["a", "b"], "separator": "-"},
    "date_diff_years": {"depends_on": ["d"]},
    "math_expression": {"expression": "salary * 1.1 + bonus"},
    "literal": {"value": True, "type": "boolean"},
    "datetime_now": {},
}


def test_the_contract_example_parses() -> None:
    s = parse_settings(BASE)
    assert s.name == "fl_cdc_scd2_employees"
    assert [t.priority for _, t in s.transformations_for(("employees", "employee"))] == [0, 2, 3]
    assert TaskSettings.model_validate(s.to_dict()) == s  # round trip


@pytest.mark.parametrize("filter_type", FILTER_TYPES)
def test_every_filter_type(filter_type: str) -> None:
    assert set(FILTER_INPUTS) == set(FILTER_TYPES)
    doc = copy.deepcopy(BASE)
    doc["filters"] = [{**T, "column_name": "c", "filter_type": filter_type, **FILTER_INPUTS[filter_type]}]
    assert parse_settings(doc).filters[0].filter_type == filter_type


@pytest.mark.parametrize("kind", TRANSFORMATION_TYPES)
def test_every_transformation_type(kind: str) -> None:
    priority, contract = TRANSFORMATIONS[kind]
    doc = copy.deepcopy(BASE)
    doc["transformations"] = [{**T, "priority": priority, "transformation_type": kind, "contract": contract}]
    assert parse_settings(doc).transformations[0].contract == contract


@pytest.mark.parametrize("op", CREATE_COLUMN_OPERATIONS)
def test_every_create_column_operation(op: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["transformations"] = [{**T, "priority": 3, "transformation_type": "create_column",
                               "contract": {"operation": op, "new_column_name": "n", **CREATE_OPS[op]}}]
    assert parse_settings(doc).transformations[0].contract["operation"] == op


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["task"].update(replication_type="everything"), "task.replication_type"),
        (lambda d: d["task"].update(task_name="Bad-Name"), "task.task_name"),
        (lambda d: d["task"].update(interval_seconds=0), "task.interval_seconds"),
        (lambda d: d["task"].update(extra=1), "task.extra"),
        (lambda d: d["task"]["cdc_settings"].update(mode="mirror"), "task.cdc_settings.mode"),
        (lambda d: d["filters"][0].update(filter_type="between"), "filters[0]"),
        (lambda d: d["filters"][0].update(table_name="other"), "filters[0] names table"),
        (lambda d: d["transformations"][1].update(priority=0), "transformations[1]"),
        (lambda d: d["transformations"][0].update(priority=1), "transformations[0]"),
        (lambda d: d["transformations"][2]["contract"].update(depends_on="first_name"),
         "transformations[2].contract.depends_on"),
        (lambda d: d["transformations"][2]["contract"].update(operation="explode"), "transformations[2]"),
        (lambda d: d["error_handling"].update(max_retries=-1), "error_handling.max_retries"),
        (lambda d: d.update(tables=[]), "tables"),
        (lambda d: d.update(tables=[T, T]), "listed twice"),
    ],
)
def test_errors_name_the_field(mutate: Any, path: str) -> None:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    with pytest.raises(SettingsError) as err:
        parse_settings(doc)
    assert path in str(err.value)
    assert err.value.exit_code == 2


def test_json_and_yaml_text() -> None:
    assert parse_settings(json.dumps(BASE)).name == BASE["task"]["task_name"]
    with pytest.raises(SettingsError, match="neither valid JSON nor YAML|must be a JSON/YAML object"):
        parse_settings("{{{ not: [valid")


def test_json_schema_names_every_field() -> None:
    text = json.dumps(json_schema())
    for name in ("task_name", "replication_type", "scd2_settings", "stop_if_scd2_error", "filter_type", "contract"):
        assert name in text
    for value in FILTER_TYPES + TRANSFORMATION_TYPES:
        assert value in text


_PATH = re.compile(r'(^|; )(\(document\)|\[".*?"\]|[a-z_]+(\[\d+\]|\[".*?"\]|\.[A-Za-z_0-9]+)*)[: ]')
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), st.text(max_size=12))
docs = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=25)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    """The contract example with one random value replaced somewhere."""
    paths = [("task", k) for k in BASE["task"]] + [("error_handling", k) for k in BASE["error_handling"]] + [
        ("filters", 0, k) for k in BASE["filters"][0]] + [("transformations", 2, k) for k in BASE["transformations"][2]]

    @st.composite
    def build(draw: Any) -> dict[str, Any]:
        doc = copy.deepcopy(BASE)
        path = draw(st.sampled_from(paths))
        node: Any = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = draw(docs)
        return doc

    return build()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(docs, _mutations()))
def test_random_documents_validate_or_fail_with_a_path(doc: Any) -> None:
    try:
        parse_settings(doc if isinstance(doc, dict) else {"task": doc})
    except SettingsError as exc:
        assert _PATH.search(str(exc)), str(exc)


# -- OR groups -------------------------------------------------------------------------------


def _grouped_doc(*groups: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["filters"] = [
        {**T, "column_name": f"c{i}", "filter_type": "is_not_null", **({} if g is None else {"or_group": g})}
        for i, g in enumerate(groups)
    ]
    return doc


def test_or_group_is_optional_and_a_group_of_one_is_accepted() -> None:
    s = parse_settings(_grouped_doc(None, "dept_or_pay", "dept_or_pay", "solo"))
    assert [f.or_group for f in s.filters] == [None, "dept_or_pay", "dept_or_pay", "solo"]
    assert TaskSettings.model_validate(s.to_dict()) == s


def test_a_document_without_groups_dumps_as_before() -> None:
    dumped = parse_settings(BASE).to_dict()
    assert "or_group" not in dumped["filters"][0]
    assert set(dumped["filters"][0]) == {"schema_name", "table_name", "column_name", "filter_type",
                                         "value", "lower", "upper", "values"}  # fmt: skip
    assert parse_settings(_grouped_doc("g")).to_dict()["filters"][0]["or_group"] == "g"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "filters[2].or_group: an OR group needs a name"),
        ("   ", "filters[2].or_group: an OR group needs a name"),
        (" g", "filters[2].or_group: group name ' g' starts or ends with a space"),
        ("g" * 64, "filters[2].or_group: String should have at most 63 characters"),
        (7, "filters[2].or_group: Input should be a valid string"),
    ],
)
def test_bad_group_names_are_refused_with_the_field_path(name: Any, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(_grouped_doc(None, "g", name))
    assert str(err.value).startswith(message), str(err.value)


def test_json_schema_describes_or_group_with_an_example() -> None:
    field = json_schema()["$defs"]["FilterSpec"]["properties"]["or_group"]
    assert "combined with OR" in field["description"] and field["examples"] == ["dept_or_pay"]


@pytest.mark.parametrize("name", ["g", "dept or pay", "ünï", "", " g", "g ", "\t", None])
def test_json_schema_and_model_agree_on_group_names(name: Any) -> None:
    doc = _grouped_doc(name)
    try:
        parse_settings(doc)
        model_ok = True
    except SettingsError:
        model_ok = False
    schema_ok = jsonschema.Draft202012Validator(json_schema()).is_valid(doc)
    assert model_ok == schema_ok == (name is None or name == name.strip() != "")


def test_a_group_name_belongs_to_one_table() -> None:
    doc = _grouped_doc("g", "g")
    other = {"schema_name": "employees", "table_name": "department"}
    doc["tables"].append(other)
    doc["filters"].append({**other, "column_name": "name", "filter_type": "is_null", "or_group": "g"})
    with pytest.raises(SettingsError) as err:
        parse_settings(doc)
    assert str(err.value).startswith(
        "filters[2].or_group: group 'g' already holds filters[0] of table employees.employee"
    ), str(err.value)
    doc["filters"][2]["or_group"] = "g_dept"
    assert parse_settings(doc).filters[2].or_group == "g_dept"
