"""Reconciliation into a MariaDB target, end to end: PostgreSQL source (a throwaway cluster), the
machine's MariaDB (127.0.0.1:3306). After a full load with filters (an OR group) and transformations
(renames, uppercase, concat, a literal), target rows are deliberately deleted, altered and added on
MariaDB; the diff must report exactly those keys with the right kinds and columns (values of every
mapped type: numeric scale, timestamps in UTC with microseconds, booleans, JSON, arrays), repair must
fix them (SCD2: history appended), and a second diff must be clean. Also while CDC streams, through
the CLI (exit codes, --json), and `history` of a repaired key. Chunks are small so narrowing runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import (
    drop_task,
    execute,
    rows,
    run_cli,
    settings,
    with_start_mode,
    write_settings,
)
from tests.maria_helpers import SERVER, q
from trempy_nb.metadata import MetadataStore
from trempy_nb.task import Task
from trempy_nb.writer.mariadb.names import execute as m_execute
from trempy_nb.writer.mariadb.names import qualified

N = 1500
CHUNK = 100

EMP_SQL = (
    "CREATE TABLE emp (id int PRIMARY KEY, first_name text, last_name text, salary numeric(10,2),"
    " dept text, hired date, active boolean, seen timestamptz, doc jsonb, tags text[], ratio float8)"
)
EMP_ROWS = (
    "INSERT INTO emp SELECT i, 'first' || i, 'last' || i, (i * 7 % 9000)::numeric / 1 + 0.25,"
    " (ARRAY['a','b','c'])[i % 3 + 1], date '2000-01-01' + i, i % 11 <> 0,"
    " timestamptz '2024-03-01 12:00:00+02' + i * interval '1.000001 second',"
    " jsonb_build_object('i', i, 'name', 'n' || i, 'list', jsonb_build_array(i, 'x')),"
    " ARRAY['t' || i, 'u \"q\"'], i / 7.0 FROM generate_series(1, {n}) i"
)
FILTERS = [  # active AND (dept = 'a' OR salary > 3000): an OR group
    {"schema_name": "public", "table_name": "emp", "column_name": "active", "filter_type": "equals", "value": True},
    {"schema_name": "public", "table_name": "emp", "column_name": "dept", "filter_type": "equals", "value": "a",
     "or_group": "dept_or_pay"},
    {"schema_name": "public", "table_name": "emp", "column_name": "salary", "filter_type": "greater_than",
     "value": 3000, "or_group": "dept_or_pay"},
]


def _t(priority: int, ttype: str, **contract: Any) -> dict[str, Any]:
    return {"schema_name": "public", "table_name": "emp", "priority": priority, "transformation_type": ttype,
            "contract": contract}


def transforms(data: str) -> list[dict[str, Any]]:
    return [
        _t(0, "modify_schema_name", target_schema_name=data),
        _t(0, "modify_table_name", target_table_name="dim_emp"),
        _t(0, "modify_column_name", column_name="last_name", new_column_name="surname"),
        _t(1, "modify_column_value", operation="uppercase", column_name="surname"),
        _t(2, "create_column", operation="concat", new_column_name="full_name",
           depends_on=["first_name", "surname", "active", "hired"], separator=" "),
        _t(3, "create_column", operation="literal", new_column_name="origin", value="hr", type="text"),
    ]


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "md" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def _doc(name: str, src: str, state: str, data: str, mode: str, rtype: str = "full_load") -> dict[str, Any]:
    return settings(name, src, f"{SERVER}/{state}", rtype=rtype, mode=mode, tables=[("public", "emp")],
                    filters=FILTERS, transformations=transforms(data))


def _loaded(src: str, state: str, data: str, name: str, mode: str, rtype: str = "full_load") -> Task:
    execute(src, EMP_SQL)
    execute(src, EMP_ROWS.format(n=N))
    execute(src, "ANALYZE emp")
    doc = _doc(name, src, state, data, mode, rtype)
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    return Task.from_settings(with_start_mode(doc, "continue"))


def _passing_keys(src: str, low: int, count: int) -> list[int]:
    got = rows(src, "SELECT id FROM emp WHERE active AND (dept = 'a' OR salary > 3000) AND id >= %s ORDER BY id"
               " LIMIT %s", (low, count))
    return [r[0] for r in got]


def _found(frame: Any) -> dict[int, tuple[str, tuple[str, ...]]]:
    return {json.loads(r["key"])["id"]: (r["kind"], tuple(sorted(r["columns"]))) for r in frame.iter_rows(named=True)}


def _m(admin: Any, text: str, params: tuple = ()) -> None:
    admin.commit()
    with admin.cursor() as cur:
        m_execute(cur, text, params)
    admin.commit()


def _break(admin: Any, src: str, data: str, mode: str, low: int = 500) -> dict[int, tuple[str, tuple[str, ...]]]:
    """Delete, alter and add MariaDB target rows; returns what the diff must report."""
    k = _passing_keys(src, low, 10)
    t = qualified(data, "dim_emp")
    cur = " AND scd_current = 1" if mode == "scd2" else ""
    extra_new = 900_001
    extra_filtered = rows(src, "SELECT id FROM emp WHERE NOT active ORDER BY id LIMIT 1")[0][0]
    _m(admin, f"DELETE FROM {t} WHERE id IN ({k[0]}, {k[1]}){cur}")
    _m(admin, f"UPDATE {t} SET surname = 'X' WHERE id = {k[2]}{cur}")
    _m(admin, f"UPDATE {t} SET salary = salary + 0.01, full_name = NULL WHERE id = {k[3]}{cur}")
    _m(admin, f"UPDATE {t} SET active = NOT active WHERE id = {k[4]}{cur}")
    _m(admin, f"UPDATE {t} SET seen = seen + INTERVAL 1 MICROSECOND WHERE id = {k[5]}{cur}")
    _m(admin, f"UPDATE {t} SET doc = JSON_SET(doc, '$.i', 0), tags = '[\"z\"]' WHERE id = {k[6]}{cur}")
    _m(admin, f"UPDATE {t} SET ratio = ratio * 2 WHERE id = {k[7]}{cur}")
    # the same JSON written in another form (key order, spacing) and the same value at another
    # scale are no difference
    _m(admin, f"UPDATE {t} SET doc = JSON_OBJECT('list', JSON_ARRAY({k[8]}, 'x'), 'name', 'n{k[8]}', 'i', {k[8]})"
              f" WHERE id = {k[8]}{cur}")
    start = ", scd_start_date" if mode == "scd2" else ""
    now = ", UTC_TIMESTAMP(6)" if mode == "scd2" else ""
    cols = "id, first_name, surname, salary, dept, hired, active, seen, doc, tags, ratio, full_name, origin"
    for key, active in ((extra_new, 1), (extra_filtered, 0)):  # the second: a key the filter keeps out
        _m(admin, f"INSERT INTO {t} ({cols}{start}) VALUES ({key}, 'f', 'S', 1, 'a', '2020-01-01', {active},"
                  f" '2020-01-01 00:00:00', '{{}}', '[]', 0.5, 'f S', 'hr'{now})")
    return {
        k[0]: ("missing", ()), k[1]: ("missing", ()),
        k[2]: ("different", ("surname",)),
        k[3]: ("different", ("full_name", "salary")),
        k[4]: ("different", ("active",)),
        k[5]: ("different", ("seen",)),
        k[6]: ("different", ("doc", "tags")),
        k[7]: ("different", ("ratio",)),
        extra_new: ("extra", ()), extra_filtered: ("extra", ()),
    }


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_diff_reports_exactly_the_broken_keys_and_repair_fixes_them(
    source_uri: str, trempy_home: Path, task_name: str, maria: tuple[str, str, Any], mode: str
) -> None:
    state, data, admin = maria
    task = _loaded(source_uri, state, data, task_name, mode)
    fresh = task.diff_tables(chunk_rows=CHUNK)  # freshly loaded: equal, and the canonical texts of
    assert fresh[0].equal and fresh[0].narrowed == 0  # both servers agree: no bucket differs
    assert fresh[0].source_rows == fresh[0].target_rows > 0
    expected = _break(admin, source_uri, data, mode)
    tables = task.diff_tables(chunk_rows=CHUNK)
    assert tables[0].route == "hash" and 0 < tables[0].narrowed < tables[0].buckets
    assert _found(task.diff(chunk_rows=CHUNK)) == expected

    fixed = task.diff(repair=True, chunk_rows=CHUNK)
    assert _found(fixed) == expected
    assert task.diff(chunk_rows=CHUNK).height == 0
    lines = MetadataStore().logs(task=task_name)["message"].to_list()
    assert any(f"diff repair of {data}.dim_emp: 10 key(s) fixed" in m for m in lines), lines

    altered = [k for k, (kind, _) in expected.items() if kind == "different"][0]
    hist = task.history(None, {"id": altered})  # what `%trempy history` shows
    if mode == "scd2":  # history appended: the altered key's old version is closed, not rewritten
        assert hist["surname"].to_list() == ["X", f"LAST{altered}"]
        assert hist["scd_current"].to_list() == [0, 1] and hist["scd_end_date"][0] is not None
        extra = q(admin, f"SELECT SUM(scd_current), COUNT(*) FROM {qualified(data, 'dim_emp')} WHERE id = 900001")
        assert [(int(a), int(b)) for a, b in extra] == [(0, 1)]  # the extra row is closed, kept as history
    else:
        assert hist["surname"].to_list() == [f"LAST{altered}"]
        assert q(admin, f"SELECT COUNT(*) FROM {qualified(data, 'dim_emp')} WHERE id = 900001") == [(0,)]


def test_plan_route_and_cli(
    source_uri: str, trempy_home: Path, task_name: str, maria: tuple[str, str, Any], tmp_path: Path
) -> None:
    """A transformation with no SQL form: every row is compared through the plan; the CLI's exit codes."""
    state, data, admin = maria
    execute(source_uri, EMP_SQL)
    execute(source_uri, EMP_ROWS.format(n=300))
    doc = _doc(task_name, source_uri, state, data, "upsert")
    doc["transformations"].append(_t(4, "create_column", operation="math_expression", new_column_name="bonus",
                                     expression="salary * 1.1 + id"))
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    path = write_settings(tmp_path / "task.json", with_start_mode(doc, "continue"))
    clean = run_cli(["diff", str(path), "--chunk-rows", "50"])
    assert clean.returncode == 0, clean.stderr
    assert "equal" in clean.stdout and "route" not in clean.stderr
    k = _passing_keys(source_uri, 100, 2)
    _m(admin, f"UPDATE {qualified(data, 'dim_emp')} SET bonus = bonus + 1 WHERE id = {k[0]}")
    _m(admin, f"DELETE FROM {qualified(data, 'dim_emp')} WHERE id = {k[1]}")
    tables = Task.from_settings(with_start_mode(doc, "continue")).diff_tables(chunk_rows=50)
    assert tables[0].route == "plan"
    found = run_cli(["diff", str(path), "--json", "--chunk-rows", "50"])
    assert found.returncode == 3, found.stderr
    got = {r["key"]["id"]: (r["kind"], r["columns"]) for r in json.loads(found.stdout)}
    assert got == {k[0]: ("different", ["bonus"]), k[1]: ("missing", [])}
    assert run_cli(["diff", str(path), "--repair", "--chunk-rows", "50"]).returncode == 0
    assert run_cli(["diff", str(path), "--chunk-rows", "50"]).returncode == 0


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_diff_while_cdc_streams(
    source_uri: str, trempy_home: Path, task_name: str, maria: tuple[str, str, Any], mode: str
) -> None:
    """A running task: the target is compared once it has caught up; only the broken keys are reported."""
    state, data, admin = maria
    task = _loaded(source_uri, state, data, task_name, mode, rtype="full_load_and_cdc")
    runner = task.start()
    try:
        for i in range(1, 200, 7):  # changes in flight while the diff runs
            execute(source_uri, "UPDATE emp SET first_name = first_name || '+' WHERE id = %s", (i,))
        assert task.diff(chunk_rows=CHUNK, wait=60).height == 0
        k = _passing_keys(source_uri, 700, 3)
        cur = " AND scd_current = 1" if mode == "scd2" else ""
        _m(admin, f"UPDATE {qualified(data, 'dim_emp')} SET origin = 'zz' WHERE id = {k[0]}{cur}")
        _m(admin, f"DELETE FROM {qualified(data, 'dim_emp')} WHERE id = {k[1]}{cur}")
        execute(source_uri, "UPDATE emp SET salary = salary + 1 WHERE id = %s", (k[2],))  # in flight
        assert _found(task.diff(chunk_rows=CHUNK, wait=60)) == {k[0]: ("different", ("origin",)),
                                                                 k[1]: ("missing", ())}
        task.diff(repair=True, chunk_rows=CHUNK, wait=60)
        assert task.diff(chunk_rows=CHUNK, wait=60).height == 0
    finally:
        runner.stop()


TYPES_SQL = (
    "CREATE TABLE typed (id bigint PRIMARY KEY, i2 smallint, n numeric(12,4), nu numeric, b boolean, d date,"
    " ts timestamp(6), tz timestamptz, tm time, u uuid, j json, jb jsonb, arr int[], tarr text[], by bytea,"
    " vc varchar(20), ch char(5), iv interval, t text)"
)
TYPES_ROWS = (
    "INSERT INTO typed SELECT i, (i % 300)::smallint, i * 1.5, (i / 3.0)::numeric(20,10) * 1000, i % 2 = 0,"
    " date '1999-12-31' + i, timestamp '2024-02-29 23:59:59.999999' + i * interval '1 minute',"
    " timestamptz '2000-01-01 00:00:00.000001-05' + i * interval '1 day 1 microsecond',"
    " time '00:00:00.5' + i * interval '1 second', gen_random_uuid(), json_build_object('k', i, 's', 'é \"x\"'),"
    " jsonb_build_object('z', i, 'a', array[1.50, 2]), array[i, NULL, -i], array['a,b', 'c\"d', NULL],"
    " decode(md5(i::text), 'hex'), 'v' || i, 'c' || (i % 10), i * interval '1 hour 3 minutes',"
    " CASE WHEN i % 5 = 0 THEN NULL WHEN i % 5 = 1 THEN '' ELSE 'tx ' || i || ' ' END"
    " FROM generate_series(1, {n}) i"
)


def test_every_mapped_type_hashes_alike_on_both_servers(
    source_uri: str, trempy_home: Path, task_name: str, maria: tuple[str, str, Any]
) -> None:
    """Freshly loaded, the two servers' canonical texts agree for every type the writer maps: no
    bucket is even suspect; a changed value of any type is found in its column."""
    state, data, admin = maria
    execute(source_uri, TYPES_SQL)
    execute(source_uri, TYPES_ROWS.format(n=600))
    doc = settings(task_name, source_uri, f"{SERVER}/{state}", rtype="full_load", tables=[("public", "typed")],
                   transformations=[{"schema_name": "public", "table_name": "typed", "priority": 0,
                                     "transformation_type": "modify_schema_name",
                                     "contract": {"target_schema_name": data}}])
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    task = Task.from_settings(with_start_mode(doc, "continue"))
    fresh = task.diff_tables(chunk_rows=CHUNK)
    assert fresh[0].equal and fresh[0].narrowed == 0 and fresh[0].source_rows == 600
    t = qualified(data, "typed")
    changes = {
        "n": "n = n + 0.0001", "nu": "nu = nu + 1", "b": "b = NOT b", "d": "d = d + INTERVAL 1 DAY",
        "ts": "ts = ts - INTERVAL 1 MICROSECOND", "tz": "tz = tz + INTERVAL 1 SECOND",
        "tm": "tm = ADDTIME(tm, '0:0:1')", "j": "j = '{\"k\": 0}'", "jb": "jb = JSON_SET(jb, '$.z', -1)",
        "arr": "arr = '[0]'", "tarr": "tarr = '[\"a\"]'", "by": "`by` = UNHEX('00')", "vc": "vc = 'other'",
        "ch": "ch = 'c0   '", "iv": "iv = '00:00:01'", "t": "t = CONCAT(IFNULL(t, ''), '.')", "i2": "i2 = -1",
    }
    expected = {}
    for n, (column, assignment) in enumerate(sorted(changes.items()), start=100):
        _m(admin, f"UPDATE {t} SET {assignment} WHERE id = {n}")
        expected[n] = ("different", (column,))
    _m(admin, f"UPDATE {t} SET u = UUID() WHERE id = 50")
    expected[50] = ("different", ("u",))
    assert _found(task.diff(chunk_rows=CHUNK)) == expected
    task.diff(repair=True, chunk_rows=CHUNK)
    again = task.diff_tables(chunk_rows=CHUNK)
    assert again[0].equal and again[0].narrowed == 0
