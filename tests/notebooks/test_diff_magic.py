"""`%trempy diff` in a real IPython shell against real PostgreSQL: the demo HR task (SCD2; one
table through the plan in Python, math and age having no SQL form, one hashed in SQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.notebooks.test_magics import define, run
from trempy_nb.db import connect


def test_diff_finds_repairs_and_confirms(shell: Any, hr: dict, capsys: pytest.CaptureFixture[str]) -> None:
    define(shell, "t_hr", mode="scd2")
    run(shell, "%config Trempy.headless = 'true'")
    run(shell, "%trempy run t_hr --wait --until-caught-up")
    assert run(shell, "%trempy diff t_hr").height == 0
    with connect(hr["target"], autocommit=True) as c:
        emp = c.execute("SELECT min(id) FROM dw.dim_employee WHERE scd_current").fetchone()[0]
        c.execute("UPDATE dw.dim_employee SET full_name = 'nobody' WHERE id = %s AND scd_current", (emp,))
    found = run(shell, "%trempy diff t_hr --table dw.dim_employee")
    assert [(json.loads(r["key"]), r["kind"], r["columns"]) for r in found.iter_rows(named=True)] == [
        ({"id": emp}, "different", ["full_name"])]
    run(shell, "%trempy diff t_hr --repair")
    assert run(shell, "%trempy diff t_hr").height == 0
    out = capsys.readouterr().out
    assert "repaired 1" in out and "equal" in out
    with connect(hr["target"]) as c:
        versions = c.execute("SELECT full_name, scd_current FROM dw.dim_employee WHERE id = %s"
                             " ORDER BY scd_start_date", (emp,)).fetchall()
    assert versions[-1][1] is True and versions[-1][0] != "nobody" and versions[-2] == ("nobody", False)
