"""`%trempy pause-table / resume-table / resync / table-states` in a real IPython shell against real
PostgreSQL: the demo HR task runs in this kernel, the magics record requests that its runner carries
out between batches, and the dashboard's per-table pane shows the states and the last diff."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.notebooks.test_magics import define, run
from trempy_nb.db import connect
from trempy_nb.engine import lifecycle as lc
from trempy_nb.notebook.commands import SESSION


def test_pause_resume_resync_and_table_states(shell: Any, hr: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "POLL_S", 0.2)
    define(shell, "t_hr", mode="upsert")
    run(shell, "%config Trempy.headless = 'true'")
    dash = run(shell, "%trempy run t_hr")
    runner = SESSION.runners["t_hr"]
    deadline = time.monotonic() + 120
    while runner.status != "streaming":
        assert runner.error is None and time.monotonic() < deadline, runner.error
        time.sleep(0.2)
    note = run(shell, "%trempy pause-table t_hr employees.employee")
    assert "paused" in repr(note)
    states = run(shell, "%trempy table-states t_hr")
    assert dict(zip(states["table"], states["state"], strict=True))["employees.employee"] == "paused"
    with connect(hr["source"], autocommit=True) as c:
        emp = c.execute("SELECT min(id) FROM employees.employee").fetchone()[0]
        c.execute("UPDATE employees.employee SET first_name = 'Paused' WHERE id = %s", (emp,))
    with connect(hr["target"], autocommit=True) as c:
        while not c.execute("SELECT count(*) FROM trempy.held_changes").fetchone()[0]:
            assert time.monotonic() < deadline + 60, "the change was not held"
            time.sleep(0.2)
    dash.refresh(force_store=True)
    assert "paused" in dash.text() and "employees.employee" in dash.html()
    panel = run(shell, "%trempy dashboard t_hr")  # the task panel shows the per-table pane too
    assert "paused" in panel.tables.text() and "trempy-tables" in panel.html()
    note = run(shell, "%trempy resume-table t_hr employees.employee")
    assert "resumed" in repr(note) and "1 held change(s)" in repr(note)
    assert "resynced" in repr(run(shell, "%trempy resync t_hr employees.employee_salary"))
    run(shell, "%trempy stop t_hr --when-caught-up")
    assert run(shell, "%trempy diff t_hr").height == 0
    states = run(shell, "%trempy table-states t_hr")
    assert set(states["state"]) == {"streaming"} and set(states["last_diff"]) == {"equal"}
    panel = run(shell, "%trempy dashboard t_hr")
    assert set(panel.tables.frame["state"]) == {"streaming"} and "equal" in panel.tables.text()
