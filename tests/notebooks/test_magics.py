"""%trempy in a real IPython InteractiveShell (not mocked), against a real PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from tests.notebooks.conftest import hr_settings, scan_for
from trempy_nb.db import connect
from trempy_nb.notebook.magics import VERBS, Help, TrempyMagicError


def run(ip: Any, code: str) -> Any:
    """Run a cell like a notebook does; re-raise its error."""
    res = ip.run_cell(code, store_history=True)
    if res.error_before_exec is not None:
        raise res.error_before_exec
    if res.error_in_exec is not None:
        raise res.error_in_exec
    return res.result


def define(ip: Any, name: str = "t_hr", mode: str = "scd2") -> None:
    body = yaml.safe_dump(hr_settings(name, mode), sort_keys=False)
    run(ip, f"%%trempy task {name}\n{body}")


def test_help_bare_unknown_and_doc(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bare = run(shell, "%trempy")
    assert isinstance(bare, Help) and all(v in repr(bare) for v in VERBS)
    full = run(shell, "%trempy --help")
    assert "Examples:" in repr(full) and "<pre>" in full._repr_html_()
    assert run(shell, "%trempy preview --help") is None
    assert "--limit" in capsys.readouterr().out
    doc = shell.find_line_magic("trempy").__doc__
    assert "history" in doc and "Examples" in doc  # what %trempy? shows
    with pytest.raises(TrempyMagicError, match="unknown verb 'nope'; verbs: connect"):
        run(shell, "%trempy nope")
    with pytest.raises(TrempyMagicError, match="the following arguments are required: name"):
        run(shell, "%trempy preview")


def test_errors_are_one_line_raised_and_configurable(shell: Any, hr: dict) -> None:
    res = shell.run_cell("%trempy validate missing_task", store_history=True)
    err = res.error_in_exec
    assert isinstance(err, TrempyMagicError)
    lines = err._render_traceback_()
    assert len(lines) == 1 and "unknown task 'missing_task'" in lines[0]
    run(shell, "%config Trempy.short_errors = False")
    with pytest.raises(Exception) as info:
        run(shell, "%trempy validate missing_task")
    assert type(info.value).__name__ == "SettingsError"


def test_connections_tables_columns_masked(
    shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.user_ns["uri"] = hr["source"]
    note = run(shell, "%trempy connect hr2 {uri}")
    assert "***" in repr(note) and hr["password"] not in repr(note) + note._repr_html_()
    assert "warning" not in capsys.readouterr().err  # passed in a variable: no warning
    run(shell, f"%trempy connect hr3 {hr['source']}")
    err = capsys.readouterr().err
    assert "a password is written in this cell" in err and hr["password"] not in err
    run(shell, f"%trempy connect hr4 {hr['source']}")
    assert "password is written" not in capsys.readouterr().err  # once per session
    frame = run(shell, "%trempy connections")
    assert set(frame["name"]) >= {"hr", "dw", "hr2", "hr3"}
    assert hr["password"] not in str(frame.to_dicts())
    tables = run(shell, "%trempy tables hr employees")
    assert tables["table"].to_list() == ["department", "employee", "employee_salary"]
    cols = run(shell, "%trempy columns hr employee")
    row = cols.filter(pl.col("column") == "id").to_dicts()[0]
    assert row == {
        "column": "id",
        "type": "bigint",
        "category": "integer",
        "nullable": False,
        "primary_key": True,
    }
    with pytest.raises(TrempyMagicError, match="unknown connection 'nowhere'"):
        run(shell, "%trempy tables nowhere")


def test_task_cell_var_expansion_typed_and_validation(shell: Any, hr: dict) -> None:
    shell.user_ns["min_salary"] = 6000
    shell.user_ns["suffix"] = "x"
    doc = hr_settings("t_expand")
    body = yaml.safe_dump(doc, sort_keys=False).replace("value: 5000", "value: {min_salary}")
    body = body.replace(
        "target_table_name: dim_employee", "target_table_name: dim_employee_{suffix}"
    )
    note = run(shell, f"%%trempy task t_expand\n{body}")
    assert "t_expand ready" in repr(note)
    view = run(shell, "%trempy task t_expand")
    assert view.doc["filters"][0]["value"] == 6000  # typed, not text
    assert view.doc["transformations"][1]["contract"]["target_table_name"] == "dim_employee_x"
    assert "t_expand" in run(shell, "%trempy tasks")["task"].to_list()
    assert "valid" in repr(run(shell, "%trempy validate t_expand"))
    bad = json.loads(json.dumps(doc))
    bad["filters"][0]["column_name"] = "salry"
    with pytest.raises(TrempyMagicError, match=r"filters\[0\]"):
        run(shell, f"%%trempy task t_bad\n{json.dumps(bad)}")
    with pytest.raises(TrempyMagicError, match="cell is empty"):
        run(shell, "%%trempy task t_empty\n  \n")


def test_preview_limit_quiet_and_config(
    shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    define(shell)
    df = run(shell, "%trempy preview t_hr --limit 7")
    assert isinstance(df, pl.DataFrame) and df.height == 7
    assert "full_name" in df.columns and (df["salary"].cast(pl.Float64) > 5000).all()
    run(shell, "df = %trempy preview t_hr employees.employee_salary -n 3")
    assert shell.user_ns["df"].height == 3
    run(shell, "%config Trempy.preview_limit = 4")
    assert run(shell, "%trempy preview t_hr").height == 4
    capsys.readouterr()
    assert run(shell, "%trempy preview t_hr;") is None  # silenced, but kept in _
    assert shell.user_ns["_"].height == 4
    with pytest.raises(TrempyMagicError, match="not part of task t_hr"):
        run(shell, "%trempy preview t_hr nowhere")


def test_config_from_pyproject(
    shell: Any, hr: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.trempy_nb]\npreview_limit = 2\n")
    monkeypatch.chdir(tmp_path)
    shell.extension_manager.reload_extension("trempy_nb")
    cfg = run(shell, "%trempy config")
    assert ("preview_limit", "2") in cfg.rows and "pyproject.toml" in repr(cfg)
    define(shell)
    assert run(shell, "%trempy preview t_hr").height == 2


def test_run_wait_status_stats_history_drop(
    shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    define(shell)
    run(shell, "%config Trempy.headless = 'true'")
    result = run(shell, "%trempy run t_hr --wait --until-caught-up")
    assert "succeeded" in repr(result) and "<b>" in result._repr_html_()
    out = capsys.readouterr().out
    assert (
        "throughput" in out and "full load employees.employee" in out
    )  # figures as text at the end
    assert run(shell, "%trempy status")["status"].to_list() == ["succeeded"]
    assert "succeeded" in repr(run(shell, "%trempy status t_hr"))
    stats = run(shell, "%trempy stats t_hr")
    assert stats.filter(pl.col("table") == "employee_salary")["rows_written"].sum() == 500
    assert run(shell, "%trempy errors t_hr").height == 0
    assert run(shell, "%trempy dead-letters t_hr").height == 0
    assert run(shell, "%trempy runs t_hr")["status"].to_list() == ["succeeded"]
    assert isinstance(run(shell, "%trempy logs t_hr"), pl.DataFrame)
    shell.user_ns["emp"] = 2
    hist = run(shell, "%trempy history t_hr dim_employee id={emp}")
    assert hist["id"].to_list() == [2] and hist["scd_current"].to_list() == [True]
    with pytest.raises(TrempyMagicError, match="not COLUMN=VALUE"):
        run(shell, "%trempy history t_hr employees.employee 42")
    assert "dropped" in repr(run(shell, "%trempy drop t_hr"))
    with pytest.raises(TrempyMagicError, match="unknown task"):
        run(shell, "%trempy task t_hr")


def test_background_run_dashboard_cdc_history(shell: Any, hr: dict) -> None:
    define(shell)
    dash = run(shell, "%trempy run t_hr")
    assert dash.runner is not None and "task t_hr" in repr(dash) and "<div" in dash._repr_html_()
    deadline = time.monotonic() + 60
    while dash.runner.status != "streaming" and time.monotonic() < deadline:
        assert dash.runner.status != "failed", dash.runner.error
        time.sleep(0.1)
    with pytest.raises(TrempyMagicError, match="already running"):
        run(shell, "%trempy run t_hr")
    with connect(hr["source"], autocommit=True) as conn:
        conn.execute("UPDATE employees.employee SET salary = salary + 1000 WHERE id = 2")
    stopped = run(shell, "%trempy stop t_hr --when-caught-up")
    assert "changes applied: 1" in repr(stopped)
    hist = run(shell, "%trempy history t_hr employees.employee id=2")
    assert hist["scd_current"].to_list() == [False, True]
    dash.refresh(force_store=True)
    assert "changes applied" in dash.text() and "update" in dash.text()


def test_run_failure_raises_one_line(shell: Any, hr: dict, pg_cluster: Any) -> None:
    from trempy_nb.connections import save_connection

    save_connection("dw_gone", pg_cluster.uri("no_such_database"))
    doc = hr_settings("t_fail")
    doc["task"]["target"] = "dw_gone"
    run(shell, f"%%trempy task t_fail --no-save\n{json.dumps(doc)}")
    with pytest.raises(TrempyMagicError) as info:
        run(shell, "%trempy run t_fail --wait --until-caught-up")
    text = "".join(info.value._render_traceback_())
    assert "no_such_database" in text and "\n" not in str(info.value)
    assert hr["password"] not in text
    assert scan_for(hr["password"], hr["home"] / "metadata.sqlite3") == []


def test_plain_python_functions_need_no_ipython(hr: dict) -> None:
    from trempy_nb import notebook as nb

    task = nb.define_task(hr_settings("t_plain", "upsert"))
    assert nb.preview("t_plain", limit=3).height == 3
    result = nb.run("t_plain")
    assert result.status == "succeeded"
    assert nb.stats("t_plain").height >= 2
    assert task.name in nb.list_tasks()["task"].to_list()
    nb.drop("t_plain")
