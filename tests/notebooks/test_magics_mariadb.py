"""%trempy against a MariaDB target (the machine's server, 127.0.0.1:3306) in a real IPython shell:
a saved mysql:// connection as the task's target, run, `%trempy history` of a key and `%trempy diff`
(a broken row found, repaired, then equal). In CI a missing server fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.maria_helpers import databases, q, require_server
from tests.notebooks.conftest import hr_settings
from tests.notebooks.test_magics import run
from trempy_nb.connections import save_connection
from trempy_nb.db import connect
from trempy_nb.writer.mariadb.names import execute, qualified


@pytest.fixture
def maria_dbs() -> Iterator[tuple[str, str, Any]]:
    """(state database, data database, admin connection), dropped after the test."""
    with databases(require_server()) as (new, admin):
        yield new("nst"), new("ndw", create=False), admin


def test_history_and_diff_magics_on_a_mariadb_target(shell: Any, hr: dict, maria_dbs: tuple[str, str, Any]) -> None:
    state, data, admin = maria_dbs
    save_connection("mdw", f"mysql://root@127.0.0.1:3306/{state}")
    doc = hr_settings("t_maria", "scd2")
    doc["task"]["target"] = "mdw"
    doc["task"]["replication_type"] = "full_load"
    doc["tables"] = [t for t in doc["tables"] if t["table_name"] == "employee"]
    doc["transformations"] = [t for t in doc["transformations"] if t["table_name"] == "employee"]
    for t in doc["transformations"]:
        if t["transformation_type"] == "modify_schema_name":
            t["contract"]["target_schema_name"] = data
    # MariaDB 10.11's UUID type refuses UUIDs of variant 0 (which the demo's md5-made badges are)
    with connect(hr["source"], autocommit=True) as conn:
        conn.execute("UPDATE employees.employee SET badge = gen_random_uuid()")
    run(shell, f"%%trempy task t_maria\n{yaml.safe_dump(doc, sort_keys=False)}")
    run(shell, "%config Trempy.headless = 'true'")
    result = run(shell, "%trempy run t_maria --wait --until-caught-up")
    assert "succeeded" in repr(result)
    table = qualified(data, "dim_employee")
    emp = int(q(admin, f"SELECT MIN(id) FROM {table}")[0][0])
    shell.user_ns["emp"] = emp
    hist = run(shell, "%trempy history t_maria dim_employee id={emp}")
    assert hist["id"].to_list() == [emp] and hist["scd_current"].to_list() == [1]

    assert run(shell, "%trempy diff t_maria").height == 0
    with admin.cursor() as cur:
        execute(cur, f"UPDATE {table} SET last_name = 'BROKEN' WHERE id = %s AND scd_current = 1", (emp,))
    admin.commit()
    found = run(shell, "%trempy diff t_maria")
    assert found["kind"].to_list() == ["different"] and found["columns"].to_list() == [["last_name"]]
    run(shell, "%trempy diff t_maria --repair")
    assert run(shell, "%trempy diff t_maria").height == 0
    hist = run(shell, "%trempy history t_maria dim_employee id={emp}")
    assert hist["last_name"].to_list()[0] == "BROKEN" and hist["scd_current"].to_list() == [0, 1]
