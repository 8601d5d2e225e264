"""`trempy-nb demo`: a sample HR database replicated end to end on an embedded PostgreSQL.

Starts a throwaway cluster (system binaries, else the pgserver wheel), builds
an `employees` schema with a few hundred thousand rows, runs a full load with
filters and transformations followed by change data capture into an SCD2
dimension, writes updates and deletes at the source, catches up, and prints
what landed, including a few keys' version histories.
"""

from __future__ import annotations

import os
import time

import polars as pl
from psycopg import sql

from trempy_nb.db import connect
from trempy_nb.embedded import start_cluster

SCHEMA_SQL = """
CREATE SCHEMA employees;
CREATE TABLE employees.department (
    id integer PRIMARY KEY, name text NOT NULL, budget numeric(14,2)
);
CREATE TABLE employees.employee (
    id bigint PRIMARY KEY,
    first_name text NOT NULL,
    last_name text NOT NULL,
    email text,
    birth_date date,
    hire_date timestamp,
    salary numeric(12,2),
    department_id integer REFERENCES employees.department(id),
    active boolean NOT NULL DEFAULT true,
    badge uuid,
    profile jsonb
);
CREATE TABLE employees.employee_salary (
    id bigint PRIMARY KEY,
    employee_id bigint NOT NULL,
    salary numeric(12,2) NOT NULL,
    from_date date NOT NULL
);
INSERT INTO employees.department
SELECT d, (ARRAY['Sales','Engineering','Finance','People','Support','Legal','Ops','Research'])[1 + d % 8] || ' ' || d,
       (50000 + d * 1234.5)::numeric(14,2)
FROM generate_series(1, 40) d;
INSERT INTO employees.employee
SELECT i,
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken','Margaret','Niklaus','Zoë','José'])[1 + i % 12],
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson','Hamilton','Wirth','O''Brien','Müller'])[1 + (i / 12) % 12],
       'user' || i || '@example.com',
       DATE '1960-01-01' + (i * 37 % 14000),
       TIMESTAMP '2005-01-01 09:00' + (i % 6000) * INTERVAL '1 day' + (i % 480) * INTERVAL '1 minute',
       (2500 + (i::bigint * 7919 % 9500))::numeric(12,2),
       1 + i % 40,
       i % 17 <> 0,
       md5(i::text)::uuid,
       jsonb_build_object('level', i % 5, 'skills', jsonb_build_array('sql', 'python'))
FROM generate_series(1, %(rows)s) i;
INSERT INTO employees.employee_salary
SELECT i, 1 + i % %(rows)s, (2500 + (i::bigint * 104729 % 9500))::numeric(12,2), DATE '2015-01-01' + (i % 3000)
FROM generate_series(1, %(rows)s) i;
ANALYZE;
"""


def demo_settings(rows_hint: int) -> dict:
    """The demo task: employees filtered and transformed into an SCD2 dimension, salaries mirrored."""
    return {
        "task": {
            "task_name": "demo_hr",
            "description": "employees into a type-2 dimension, salaries mirrored",
            "source": "${TREMPY_DEMO_SOURCE}",
            "target": "${TREMPY_DEMO_TARGET}",
            "replication_type": "full_load_and_cdc",
            "start_mode": "reload",
            "transport": "local",
            "interval_seconds": 0.2,
            "full_load_settings": {
                "create_table_if_not_exists": True,
                "recreate_table_if_exists": True,
                "truncate_before_insert": True,
            },
            "cdc_settings": {"mode": "scd2"},
        },
        "tables": [
            {"schema_name": "employees", "table_name": "employee"},
            {"schema_name": "employees", "table_name": "employee_salary"},
        ],
        "filters": [
            {"schema_name": "employees", "table_name": "employee", "column_name": "salary",
             "filter_type": "greater_than", "value": 5000},
        ],
        "transformations": [
            {"schema_name": "employees", "table_name": "employee", "priority": 0,
             "transformation_type": "modify_schema_name", "contract": {"target_schema_name": "dw"}},
            {"schema_name": "employees", "table_name": "employee", "priority": 0,
             "transformation_type": "modify_table_name", "contract": {"target_table_name": "dim_employee"}},
            {"schema_name": "employees", "table_name": "employee", "priority": 1,
             "transformation_type": "modify_column_value",
             "contract": {"operation": "uppercase", "column_name": "last_name"}},
            {"schema_name": "employees", "table_name": "employee", "priority": 2,
             "transformation_type": "create_column",
             "contract": {"operation": "concat", "new_column_name": "full_name",
                          "depends_on": ["first_name", "last_name"], "separator": " "}},
            {"schema_name": "employees", "table_name": "employee", "priority": 3,
             "transformation_type": "create_column",
             "contract": {"operation": "math_expression", "new_column_name": "yearly_cost",
                          "expression": "salary * 12 * 1.2"}},
            {"schema_name": "employees", "table_name": "employee", "priority": 3,
             "transformation_type": "create_column",
             "contract": {"operation": "date_diff_years", "new_column_name": "age",
                          "depends_on": ["birth_date"]}},
            {"schema_name": "employees", "table_name": "employee_salary", "priority": 0,
             "transformation_type": "modify_schema_name", "contract": {"target_schema_name": "dw"}},
        ],
    }


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(rows: int = 300_000, keep: bool = False) -> int:
    from trempy_nb.task import Task

    t0 = time.perf_counter()
    _say("1/6 starting an embedded PostgreSQL (wal_level=logical) ...")
    cluster = start_cluster()
    try:
        src_uri = cluster.create_database("hr")
        tgt_uri = cluster.create_database("dw")
        os.environ["TREMPY_DEMO_SOURCE"] = src_uri
        os.environ["TREMPY_DEMO_TARGET"] = tgt_uri
        _say(f"    PostgreSQL on 127.0.0.1:{cluster.port} (databases hr -> dw), binaries {cluster.bindir}")

        _say(f"2/6 creating the sample HR schema: 40 departments, {rows:,} employees, {rows:,} salaries ...")
        with connect(src_uri, autocommit=True) as conn:
            conn.execute(sql.SQL(SCHEMA_SQL.replace("%(rows)s", str(int(rows)))))

        task = Task.from_settings(demo_settings(rows))
        task.validate()
        _say("3/6 preview of what will land in dw.dim_employee (filter salary > 5000, 6 transformations):")
        with pl.Config(tbl_cols=8, tbl_rows=5, fmt_str_lengths=24):
            _say(str(task.preview(limit=5).select(["id", "full_name", "last_name", "salary", "yearly_cost", "age"])))

        _say("4/6 full load (one exported snapshot) then change capture into SCD2 ...")
        runner = task.start(progress=True)
        _wait_streaming(runner)

        _say("5/6 writing changes at the source: raises, renames, moves out of the filter, deletes ...")
        with connect(src_uri, autocommit=True) as conn:
            for i in range(1, 6):
                conn.execute("UPDATE employees.employee SET salary = salary + 1000 WHERE id %% 1000 = %s", (i,))
            conn.execute("UPDATE employees.employee SET last_name = 'Renamed' WHERE id IN (1001, 2001, 3001)")
            conn.execute("UPDATE employees.employee SET salary = 100 WHERE id IN (1002, 2002)")
            conn.execute("DELETE FROM employees.employee_salary WHERE id % 1000 = 7")
            conn.execute("DELETE FROM employees.employee WHERE id IN (1003, 2003)")
        result = runner.stop_when_caught_up() if hasattr(runner, "stop_when_caught_up") else _catch_up(runner)
        _say(str(result))

        _say("6/6 version history of a few keys in dw.dim_employee:")
        with connect(tgt_uri) as conn:
            hist = pl.DataFrame(
                conn.execute(
                    "SELECT id, full_name, salary, scd_start_date, scd_end_date, scd_current"
                    " FROM dw.dim_employee WHERE id IN (1001, 1002, 1003, 2001) ORDER BY id, scd_start_date"
                ).fetchall(),
                schema=["id", "full_name", "salary", "scd_start_date", "scd_end_date", "scd_current"],
                orient="row",
            ).with_columns(
                pl.col("scd_start_date", "scd_end_date").dt.strftime("%Y-%m-%d %H:%M:%S%.3f")
            )
            counts = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE scd_current) FROM dw.dim_employee"
            ).fetchone()
        with pl.Config(tbl_rows=20, tbl_cols=6, fmt_str_lengths=30, tbl_width_chars=120):
            _say(str(hist))
        _say(f"dw.dim_employee: {counts[0]:,} versions, {counts[1]:,} current")
        _say(f"done in {time.perf_counter() - t0:.1f}s")
        if keep:
            _say(f"cluster kept running on port {cluster.port}; data in {cluster.datadir}")
        return 0
    finally:
        if not keep:
            cluster.destroy()


def _wait_streaming(runner, timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    """Block until the full load is over and the runner is reading the change stream."""
    deadline = time.monotonic() + timeout
    while runner.status not in ("streaming", "failed", "succeeded"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if runner.status == "failed":
        runner.wait()


def _catch_up(runner):  # type: ignore[no-untyped-def]
    runner.until_caught_up = True
    return runner.wait()
