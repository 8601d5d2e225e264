"""Full load on real PostgreSQL: types round-trip, filters and transformations, upsert and SCD2,
hostile identifiers, bad rows, and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from trempy_nb.errors import RowError, SettingsError, ValidationFailed
from trempy_nb.task import Task

ALL_TYPES_SQL = """
CREATE SCHEMA src;
CREATE TABLE src.all_types (
  id integer PRIMARY KEY,
  i2 smallint, i8 bigint, num numeric, num2 numeric(12,2), f8 double precision, f4 real,
  t text, vc varchar(20), ch char(3), b boolean, d date, ts timestamp, tstz timestamptz,
  u uuid, j jsonb, js json, by bytea, arr integer[], tarr text[], iv interval, tm time
);
INSERT INTO src.all_types VALUES
 (1, 1, 9223372036854775807, 123456789012345678901234567890.123456789, 12.50, 0.1, 1.5,
  'quote '' and "dq" and tab	and
newline and back\\slash and \\N and ünïcødé ✓', 'short', 'ab', true, '2024-02-29', '2024-01-02 03:04:05.123456',
  '2024-01-02 03:04:05.123456+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, {"b": null}]}', '{"x":1}',
  '\\x00ff10', '{1,2,NULL}', '{"a b","c,d",NULL,"\\"q\\""}', '1 day 02:03:04', '23:59:59.999999'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, -32768, -1, -0.000001, -99.99, 'NaN', '-Infinity', '', '', '', false, '0001-01-01', '294276-12-31 23:59:59',
  'infinity', '00000000-0000-0000-0000-000000000000', '[]', '[]', '', '{}', '{}', '-1 mons', '00:00');
"""


def _exec(uri: str, text: str) -> None:
    with psycopg.connect(uri, autocommit=True) as c:
        c.execute(text)


def _rows(uri: str, query: str) -> list[tuple]:
    with psycopg.connect(uri, options="-c TimeZone=UTC") as c:
        return c.execute(query).fetchall()


def _settings(src: str, tgt: str, tables: list[tuple[str, str]], **task: object) -> dict:
    return {
        "task": {"task_name": "t_full", "source": src, "target": tgt, "replication_type": "full_load", **task},
        "tables": [{"schema_name": s, "table_name": t} for s, t in tables],
    }


def test_every_type_round_trips_exactly(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    _exec(source_uri, ALL_TYPES_SQL)
    result = Task.from_settings(_settings(source_uri, target_uri, [("src", "all_types")])).run(progress=False)
    assert result.tables[0].rows_written == 3
    assert result.tables[0].path == "passthrough"
    q = "SELECT * FROM src.all_types ORDER BY id"
    # compare the text form of every value: exact, including NaN/infinity/precision
    qt = "SELECT row_to_json(x)::text FROM (" + q + ") x"
    assert _rows(target_uri, qt) == _rows(source_uri, qt)
    types = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='all_types' ORDER BY ordinal_position"
    assert _rows(target_uri, types) == _rows(source_uri, types)


@pytest.mark.parametrize("reads_interval", [False, True])
def test_every_type_round_trips_through_the_pipeline(source_uri: str, target_uri: str, trempy_home: Path,
                                                     reads_interval: bool) -> None:
    """With a transformation the columns no step writes pass through as COPY binary, also those the
    plan reads as text (interval and time here, which have no encoder): exact either way."""
    _exec(source_uri, ALL_TYPES_SQL)
    doc = _settings(source_uri, target_uri, [("src", "all_types")])
    doc["transformations"] = [
        {"schema_name": "src", "table_name": "all_types", "priority": 2, "transformation_type": "create_column",
         "contract": {"operation": "literal", "new_column_name": "tag", "value": "x", "type": "text"}}
    ]
    if reads_interval:
        doc["transformations"].append(
            {"schema_name": "src", "table_name": "all_types", "priority": 2, "transformation_type": "create_column",
             "contract": {"operation": "concat", "new_column_name": "iv_text", "depends_on": ["iv", "tm"]}})
    result = Task.from_settings(doc).run(progress=False)
    assert result.tables[0].path == "pipeline"
    assert result.tables[0].copy_format == "binary"
    cols = "id, i2, i8, num, num2, f8, f4, t, vc, ch, b, d, ts, tstz, u, j, js, by, arr, tarr, iv, tm"
    qt = f"SELECT row_to_json(x)::text FROM (SELECT {cols} FROM src.all_types ORDER BY id) x"
    assert _rows(target_uri, qt) == _rows(source_uri, qt)
    assert _rows(target_uri, "SELECT DISTINCT tag FROM src.all_types") == [("x",)]


CODEC_SQL = """
CREATE SCHEMA src;
CREATE TABLE src.typed (
  id integer PRIMARY KEY, i2 smallint, i8 bigint, num numeric, num2 numeric(12,2), f8 double precision,
  t text, vc varchar(20), ch char(3), b boolean, d date, ts timestamp, tstz timestamptz, u uuid, j jsonb,
  js json, by bytea
);
INSERT INTO src.typed VALUES
 (1, 1, 9223372036854775807, 123456789012345678901234567890.123456789, 12.50, 0.1,
  E'quote \\' "dq" tab\\t nl\\n back\\\\slash ünïcødé', 'short', 'ab', true, '2024-02-29',
  '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a": [1, {"b": null}]}', '{"x":1}', '\\x00ff10'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, -32768, -1, 'NaN', -99.99, '-Infinity', '', '', '', false, '0044-03-15 BC', 'infinity', '-infinity',
  '00000000-0000-0000-0000-000000000000', '[]', '[]', '\\x'),
 (4, 0, 0, 0.000, 0, 1e300, ' x ', 'x', 'a', NULL, 'infinity', '0100-02-03 04:05:06.7', '12345-01-01 00:00+00',
  NULL, '"s"', 'null', NULL);
"""


@pytest.mark.parametrize("copy_format", ["binary", "text"])
def test_every_column_read_by_the_plan_round_trips_in_either_copy_format(
    source_uri: str, target_uri: str, trempy_home: Path, copy_format: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A concat over every column makes the plan read them all as text; the target gets them back in
    binary (encoded) or text, and every value, special ones and BC dates included, lands exactly."""
    import trempy_nb.fullload.routes as routes

    monkeypatch.setattr(routes, "COPY_FORMAT", copy_format)
    _exec(source_uri, CODEC_SQL)
    cols = ["id", "i2", "i8", "num", "num2", "f8", "t", "vc", "ch", "b", "d", "ts", "tstz", "u", "j", "js", "by"]
    doc = _settings(source_uri, target_uri, [("src", "typed")])
    doc["filters"] = [{"schema_name": "src", "table_name": "typed", "column_name": "id",
                       "filter_type": "less_than", "value": 100}]
    doc["transformations"] = [
        {"schema_name": "src", "table_name": "typed", "priority": 2, "transformation_type": "create_column",
         "contract": {"operation": "concat", "new_column_name": "everything", "depends_on": cols, "separator": "|"}}
    ]
    result = Task.from_settings(doc).run(progress=False)
    assert result.tables[0].copy_format == copy_format and result.tables[0].rows_written == 4
    q = f"SELECT x::text FROM (SELECT {', '.join(cols)} FROM src.typed ORDER BY id) x"
    assert _rows(target_uri, q) == _rows(source_uri, q)
    assert _rows(target_uri, "SELECT count(everything) FROM src.typed") == [(4,)]


EMP_SQL = """
CREATE SCHEMA employees;
CREATE TABLE employees.employee (
  id integer PRIMARY KEY, first_name text, last_name text, birth_date date, salary numeric(10,2),
  hired timestamptz, dept text
);
INSERT INTO employees.employee
SELECT i, 'first' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE ' last ' || i || ' ' END,
       DATE '1970-01-01' + i * 97, (i * 137 % 10000)::numeric / 1.0, TIMESTAMPTZ '2020-01-01 00:00+00' + i * INTERVAL '5 hours',
       (ARRAY['sales','eng','ops'])[1 + i % 3]
FROM generate_series(1, 3000) i;
"""


def test_filters_and_transformations_match_sql(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    _exec(source_uri, EMP_SQL)
    t = {"schema_name": "employees", "table_name": "employee"}
    doc = _settings(source_uri, target_uri, [("employees", "employee")])
    doc["filters"] = [
        {**t, "column_name": "salary", "filter_type": "greater_than", "value": 5000},
        {**t, "column_name": "dept", "filter_type": "in", "values": ["sales", "eng"]},
    ]
    doc["transformations"] = [
        {**t, "priority": 0, "transformation_type": "modify_table_name", "contract": {"target_table_name": "dim_employee"}},
        {**t, "priority": 0, "transformation_type": "modify_column_name",
         "contract": {"column_name": "dept", "new_column_name": "department"}},
        {**t, "priority": 1, "transformation_type": "modify_column_value", "contract": {"operation": "trim", "column_name": "last_name"}},
        {**t, "priority": 2, "transformation_type": "modify_column_value", "contract": {"operation": "uppercase", "column_name": "last_name"}},
        {**t, "priority": 3, "transformation_type": "create_column",
         "contract": {"operation": "math_expression", "new_column_name": "raise", "expression": "salary * 1.1 + 100"}},
    ]
    task = Task.from_settings(doc)
    preview = task.preview(limit=5)
    assert preview.height == 5 and "raise" in preview.columns and "department" in preview.columns
    result = task.run(progress=False)
    r = result.tables[0]
    expected = _rows(
        source_uri,
        "SELECT id, upper(trim(last_name)), dept, salary * 1.1 + 100 FROM employees.employee"
        " WHERE salary > 5000 AND dept IN ('sales','eng') ORDER BY id",
    )
    got = _rows(target_uri, "SELECT id, last_name, department, raise FROM employees.dim_employee ORDER BY id")
    assert got == expected
    assert r.rows_read == 3000 and r.rows_written == len(expected) and r.rows_filtered == 3000 - len(expected)


def test_numbers_read_as_values_compute_exactly(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    """A numeric(p,s) column only math_expression reads goes to the math as Decimal values, and a
    math result nothing else reads to the encoder as Decimal (no text in between: copylayout.typed,
    decimals), beside an integer a filter, concat and math read as text. All lands as SQL computes
    it: NULLs, negatives, zero and the ends of numeric(12,2) included."""
    _exec(source_uri, """
        CREATE SCHEMA acct;
        CREATE TABLE acct.ledger (id integer PRIMARY KEY, amt numeric(12,2), qty integer, memo text);
        INSERT INTO acct.ledger SELECT i, CASE WHEN i % 11 = 0 THEN NULL ELSE ((i * 7919) % 200001 - 100000) / 100.0 END,
               i % 5 - 2, 'm' || i FROM generate_series(1, 4000) i;
        INSERT INTO acct.ledger VALUES (5001, 9999999999.99, 3, 'top'), (5002, -9999999999.99, 3, 'bottom'),
               (5003, 0, 1, 'zero'), (5004, -0.01, 1, 'cent');
    """)
    t = {"schema_name": "acct", "table_name": "ledger"}
    doc = _settings(source_uri, target_uri, [("acct", "ledger")])
    doc["filters"] = [{**t, "column_name": "qty", "filter_type": "greater_than", "value": -2}]
    doc["transformations"] = [
        {**t, "priority": 1, "transformation_type": "modify_column_value", "contract": {"operation": "uppercase", "column_name": "memo"}},
        {**t, "priority": 2, "transformation_type": "create_column",
         "contract": {"operation": "math_expression", "new_column_name": "total", "expression": "amt * 3 - 1"}},
        {**t, "priority": 2, "transformation_type": "create_column",
         "contract": {"operation": "math_expression", "new_column_name": "scaled", "expression": "amt * qty / 7"}},
        {**t, "priority": 2, "transformation_type": "create_column",
         "contract": {"operation": "concat", "new_column_name": "label", "depends_on": ["memo", "qty"], "separator": "/"}},
    ]
    Task.from_settings(doc).run(progress=False)
    want = _rows(source_uri, "SELECT id, amt, upper(memo), amt * 3 - 1, concat_ws('/', upper(memo), qty), qty,"
                             " amt * qty / 7 FROM acct.ledger WHERE qty > -2 ORDER BY id")
    got = _rows(target_uri, "SELECT id, amt, memo, total, label, qty, scaled FROM acct.ledger ORDER BY id")
    assert len(got) == len(want) > 3000
    for g, w in zip(got, want, strict=True):
        assert g[:6] == w[:6], (g, w)
        assert (g[6] is None) == (w[6] is None) and (g[6] is None or abs(g[6] - w[6]) < Decimal("1e-12")), (g, w)


def test_scd2_full_load_opens_first_versions(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    _exec(source_uri, EMP_SQL)
    doc = _settings(source_uri, target_uri, [("employees", "employee")], cdc_settings={"mode": "scd2"})
    Task.from_settings(doc).run(progress=False)
    rows = _rows(target_uri, "SELECT count(*), count(*) FILTER (WHERE scd_current AND scd_end_date IS NULL"
                             " AND scd_start_date IS NOT NULL) FROM employees.employee")
    assert rows == [(3000, 3000)]
    # the unique partial index refuses a second current version of a key
    with pytest.raises(psycopg.errors.UniqueViolation), psycopg.connect(target_uri) as c:
        c.execute("INSERT INTO employees.employee (id, scd_current) VALUES (1, true)")
    # a second load without truncate adds versions only for changed keys
    _exec(source_uri, "UPDATE employees.employee SET salary = salary + 1 WHERE id <= 10")
    doc["task"]["full_load_settings"] = {"truncate_before_insert": False}
    Task.from_settings(doc).run(progress=False)
    assert _rows(target_uri, "SELECT count(*), count(*) FILTER (WHERE scd_current) FROM employees.employee") == [(3010, 3000)]
    assert _rows(target_uri, "SELECT count(*) FROM employees.employee WHERE id = 20") == [(1,)]
    assert _rows(target_uri, "SELECT count(*) FROM employees.employee WHERE id = 3") == [(2,)]


def test_upsert_without_truncate_merges(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    _exec(source_uri, EMP_SQL)
    doc = _settings(source_uri, target_uri, [("employees", "employee")])
    Task.from_settings(doc).run(progress=False)
    _exec(target_uri, "UPDATE employees.employee SET first_name = 'stale' WHERE id < 100")
    _exec(source_uri, "INSERT INTO employees.employee (id, first_name) VALUES (5000, 'new')")
    doc["task"]["full_load_settings"] = {"truncate_before_insert": False}
    Task.from_settings(doc).run(progress=False)
    assert _rows(target_uri, "SELECT count(*) FROM employees.employee WHERE first_name = 'stale'") == [(0,)]
    assert _rows(target_uri, "SELECT count(*) FROM employees.employee") == [(3001,)]


HOSTILE = ['we"ird; DROP TABLE canary;--', "Mixed Case Schema", "sp ace"]


def test_hostile_identifiers_are_quoted_and_canary_survives(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    schema, table, col = HOSTILE[1], HOSTILE[0], HOSTILE[2]
    with psycopg.connect(source_uri, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} text)").format(sql.Identifier(schema, table), sql.Identifier(col)))
        c.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b')").format(sql.Identifier(schema, table)))
    for uri in (source_uri, target_uri):
        _exec(uri, "CREATE TABLE public.canary (x int); INSERT INTO public.canary VALUES (42)")
    doc = _settings(source_uri, target_uri, [(schema, table)])
    doc["filters"] = [{"schema_name": schema, "table_name": table, "column_name": col, "filter_type": "equals", "value": "b"}]
    doc["transformations"] = [{"schema_name": schema, "table_name": table, "priority": 1,
                               "transformation_type": "modify_column_value",
                               "contract": {"operation": "uppercase", "column_name": col}}]
    Task.from_settings(doc).run(progress=False)
    with psycopg.connect(target_uri) as c:
        got = c.execute(sql.SQL("SELECT id, {} FROM {}").format(sql.Identifier(col), sql.Identifier(schema, table))).fetchall()
    assert got == [(2, "B")]
    for uri in (source_uri, target_uri):
        assert _rows(uri, "SELECT x FROM public.canary") == [(42,)]


def _bad_row_setup(source_uri: str, target_uri: str) -> dict:
    _exec(source_uri, EMP_SQL)
    _exec(target_uri, "CREATE SCHEMA employees; CREATE TABLE employees.employee (id integer PRIMARY KEY, first_name text,"
                      " last_name text, birth_date date, salary numeric(10,2) CHECK (salary <> 1370), hired timestamptz, dept text)")
    doc = _settings(source_uri, target_uri, [("employees", "employee")])
    doc["transformations"] = [{"schema_name": "employees", "table_name": "employee", "priority": 1,
                               "transformation_type": "modify_column_value",
                               "contract": {"operation": "uppercase", "column_name": "first_name"}}]
    return doc


def test_bad_row_is_isolated_and_recorded(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    doc = _bad_row_setup(source_uri, target_uri)
    bad = _rows(source_uri, "SELECT count(*) FROM employees.employee WHERE salary = 1370")[0][0]
    assert bad >= 1
    doc["error_handling"] = {"stop_if_insert_error": False}
    task = Task.from_settings(doc)
    result = task.run(progress=False)
    assert result.tables[0].rows_failed == bad
    assert _rows(target_uri, "SELECT count(*) FROM employees.employee") == [(3000 - bad,)]
    errors = task.errors()
    assert errors.height == bad and "check constraint" in errors["error"][0]
    # the bad row's payload reads as values, also for the columns that passed through in binary
    payload = json.loads(errors["payload"][0])
    assert payload["salary"] == "1370.00" and payload["first_name"] == payload["first_name"].upper()
    assert isinstance(payload["id"], int) and payload["hired"].endswith("+00")
    assert payload["birth_date"].count("-") == 2


def test_bad_row_with_decimal_values_is_recorded_readably(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    """A math input and result that travel as Decimal (copylayout.typed, decimals) still isolate a
    bad row and record it with the values as text."""
    _exec(source_uri, EMP_SQL)
    _exec(target_uri, "CREATE SCHEMA employees; CREATE TABLE employees.employee (id integer PRIMARY KEY, first_name text,"
                      " last_name text, birth_date date, salary numeric(10,2), hired timestamptz, dept text,"
                      " double numeric CHECK (double <> 2740))")
    doc = _settings(source_uri, target_uri, [("employees", "employee")], full_load_settings={"truncate_before_insert": True})
    doc["transformations"] = [{"schema_name": "employees", "table_name": "employee", "priority": 2,
                               "transformation_type": "create_column",
                               "contract": {"operation": "math_expression", "new_column_name": "double",
                                            "expression": "salary * 2"}}]
    doc["error_handling"] = {"stop_if_insert_error": False}
    bad = _rows(source_uri, "SELECT count(*) FROM employees.employee WHERE salary = 1370")[0][0]
    task = Task.from_settings(doc)
    assert task.run(progress=False).tables[0].rows_failed == bad >= 1
    assert _rows(target_uri, "SELECT count(*), sum(double) FROM employees.employee") == \
        _rows(source_uri, "SELECT count(*), sum(salary * 2) FROM employees.employee WHERE salary <> 1370")
    payload = json.loads(task.errors()["payload"][0])
    assert payload["double"] == "2740.00" and payload["salary"] == "1370.00"


def test_bad_row_stops_when_asked_and_writes_nothing(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    doc = _bad_row_setup(source_uri, target_uri)
    # no flag set: full-load rows are inserts, and the mode's flag decides (stop_if_upsert_error, default true)
    with pytest.raises(RowError, match=r"insert into employees.employee failed for key .*stop_if_upsert_error is true"):
        Task.from_settings(doc).run(progress=False)
    assert _rows(target_uri, "SELECT count(*) FROM employees.employee") == [(0,)]


def test_validation_errors_name_the_field(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    _exec(source_uri, EMP_SQL + "; CREATE TABLE employees.nokey (a int);")
    t = {"schema_name": "employees", "table_name": "employee"}
    doc = _settings(source_uri, target_uri, [("employees", "employee"), ("employees", "missing")])
    doc["filters"] = [{**t, "column_name": "first_name", "filter_type": "greater_than", "value": 3},
                      {**t, "column_name": "nope", "filter_type": "is_null"}]
    with pytest.raises(ValidationFailed) as err:
        Task.from_settings(doc).validate()
    text = str(err.value)
    assert "tables[1]" in text and "filters[0].filter_type" in text
    doc["filters"][0]["filter_type"] = "starts_with"
    doc["filters"][0]["value"] = "f"
    with pytest.raises(ValidationFailed, match=r"filters\[1\]\.column_name"):
        Task.from_settings(doc).validate()
    doc = _settings(source_uri, target_uri, [("employees", "nokey")], cdc_settings={"mode": "scd2"})
    with pytest.raises(ValidationFailed, match="primary key"):
        Task.from_settings(doc).validate()
    with pytest.raises(SettingsError, match=r"task\.replication_type"):
        Task.from_settings({**doc, "task": {**doc["task"], "replication_type": "everything"}})


def _cli(*args: str, env_home: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "TREMPY_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-m", "trempy_nb.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_exit_codes_and_no_password(source_uri: str, target_uri: str, trempy_home: Path, tmp_path: Path, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    _exec(source_uri, EMP_SQL)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_settings(source_uri, target_uri, [("employees", "employee")])))
    res = _cli("run", str(good), "-q", env_home=trempy_home)
    assert res.returncode == 0, res.stderr
    assert "3,000" in res.stdout
    res = _cli("validate", str(good), env_home=trempy_home)
    assert res.returncode == 0
    bad = tmp_path / "bad.json"
    doc = _settings(source_uri, target_uri, [("employees", "employee")])
    doc["filters"] = [{"schema_name": "employees", "table_name": "employee", "column_name": "salary",
                       "filter_type": "starts_with", "value": "1"}]
    bad.write_text(json.dumps(doc))
    res = _cli("run", str(bad), env_home=trempy_home)
    assert res.returncode == 2 and "filters[0]" in res.stderr and "Traceback" not in res.stderr
    wrong_pw = source_uri.replace(pg_cluster.password, "WrongPassw0rd")
    unreachable = tmp_path / "wrongpw.json"
    unreachable.write_text(json.dumps(_settings(wrong_pw, target_uri, [("employees", "employee")])))
    res = _cli("run", str(unreachable), env_home=trempy_home)
    assert res.returncode in (1, 2) and "WrongPassw0rd" not in res.stderr + res.stdout
    assert pg_cluster.password not in res.stderr + res.stdout
    res = _cli("schema", env_home=trempy_home)
    assert res.returncode == 0 and json.loads(res.stdout)["title"]


INDEXED_SQL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (id integer PRIMARY KEY, code text, v integer, note text);
INSERT INTO shop.items SELECT i, 'c' || i, i % 7, 'n' || i FROM generate_series(1, 500) i;
"""

TARGET_INDEXES_SQL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (id integer, code text, v integer, note text, parent_note text,
                         CONSTRAINT items_pk PRIMARY KEY (id) INCLUDE (v),
                         CONSTRAINT "items ""code""; uq" UNIQUE (code));
CREATE INDEX items_v_partial ON shop.items (v) WHERE v > 3;
CREATE INDEX items_lower_note ON shop.items (lower(note));
CREATE UNIQUE INDEX items_note_uq ON shop.items (note);
ALTER TABLE shop.items ADD FOREIGN KEY (parent_note) REFERENCES shop.items (note);
CREATE INDEX items_commented ON shop.items (v, id);
COMMENT ON INDEX shop.items_commented IS 'kept as it is';
CREATE INDEX items_clustered ON shop.items (code, v);
ALTER TABLE shop.items CLUSTER ON items_clustered;
INSERT INTO shop.items VALUES (9999, 'old', 1, 'old row', NULL);
"""

INDEX_CATALOG = """
SELECT ic.relname, ic.oid, pg_get_indexdef(i.indexrelid), pg_get_constraintdef(c.oid), i.indisclustered,
       obj_description(i.indexrelid, 'pg_class')
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype IN ('p', 'u')
WHERE i.indrelid = 'shop.items'::regclass ORDER BY 1
"""


def test_existing_target_gets_its_indexes_back_exactly(source_uri: str, target_uri: str, trempy_home: Path) -> None:
    """Into an existing table the load empties, the indexes it can rebuild exactly are set aside and
    rebuilt after the rows are in (one sort): same names and definitions, new relations; those it
    cannot (a foreign key's, a commented one, the CLUSTER index) stay in place untouched."""
    _exec(source_uri, INDEXED_SQL)
    _exec(target_uri, TARGET_INDEXES_SQL)
    before = {r[0]: r for r in _rows(target_uri, INDEX_CATALOG)}
    result = Task.from_settings(_settings(source_uri, target_uri, [("shop", "items")])).run(progress=False)
    assert result.tables[0].path == "passthrough" and result.tables[0].rows_written == 500
    after = {r[0]: r for r in _rows(target_uri, INDEX_CATALOG)}
    assert sorted(after) == sorted(before)
    for name, row in before.items():
        assert after[name][2:] == row[2:], name  # definition, constraint, CLUSTER mark, comment
    rebuilt = {n for n in before if after[n][1] != before[n][1]}
    assert rebuilt == {"items_pk", 'items "code"; uq', "items_v_partial", "items_lower_note"}
    assert _rows(target_uri, "SELECT count(*), min(id), max(id) FROM shop.items") == [(500, 1, 500)]
    with pytest.raises(psycopg.errors.UniqueViolation):  # the keys hold again
        _exec(target_uri, "INSERT INTO shop.items VALUES (1, 'new', 1, 'new', NULL)")


def test_a_rebuilt_index_that_finds_a_duplicate_falls_back_to_row_isolation(
        source_uri: str, target_uri: str, trempy_home: Path) -> None:
    """The target's unique index refuses a source duplicate only when rebuilt: the table is redone
    with its indexes in place, where the error policy records the row and the rest lands."""
    _exec(source_uri, INDEXED_SQL + "UPDATE shop.items SET code = 'c1' WHERE id = 2;")
    _exec(target_uri, "CREATE SCHEMA shop; CREATE TABLE shop.items (id integer PRIMARY KEY, code text UNIQUE,"
                      " v integer, note text)")
    doc = _settings(source_uri, target_uri, [("shop", "items")])
    doc["error_handling"] = {"stop_if_insert_error": False}
    task = Task.from_settings(doc)
    result = task.run(progress=False)
    assert result.tables[0].rows_failed == 1 and result.tables[0].rows_written == 499
    assert _rows(target_uri, "SELECT count(*) FROM shop.items") == [(499,)]
    assert "duplicate key" in task.errors()["error"][0]
    assert _rows(target_uri, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'shop'") == [(2,)]
