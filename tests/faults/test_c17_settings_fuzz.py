"""Case 17: settings fuzzing (hypothesis). Random documents, and mutations of a valid one (keys
dropped, values replaced by other types or junk, unknown keys, wrong enum values, hostile text),
never crash the validator: the only error is a SettingsError (exit code 2 class) naming a field,
and neither parsing nor live validation ever creates a slot or a publication."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.harness import fault_env, q
from tests.faults.report import RESULTS
from trempy_nb.errors import SettingsError
from trempy_nb.settings import parse_settings
from trempy_nb.task import Task

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "upsert",
            "scd2",
            "reload",
            "continue",
            "rabbitmq",
            "full_load",
            "'; DROP TABLE canary; --",
            "${NOPE_UNSET}",
            "é" * 70,
            "-1",
            "1e309",
            "employees",
            "between",
            "uppercase",
            "concat",
        ]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _base(task: str) -> dict[str, Any]:
    return {
        "task": {
            "task_name": task,
            "source": "${FAULT_SRC}",
            "target": "${FAULT_TGT}",
            "replication_type": "full_load_and_cdc",
            "start_mode": "reload",
            "transport": "local",
            "interval_seconds": 1.0,
            "cdc_settings": {"mode": "scd2"},
        },
        "error_handling": {"max_retries": 3},
        "tables": [{"schema_name": "public", "table_name": "emp"}],
        "filters": [
            {
                "schema_name": "public",
                "table_name": "emp",
                "column_name": "salary",
                "filter_type": "greater_than",
                "value": 10,
            }
        ],
        "transformations": [
            {
                "schema_name": "public",
                "table_name": "emp",
                "priority": 1,
                "transformation_type": "modify_column_value",
                "contract": {"operation": "uppercase", "column_name": "name"},
            },
            {
                "schema_name": "public",
                "table_name": "emp",
                "priority": 3,
                "transformation_type": "create_column",
                "contract": {
                    "operation": "math_expression",
                    "new_column_name": "x",
                    "expression": "salary * 2",
                },
            },
        ],
    }


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 4))):
        paths = [
            p for p in _paths(doc) if p and p[:2] not in (("task", "source"), ("task", "target"))
        ]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "delete", "add_key", "duplicate"]))
        if action == "replace":
            parent[path[-1]] = data.draw(JUNK)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add_key" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(JUNK)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return doc


@pytest.fixture(scope="module")
def fuzz_env(pg_pair):
    with fault_env(pg_pair, "fuzz") as env:
        q(
            env.src,
            "CREATE TABLE public.emp (id int PRIMARY KEY, name text, salary numeric, hired date)",
        )
        q(env.tgt, "CREATE TABLE public.canary (id int)")
        yield env


def _objects(env) -> tuple[int, int]:
    return (
        q(env.src, "SELECT count(*) FROM pg_replication_slots")[0][0],
        q(env.src, "SELECT count(*) FROM pg_publication")[0][0],
    )


def _validate(doc: Any) -> str:
    try:
        Task.from_settings(doc).validate()
    except SettingsError as exc:
        assert str(exc).strip(), "an empty validation message"
        return "refused"
    return "valid"


COUNT = {"n": 0, "refused": 0}
REFUSED: list[dict[str, Any]] = []


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def _fuzz_mutations(env, data) -> None:
    doc = _mutate(_base(env.task), data)
    verdict = _validate(doc)
    COUNT[verdict] = COUNT.get(verdict, 0) + 1
    COUNT["n"] += 1
    if verdict == "refused" and len(REFUSED) < 3 and isinstance(doc.get("task"), dict):
        REFUSED.append(doc)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    doc=st.recursive(
        JUNK,
        lambda c: st.one_of(
            st.lists(c, max_size=3),
            st.dictionaries(
                st.sampled_from(
                    [
                        "task",
                        "tables",
                        "filters",
                        "transformations",
                        "error_handling",
                        "task_name",
                        "source",
                        "cdc_settings",
                        "mode",
                        "contract",
                    ]
                ),
                c,
                max_size=4,
            ),
        ),
        max_leaves=12,
    )
)
def _fuzz_random(doc) -> None:
    try:
        parse_settings(doc if isinstance(doc, dict) else json.dumps(doc))
    except SettingsError:
        pass
    COUNT["n"] += 1


def test_c17_settings_fuzz(fuzz_env, monkeypatch):
    env = fuzz_env
    monkeypatch.setenv("FAULT_SRC", env.src)
    monkeypatch.setenv("FAULT_TGT", env.tgt)
    assert _validate(_base(env.task)) == "valid", "the base document must be valid"
    before = _objects(env)
    _fuzz_mutations(env)
    _fuzz_random()
    assert _objects(env) == before, "validation created a slot or a publication"
    RESULTS.fault("fuzzed settings documents", COUNT["n"])
    assert COUNT.get("refused", 0) > 0
    # a refused document given to `trempy-nb run`: exit code 2, one line, nothing created
    for doc in REFUSED:
        env.write(doc)
        r = env.start_runner("reload", until_caught_up=True)
        rc = r.wait(60)
        log = r.log()
        assert rc == 2 and "Traceback" not in log, log[-2000:]
    assert _objects(env) == before, "a refused run created a slot or a publication"
