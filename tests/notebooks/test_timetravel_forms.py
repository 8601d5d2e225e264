"""The notebook's second round, in a real IPython shell against a real PostgreSQL:
`%trempy as-of` / `changes` (bounded when shown, whole when assigned), the dashboard's
history pane, the connections form driven like a user (set values, click), errors
(known: one line; a bug: its traceback, masked), and the smaller verbs and options.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from traitlets import TraitError

from tests.notebooks.conftest import hr_settings, scan_for
from trempy_nb.connections import get_connection, list_connections, password_source, resolve
from trempy_nb.db import connect
from trempy_nb.notebook.magics import TrempyInternalError, TrempyMagicError


def run(ip: Any, code: str) -> Any:
    res = ip.run_cell(code, store_history=True)
    if res.error_before_exec is not None:
        raise res.error_before_exec
    if res.error_in_exec is not None:
        raise res.error_in_exec
    return res.result


def define(ip: Any, name: str = "t_hr", mode: str = "scd2", start_mode: str = "reload") -> None:
    doc = hr_settings(name, mode)
    doc["task"]["start_mode"] = start_mode
    body = yaml.safe_dump(doc, sort_keys=False)
    run(ip, f"%%trempy task {name}\n{body}")


def test_as_of_changes_magics_and_history_pane(
    shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    define(shell)
    run(shell, "%config Trempy.headless = 'true'")
    run(shell, "%trempy run t_hr --wait --until-caught-up")
    loaded = datetime.now(timezone.utc)
    time.sleep(0.05)
    # employees with salary > 5000 are in dim_employee; raise two of them, remove one
    with connect(hr["source"], autocommit=True) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM employees.employee WHERE salary > 5000 ORDER BY id LIMIT 3"
            )
        ]
        conn.execute(
            "UPDATE employees.employee SET salary = salary + 1 WHERE id = ANY(%s)", [ids[:2]]
        )
        conn.execute("DELETE FROM employees.employee_salary WHERE employee_id = %s", [ids[2]])
        conn.execute("DELETE FROM employees.employee WHERE id = %s", [ids[2]])
    define(shell, start_mode="continue")
    run(shell, "%trempy run t_hr --wait --until-caught-up")
    from trempy_nb.notebook import get_task

    task = get_task("t_hr")
    capsys.readouterr()

    full = task.as_of("now", "dim_employee")
    before = task.as_of(loaded, "dim_employee")
    assert full.height == before.height - 1 and ids[2] not in full["id"].to_list()

    # shown: bounded by displaylimit, with a caption saying so; assigned: everything
    run(shell, "%config Trempy.displaylimit = 5")
    shown = run(shell, "%trempy as-of t_hr now --table dim_employee")
    assert shown.height == 5
    assert "showing the first 5" in capsys.readouterr().out
    run(shell, "df = %trempy as-of t_hr now --table dim_employee")
    assert shell.user_ns["df"].equals(full)
    assert full["badge"].dtype == pl.String  # a uuid: its text, not a Python object
    shell.user_ns["when"] = loaded
    run(shell, "old = %trempy as-of t_hr {when} -t employees.employee")
    assert shell.user_ns["old"].equals(before)

    changed = run(shell, "%trempy changes t_hr --since {when} --table dim_employee")
    assert sorted(changed["id"].to_list()) == sorted(ids)
    ops = dict(zip(changed["id"].to_list(), changed["operation"].to_list(), strict=True))
    assert ops == {ids[0]: "update", ids[1]: "update", ids[2]: "delete"}
    upd = changed.filter(pl.col("id") == ids[0]).to_dicts()[0]
    assert "salary" in upd["changed_columns"] and upd["salary_after"] == upd["salary_before"] + 1
    assert run(shell, "%trempy changes t_hr --since -1h --until -59m -t dim_employee").height == 0
    # over a day: every row the full load brought is an insert (the deleted one came and went)
    day = run(shell, "all_day = %trempy changes t_hr --since=-1d -t dim_employee")
    assert day is None and shell.user_ns["all_day"].height == full.height
    assert set(shell.user_ns["all_day"]["operation"]) == {"insert"}

    # the history of one key: timestamps are datetime columns, a uuid its text
    shell.user_ns["key"] = ids[0]
    hist = run(shell, "%trempy history t_hr dim_employee id={key}")
    assert hist.schema["scd_start_date"] == pl.Datetime("us", "UTC")
    assert hist.schema["scd_end_date"] == pl.Datetime("us", "UTC")
    assert hist["scd_current"].to_list() == [False, True] and hist.schema["badge"] == pl.String

    # bad input: one line with the accepted forms
    with pytest.raises(TrempyMagicError, match=r"cannot read the time 'yesterday'.*-1d"):
        run(shell, "%trempy as-of t_hr yesterday")
    with pytest.raises(TrempyMagicError, match="required: --since"):
        run(shell, "%trempy changes t_hr")

    # the dashboard's history pane: a slider over the instants the table changed
    from trempy_nb.notebook.dashboard import Dashboard

    dash = Dashboard(task_runner(), use_widgets=True)
    dash.w["h_table"].value = "employees.employee"
    dash.load_history()
    stops = [v for _label, v in dash.w["h_time"].options]
    assert len(stops) >= 2 and stops == sorted(stops)
    dash.w["h_time"].value = stops[0]  # the full load
    assert "rows of employees.employee current at" in dash.w["h_rows"].value
    dash.w["h_time"].value = stops[-1]
    assert str(ids[2]) not in _cells(dash.w["h_rows"].value, 0)
    assert dash.w["stop"].disabled and dash.w["stop"].description == "finished"
    assert "<svg" in dash.w["plot"].value and "time (" in dash.w["plot"].value


def task_runner() -> Any:
    from trempy_nb.notebook.commands import SESSION

    return SESSION.runners["t_hr"]


def _cells(table_html: str, column: int) -> list[str]:
    import re

    rows = re.findall(r"<tr>(.*?)</tr>", table_html)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r)[column] for r in rows if "<td" in r]


def test_as_of_on_upsert_target_needs_scd2(shell: Any, hr: dict) -> None:
    define(shell, "t_up", "upsert")
    with pytest.raises(TrempyMagicError, match="as-of needs an SCD2 target: task t_up.*upsert"):
        run(shell, "%trempy as-of t_up now")
    with pytest.raises(TrempyMagicError, match="changes needs an SCD2 target"):
        run(shell, "%trempy changes t_up --since -1d")


def test_connections_form_add_test_edit_delete(
    shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from trempy_nb.notebook.builder import TaskBuilder
    from trempy_nb.notebook.connections_form import ConnectionsForm

    password = hr["password"]
    bare = hr["source"].replace(f":{password}@", "@")
    assert password not in bare
    form = run(shell, "%trempy connections --form")
    assert isinstance(form, ConnectionsForm)
    builder = TaskBuilder(name="t_form", source="hr", target="dw")
    assert "src2" not in [o for o in builder.w_source.options if isinstance(o, str)]

    # add: URI without password, password in its own field; tested first
    form.w_pick.value = ""
    form.w_name.value = "src2"
    form.w_uri.value = bare
    form.w_password.value = password
    form.b_save.click()
    assert "saved connection src2" in form.w_status.value, form.w_status.value
    assert "tested" in form.w_status.value and "PostgreSQL" in form.w_status.value
    assert form.w_password.value == ""  # never left in the widget
    assert password_source("src2") == "encrypted" and resolve("src2")  # usable
    assert "src2" in builder.w_source.options and "src2" in builder.w_target.options
    assert password not in form.w_list.value and "src2" in form.w_list.value

    # test: latency and server version
    form.w_pick.value = "src2"
    form.b_test.click()
    assert "connected in" in form.w_status.value and "PostgreSQL" in form.w_status.value

    # edit: another database, password field left empty keeps the saved one
    other = hr["target"].replace(f":{password}@", "@")
    form.w_uri.value = other
    form.b_save.click()
    assert "saved connection src2" in form.w_status.value, form.w_status.value
    assert get_connection("src2").database == get_connection("dw").database
    assert password_source("src2") == "encrypted"

    # a password typed into the URI is refused, and not left there
    form.w_uri.value = hr["source"]
    form.b_save.click()
    assert "password field" in form.w_status.value and password not in form.w_uri.value

    # a wrong password: the test fails in one masked line, nothing saved
    form.w_pick.value = ""
    form.w_name.value = "bad"
    form.w_uri.value = bare
    form.w_password.value = "not-the-password"
    form.b_save.click()
    assert "cannot connect" in form.w_status.value and "bad" not in list_connections()["name"]
    assert "not-the-password" not in form.w_status.value

    # delete asks first; cancel keeps it; confirm removes it and the builder follows
    form.w_pick.value = "src2"
    form.b_delete.click()
    assert form.w_confirm.layout.display == "flex"
    form.b_cancel.click()
    assert "src2" in list_connections()["name"]
    form.b_delete.click()
    form.b_confirm.click()
    assert "deleted connection src2" in form.w_status.value
    assert "src2" not in list_connections()["name"] and "src2" not in builder.w_source.options

    # nothing of the password in the form's widget state or its display
    from ipywidgets import Widget

    state = json.dumps(Widget.get_manager_state(drop_defaults=False), default=str)
    bundle = json.dumps(form._repr_mimebundle_(), default=str)
    assert password not in state and password not in bundle
    assert scan_for(password, hr["home"], texts=(capsys.readouterr().out,)) == []


def test_connect_inline_password_hint_and_delete_connection(
    shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, f"%trempy connect inl {hr['source']}")
    err = capsys.readouterr().err
    assert "hint: `%trempy connections`" in err and "${VAR}" in err
    assert hr["password"] not in err
    shell.user_ns["uri"] = hr["source"]
    run(shell, "%trempy connect viavar {uri}")
    assert "hint" not in capsys.readouterr().err
    assert "deleted connection inl" in repr(run(shell, "%trempy delete-connection inl"))
    with pytest.raises(TrempyMagicError, match="unknown connection 'inl'"):
        run(shell, "%trempy delete-connection inl")
    assert isinstance(run(shell, "%trempy connections"), pl.DataFrame)  # headless: the list


def test_known_errors_one_line_internal_errors_traceback_masked(shell: Any, hr: dict) -> None:
    res = shell.run_cell("%trempy validate missing_task", store_history=True)
    assert isinstance(res.error_in_exec, TrempyMagicError)
    assert len(res.error_in_exec._render_traceback_()) == 1

    # a bug inside a magic: its traceback is shown, with the password masked
    from trempy_nb.notebook import magics

    secret_uri = hr["source"]

    def broken(name: str) -> Any:
        raise KeyError(f"lost {secret_uri}")

    original = magics.cmd.validate
    magics.cmd.validate = broken
    try:
        res = shell.run_cell("%trempy validate t_any", store_history=True)
    finally:
        magics.cmd.validate = original
    err = res.error_in_exec
    assert isinstance(err, TrempyInternalError)
    text = "".join(err._render_traceback_())
    assert "Traceback (most recent call last)" in text and "KeyError" in text
    assert "in broken" in text and "please report" in text
    assert hr["password"] not in text + str(err)


def test_headless_is_a_validated_choice_and_dotenv_key(
    shell: Any, hr: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    magics = shell.magics_manager.registry["Trempy"]
    run(shell, "%config Trempy.headless = 'TRUE'")
    assert magics.headless == "true" and magics._is_headless()
    run(shell, "%config Trempy.headless = False")
    assert magics.headless == "false"
    with pytest.raises(TraitError):
        magics.headless = "sometimes"
    with pytest.raises(TraitError):
        magics.displaylimit = 0

    from trempy_nb.ai.assistant import resolve_config

    for v in ("TREMPY_AI_API_KEY", "DEEPSEEK_API_KEY", "OPENAI_API_KEY", "TREMPY_AI_MODEL"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.chdir(tmp_path)
    key = "sk-dotenv-" + "x" * 24
    (tmp_path / ".env").write_text(f"TREMPY_AI_API_KEY={key}\nTREMPY_AI_MODEL=from-dotenv\n")
    config = resolve_config()
    assert config.api_key == key and config.model == "from-dotenv"
    assert key not in repr(config)
    from trempy_nb.connections import mask

    assert key not in mask(f"oops {key}")
    monkeypatch.setenv("TREMPY_AI_MODEL", "from-env")  # the environment wins
    assert resolve_config().model == "from-env"


def test_replay_dead_letters_verb_needs_rabbitmq(shell: Any, hr: dict) -> None:
    define(shell, "t_local", "upsert")
    with pytest.raises(TrempyMagicError, match="replaying dead letters needs the rabbitmq"):
        run(shell, "%trempy replay-dead-letters t_local")


def test_builder_preselects_preview_table_and_proposes_a_path(hr: dict, tmp_path: Path) -> None:
    from trempy_nb.notebook.builder import TaskBuilder

    b = TaskBuilder(hr_settings("t_path"))
    assert b.w_preview_table.value == "employees.employee"  # the first chosen table
    assert b.w_path.value == "./t_path.json"
    b.w_name.value = "t_renamed"
    assert b.w_path.value == "./t_renamed.json"  # follows the name until typed over
    b.w_path.value = str(tmp_path / "mine.json")
    b.w_name.value = "t_again"
    assert b.w_path.value == str(tmp_path / "mine.json")
    b.w_tables.value = ("employees.employee_salary",)
    assert b.w_preview_table.value == "employees.employee_salary"
    assert TaskBuilder(hr_settings("t_dir"), settings_dir=tmp_path).w_path.value == str(
        tmp_path / "t_dir.json"
    )


def test_stats_table_is_clean_html() -> None:
    from trempy_nb.notebook.render import table_html

    frame = pl.DataFrame({"table": ["employees.employee"], "insert": [1234567], "rate": [1.5]})
    out = table_html(frame)
    assert "1,234,567" in out and "text-align:right" in out
    assert "&quot;" not in out and "i64" not in out and "str" not in out


def test_replay_dead_letters_verb_on_an_empty_rabbitmq_queue(shell: Any, hr: dict) -> None:
    import contextlib
    import uuid

    from tests.conftest import in_ci
    from trempy_nb.errors import ConnectionFailed
    from trempy_nb.transport import rabbitmq as rmq

    try:
        rmq.connect_blocking(rmq.broker_url()).close()
    except ConnectionFailed as exc:
        if in_ci():
            pytest.fail(f"RabbitMQ is required in CI: {exc}")
        pytest.skip(f"no RabbitMQ broker: {exc}")
    name = "nb_rmq_" + uuid.uuid4().hex[:8]
    doc = hr_settings(name, "upsert")
    doc["task"]["transport"] = "rabbitmq"
    run(shell, f"%%trempy task {name} --no-save\n{json.dumps(doc)}")
    try:
        note = run(shell, f"%trempy replay-dead-letters {name}")
        assert repr(note) == f"i no dead letters to replay for task {name}"
        assert run(shell, f"%trempy dead-letters {name}").height == 0
    finally:
        with contextlib.suppress(Exception):
            rmq.delete_topology(name)
