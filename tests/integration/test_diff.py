"""Reconciliation end to end on real PostgreSQL: after a full load with filters (an OR group) and
transformations (renames, uppercase, concat, a literal, a computed column), target rows are
deliberately deleted, altered and added; the diff must report exactly those keys with the right
kinds and columns, repair must fix them (SCD2: history appended, never rewritten), and a second
diff must be clean. The same while CDC streams under a concurrent writer. The CLI's exit codes
and --json shape, and bad input. Chunks are small so that narrowing is exercised.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import (
    connect,
    drop_task,
    execute,
    rows,
    run_cli,
    settings,
    with_start_mode,
    write_settings,
)
from trempy_nb.errors import SettingsError, TerminalError
from trempy_nb.metadata import MetadataStore
from trempy_nb.reconcile import run as reconcile_run
from trempy_nb.reconcile.chunks import frame
from trempy_nb.reconcile.run import TargetBehind
from trempy_nb.task import Task

N = 3000
CHUNK = 200

EMP_SQL = (
    "CREATE TABLE emp (id int PRIMARY KEY, first_name text, last_name text, salary numeric(10,2),"
    " dept text, hired date, active boolean)"
)
EMP_ROWS = (
    "INSERT INTO emp SELECT i, 'first' || i, 'last' || i, (i * 7 % 9000)::numeric / 1 + 0.25,"
    " (ARRAY['a','b','c'])[i % 3 + 1], date '2000-01-01' + i, i % 11 <> 0 FROM generate_series(1, {n}) i"
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


SQL_TRANSFORMS = [
    _t(0, "modify_table_name", target_table_name="dim_emp"),
    _t(0, "modify_column_name", column_name="last_name", new_column_name="surname"),
    _t(1, "modify_column_value", operation="uppercase", column_name="surname"),
    _t(2, "create_column", operation="concat", new_column_name="full_name",
       depends_on=["first_name", "surname", "active", "hired"], separator=" "),
    _t(3, "create_column", operation="literal", new_column_name="origin", value="hr", type="text"),
]
PLAN_TRANSFORMS = [  # no exact SQL form: the table is compared through the plan in Python
    _t(0, "modify_table_name", target_table_name="dim_emp"),
    _t(1, "modify_column_value", operation="format_date", column_name="hired", format="%d/%m/%Y"),
    _t(2, "create_column", operation="math_expression", new_column_name="bonus", expression="salary * 1.1 + id"),
]


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "d" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def _doc(name: str, src: str, tgt: str, mode: str, transforms: list[dict[str, Any]], rtype: str = "full_load"
         ) -> dict[str, Any]:
    return settings(name, src, tgt, rtype=rtype, mode=mode, tables=[("public", "emp")], filters=FILTERS,
                    transformations=transforms)


def _loaded(src: str, tgt: str, name: str, mode: str, transforms: list[dict[str, Any]], rtype: str = "full_load"
            ) -> Task:
    execute(src, EMP_SQL)
    execute(src, EMP_ROWS.format(n=N))
    execute(src, "ANALYZE emp")
    doc = _doc(name, src, tgt, mode, transforms, rtype)
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    return Task.from_settings(with_start_mode(doc, "continue"))


def _passing_keys(src: str, low: int, count: int) -> list[int]:
    got = rows(src, "SELECT id FROM emp WHERE active AND (dept = 'a' OR salary > 3000) AND id >= %s ORDER BY id"
               " LIMIT %s", (low, count))
    return [r[0] for r in got]


def _filtered_out_key(src: str) -> int:
    return rows(src, "SELECT id FROM emp WHERE NOT active ORDER BY id LIMIT 1")[0][0]


def _found(frame: Any) -> dict[int, tuple[str, tuple[str, ...]]]:
    return {json.loads(r["key"])["id"]: (r["kind"], tuple(sorted(r["columns"]))) for r in frame.iter_rows(named=True)}


def _break(tgt: str, src: str, mode: str, low: int = 1000) -> dict[int, tuple[str, tuple[str, ...]]]:
    """Delete, alter and add target rows; returns what the diff must report."""
    k = _passing_keys(src, low, 6)
    extra_new, extra_filtered = 900_001, _filtered_out_key(src)
    cur = " AND scd_current" if mode == "scd2" else ""
    execute(tgt, f"DELETE FROM dim_emp WHERE id IN ({k[0]}, {k[1]}){cur}")
    execute(tgt, f"UPDATE dim_emp SET surname = 'X' WHERE id = {k[2]}{cur}")
    execute(tgt, f"UPDATE dim_emp SET salary = salary + 1, full_name = NULL WHERE id = {k[3]}{cur}")
    execute(tgt, f"UPDATE dim_emp SET active = NOT active WHERE id = {k[4]}{cur}")
    cols = "id, first_name, surname, salary, dept, hired, active, full_name, origin"
    execute(tgt, f"INSERT INTO dim_emp ({cols}) VALUES ({extra_new}, 'f', 'S', 1, 'a', '2020-01-01', true, 'f S', 'hr')")
    execute(tgt, f"INSERT INTO dim_emp ({cols}) VALUES ({extra_filtered}, 'a', 'B', 1, 'a', '2001-01-01', false,"
                 " 'a B', 'hr')")  # a key the filter keeps out of the target
    return {
        k[0]: ("missing", ()), k[1]: ("missing", ()),
        k[2]: ("different", ("surname",)),
        k[3]: ("different", ("full_name", "salary")),
        k[4]: ("different", ("active",)),
        extra_new: ("extra", ()), extra_filtered: ("extra", ()),
    }


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_diff_reports_exactly_the_broken_keys_and_repair_fixes_them(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    task = _loaded(source_uri, target_uri, task_name, mode, SQL_TRANSFORMS)
    fresh = task.diff_tables(chunk_rows=CHUNK)  # freshly loaded: equal, and the SQL forms of the
    assert fresh[0].equal and fresh[0].narrowed == 0  # steps print what the plan wrote: no bucket differs
    expected = _break(target_uri, source_uri, mode)
    tables = task.diff_tables(chunk_rows=CHUNK)
    assert tables[0].route == "hash" and 0 < tables[0].narrowed < tables[0].buckets
    assert _found(task.diff(chunk_rows=CHUNK)) == expected

    fixed = task.diff(repair=True, chunk_rows=CHUNK)
    assert _found(fixed) == expected
    assert task.diff(chunk_rows=CHUNK).height == 0

    lines = MetadataStore().logs(task=task_name)["message"].to_list()
    assert any("diff repair of public.dim_emp: 7 key(s) fixed" in m for m in lines), lines
    if mode == "scd2":  # history appended: the altered key's old version is closed, not rewritten
        altered = [k for k, (kind, _) in expected.items() if kind == "different"][0]
        versions = rows(target_uri, "SELECT surname, scd_current, scd_end_date IS NULL FROM dim_emp WHERE id = %s"
                        " ORDER BY scd_start_date", (altered,))
        assert [v[1] for v in versions] == [False, True]
        extra = rows(target_uri, "SELECT count(*) FILTER (WHERE scd_current), count(*) FROM dim_emp WHERE id = 900001")
        assert extra == [(0, 1)]  # the extra row is closed, kept as history


def test_md5_fallback_finds_the_same_keys(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers that hash text differently (another byte order) are compared through md5."""
    monkeypatch.setattr(reconcile_run, "HASH", "md5")
    task = _loaded(source_uri, target_uri, task_name, "upsert", SQL_TRANSFORMS)
    assert task.diff(chunk_rows=CHUNK).height == 0
    expected = _break(target_uri, source_uri, "upsert")
    assert _found(task.diff(chunk_rows=CHUNK)) == expected


def test_plan_route_for_transformations_without_sql_form(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    task = _loaded(source_uri, target_uri, task_name, "upsert", PLAN_TRANSFORMS)
    assert task.diff(chunk_rows=CHUNK).height == 0
    k = _passing_keys(source_uri, 500, 3)
    execute(target_uri, f"UPDATE dim_emp SET hired = '01/01/1999' WHERE id = {k[0]}")
    execute(target_uri, f"UPDATE dim_emp SET bonus = bonus + 1 WHERE id = {k[1]}")
    execute(target_uri, f"DELETE FROM dim_emp WHERE id = {k[2]}")
    tables = task.diff_tables(chunk_rows=CHUNK)
    assert tables[0].route == "plan"
    assert _found(task.diff(chunk_rows=CHUNK)) == {
        k[0]: ("different", ("hired",)), k[1]: ("different", ("bonus",)), k[2]: ("missing", ())}
    task.diff(repair=True, chunk_rows=CHUNK)
    assert task.diff(chunk_rows=CHUNK).height == 0


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_no_false_differences_while_cdc_runs_under_a_writer(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str
) -> None:
    task = _loaded(source_uri, target_uri, task_name, mode, SQL_TRANSFORMS, rtype="full_load_and_cdc")
    runner = task.start()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:  # updates keys below 1000 only; the broken keys are above
        rng = random.Random(3)
        n = 0
        try:
            while not stop.is_set() and n < 5000:
                n += 1
                k = rng.randint(1, 999)
                execute(source_uri, f"UPDATE emp SET last_name = 'w{n}', salary = salary + 1 WHERE id = {k}")
                time.sleep(0.005)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    th = threading.Thread(target=writer)
    th.start()
    try:
        time.sleep(0.5)
        assert task.diff(chunk_rows=CHUNK, wait=30).height == 0
        expected = _break(target_uri, source_uri, mode, low=1500)
        tables = task.diff_tables(chunk_rows=CHUNK, wait=30)
        assert tables[0].streaming and tables[0].rounds >= 2  # the broken keys were checked again
        assert _found(frame(tables)) == expected
        task.diff(repair=True, chunk_rows=CHUNK, wait=30)
        assert task.diff(chunk_rows=CHUNK, wait=30).height == 0
    finally:
        stop.set()
        th.join()
        runner.stop_when_caught_up(timeout=60)
    assert not errors, errors
    assert task.diff(chunk_rows=CHUNK, wait=30).height == 0


def test_cli_exit_codes_json_and_bad_input(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, tmp_path: Path
) -> None:
    task = _loaded(source_uri, target_uri, task_name, "upsert", SQL_TRANSFORMS)
    path = write_settings(tmp_path / "task.json", task.settings.model_dump(mode="json", exclude_none=True))
    ok = run_cli(["diff", str(path), "--chunk-rows", str(CHUNK)])
    assert ok.returncode == 0, ok.stderr
    assert "equal" in ok.stdout
    key = _passing_keys(source_uri, 2000, 1)[0]
    execute(target_uri, f"UPDATE dim_emp SET origin = 'zz' WHERE id = {key}")
    found = run_cli(["diff", str(path), "--json", "--chunk-rows", str(CHUNK)])
    assert found.returncode == 3, found.stderr
    assert json.loads(found.stdout) == [
        {"table": "public.emp", "target": "public.dim_emp", "key": {"id": key}, "kind": "different",
         "columns": ["origin"]}]
    repaired = run_cli(["diff", str(path), "--repair", "--table", "public.emp", "--chunk-rows", str(CHUNK)])
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired 1" in repaired.stdout
    assert run_cli(["diff", str(path)]).returncode == 0
    MetadataStore().save_task(task_name, task.settings.model_dump(mode="json", exclude_none=True))
    execute(target_uri, f"DELETE FROM dim_emp WHERE id = {key}")
    by_name = run_cli(["diff", task_name, "--chunk-rows", str(CHUNK)])
    assert by_name.returncode == 3, by_name.stderr
    assert "1 difference(s): 1 missing" in by_name.stdout and "missing" in by_name.stdout.splitlines()[2]
    unknown = run_cli(["diff", "no_such_task"])
    assert unknown.returncode == 2 and "unknown task 'no_such_task'" in unknown.stderr

    bad = run_cli(["diff", str(path), "--table", "public.nope"])
    assert bad.returncode == 2
    assert "public.emp" in bad.stderr and "nope" in bad.stderr


def test_a_table_without_key_is_a_clear_error(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, EMP_SQL)
    doc = settings(task_name, source_uri, target_uri, rtype="full_load", tables=[("public", "emp")],
                   transformations=[_t(0, "remove_primary_key", column_names=["id"])])
    with pytest.raises(TerminalError, match="has no key: a diff compares rows by key"):
        Task.from_settings(doc).diff()
    with pytest.raises(SettingsError, match=r"not part of task .*public\.emp"):
        Task.from_settings(doc).diff(table="public.other")


def test_a_target_that_does_not_catch_up_is_reported_behind_not_different(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    """The task streams but cannot apply (its checkpoint row is locked by another session): the
    diff waits, then says the target is behind instead of reporting changes in flight."""
    task = _loaded(source_uri, target_uri, task_name, "upsert", SQL_TRANSFORMS, rtype="full_load_and_cdc")
    runner = task.start()
    try:
        assert task.diff(chunk_rows=CHUNK, wait=30).height == 0  # streaming and caught up
        with connect(target_uri, autocommit=False) as blocker:
            blocker.execute("SELECT 1 FROM trempy.checkpoints WHERE task = %s FOR UPDATE", (task_name,))
            execute(source_uri, "UPDATE emp SET last_name = 'late' WHERE id = 3")
            with pytest.raises(TargetBehind, match=r"target behind: task \w+'s checkpoint"):
                task.diff(chunk_rows=CHUNK, wait=2)
            blocker.rollback()
        assert task.diff(chunk_rows=CHUNK, wait=30).height == 0  # caught up again: no difference
    finally:
        runner.stop()


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_composite_text_key(source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str) -> None:
    """A key of a text and a date column: buckets from the key's hash, keys selected as a pair."""
    execute(source_uri, "CREATE TABLE sales (region text, day date, amount numeric, note text,"
                        " PRIMARY KEY (region, day))")
    execute(source_uri, "INSERT INTO sales SELECT r, date '2024-01-01' + i, i * 1.5, 'n' || i"
                        " FROM unnest(ARRAY['north', 'south', 'Ünïcode \"q\"']) r, generate_series(0, 399) i")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load", mode=mode, tables=[("public", "sales")])
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    task = Task.from_settings(doc)
    fresh = task.diff_tables(chunk_rows=CHUNK)
    assert fresh[0].equal and fresh[0].buckets > 1 and fresh[0].narrowed == 0
    cur = " AND scd_current" if mode == "scd2" else ""
    execute(target_uri, f"UPDATE sales SET note = 'x' WHERE region = 'Ünïcode \"q\"' AND day = '2024-01-05'{cur}")
    execute(target_uri, f"DELETE FROM sales WHERE region = 'north' AND day = '2024-02-01'{cur}")
    found = {(json.loads(r["key"])["region"], json.loads(r["key"])["day"]): (r["kind"], r["columns"])
             for r in task.diff(chunk_rows=CHUNK).iter_rows(named=True)}
    assert found == {('Ünïcode "q"', "2024-01-05"): ("different", ["note"]), ("north", "2024-02-01"): ("missing", [])}
    task.diff(repair=True, chunk_rows=CHUNK)
    assert task.diff(chunk_rows=CHUNK).height == 0
