"""The one error policy end to end on real PostgreSQL: each stop_if_* flag alone, for every
operation and both modes, in CDC and in the full load; terminal errors; the records kept.

A real target constraint rejects exactly one change: a CHECK (v >= 0) rejects an insert or an
update, a foreign key from another table (upsert) or a CHECK on the closing of a version (SCD2)
rejects a delete. With the deciding flag off the change is recorded (operation, table, key,
payload, error) and skipped and the rest lands; with it on the run stops with one message naming
table and operation and the flag, and after the constraint is dropped a `continue` run applies
the change: nothing lost.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from tests.cdc_helpers import (
    drop_task,
    execute,
    rows,
    run_cli,
    settings,
    with_start_mode,
    write_settings,
)
from trempy_nb.embedded import Cluster
from trempy_nb.errors import RowError, TerminalError
from trempy_nb.task import Task

OPS = ["insert", "update", "delete"]
MODES = ["upsert", "scd2"]
FLAGS = ("insert", "update", "delete", "upsert", "scd2")

T_SQL = "CREATE TABLE t (id int PRIMARY KEY, v int, s text)"
INITIAL = "INSERT INTO t VALUES (1, 1, 'a'), (3, 3, 'c'), (4, 4, 'd'), (6, 6, 'f')"
GOOD = ("INSERT INTO t VALUES (5, 5, 'e')", "UPDATE t SET v = 40 WHERE id = 4", "DELETE FROM t WHERE id = 6")
BAD = {
    "insert": ("INSERT INTO t VALUES (2, -2, 'b')", "2"),
    "update": ("UPDATE t SET v = -1 WHERE id = 1", "1"),
    "delete": ("DELETE FROM t WHERE id = 3", "3"),
}


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "e" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def _reject(target_uri: str, op: str, mode: str) -> str:
    """Add the target constraint that rejects the bad change of `op`; returns the SQL that drops it."""
    if op in ("insert", "update"):
        execute(target_uri, "ALTER TABLE t ADD CONSTRAINT v_ok CHECK (v >= 0)")
        return "ALTER TABLE t DROP CONSTRAINT v_ok"
    if mode == "upsert":  # a row of another table still points at key 3
        execute(target_uri, "CREATE TABLE keep (id int REFERENCES t (id)); INSERT INTO keep VALUES (3)")
        return "DROP TABLE keep"
    execute(target_uri, "ALTER TABLE t ADD CONSTRAINT keep_3 CHECK (scd_current OR id <> 3)")  # closing 3
    return "ALTER TABLE t DROP CONSTRAINT keep_3"


def _current(target_uri: str, mode: str) -> list[tuple[Any, ...]]:
    where = " WHERE scd_current" if mode == "scd2" else ""
    return rows(target_uri, f"SELECT id, v, s FROM t{where} ORDER BY id")


def _source(source_uri: str) -> list[tuple[Any, ...]]:
    return rows(source_uri, "SELECT id, v, s FROM t ORDER BY id")


def _flags(op: str, mode: str, stop: bool, how: str) -> dict[str, Any]:
    """`how` 'op': every flag set, the operation's flag is `stop` and every other one the opposite
    (so the mode flag says the contrary: the operation's flag must win). 'mode': no operation flag
    set, the mode's flag is `stop` and the other mode's the opposite."""
    if how == "op":
        return {f"stop_if_{f}_error": (stop if f == op else not stop) for f in FLAGS}
    other = "scd2" if mode == "upsert" else "upsert"
    return {f"stop_if_{mode}_error": stop, f"stop_if_{other}_error": not stop}


def _loaded(task_name: str, source_uri: str, target_uri: str, mode: str, flags: dict[str, Any],
            transport: str = "local") -> dict[str, Any]:
    execute(source_uri, T_SQL)
    execute(source_uri, INITIAL)
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode=mode,
                   error_handling={**flags, "max_retries": 1}, transport=transport)
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    assert _current(target_uri, mode) == _source(source_uri)
    return with_start_mode(doc, "continue")


@pytest.mark.parametrize("how", ["op", "mode"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_cdc_flag_off_records_and_skips_the_change(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, op: str, mode: str, how: str
) -> None:
    doc = _loaded(task_name, source_uri, target_uri, mode, _flags(op, mode, False, how))
    before = _current(target_uri, mode)
    _reject(target_uri, op, mode)
    bad_sql, bad_key = BAD[op]
    with_bad = [*GOOD[:1], bad_sql, *GOOD[1:]]
    execute(source_uri, "; ".join(with_bad))  # one source transaction: one batch
    task = Task.from_settings(doc)
    task.run(until_caught_up=True, progress=False)
    # the rest landed, the bad change did not
    expected = {r[0]: r for r in before}
    expected[5] = (5, 5, "e")
    expected[4] = (4, 40, "d")
    del expected[6]
    assert _current(target_uri, mode) == sorted(expected.values())
    errs = task.errors()
    assert errs.height == 1, errs
    rec = errs.row(0, named=True)
    assert (rec["schema"], rec["table"], rec["operation"]) == ("public", "t", op)
    assert json.loads(rec["key"]) == {"id": bad_key}
    payload = json.loads(rec["payload"])
    assert payload["key"] == {"id": bad_key} and payload["op"] == op[0].upper()
    if op != "delete":
        assert payload["values"]["v"] == ("-2" if op == "insert" else "-1")
    assert "violates" in rec["error"]


@pytest.mark.parametrize("how", ["op", "mode"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_cdc_flag_on_stops_then_continue_applies_the_change(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, op: str, mode: str, how: str
) -> None:
    doc = _loaded(task_name, source_uri, target_uri, mode, _flags(op, mode, True, how))
    before = _current(target_uri, mode)
    fix = _reject(target_uri, op, mode)
    bad_sql, bad_key = BAD[op]
    execute(source_uri, "; ".join([*GOOD[:1], bad_sql, *GOOD[1:]]))
    task = Task.from_settings(doc)
    with pytest.raises(RowError) as info:
        task.run(until_caught_up=True, progress=False)
    flag = f"stop_if_{op}_error" if how == "op" else f"stop_if_{mode}_error"
    prep = {"insert": "into", "update": "of", "delete": "from"}[op]
    msg = str(info.value)
    assert msg.startswith(f"{op} {prep} public.t failed for key {{'id': '{bad_key}'}}: "), msg
    assert msg.endswith(f"(error_handling.{flag} is true)") and "\n" not in msg
    assert _current(target_uri, mode) == before  # the whole batch rolled back
    assert task.errors().height == 0
    execute(target_uri, fix)  # the user fixes the target
    task.run(until_caught_up=True, progress=False)
    assert _current(target_uri, mode) == _source(source_uri)  # nothing lost


def test_cli_stop_exits_1_with_one_line_naming_table_operation_and_flag(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, tmp_path: Path
) -> None:
    doc = _loaded(task_name, source_uri, target_uri, "upsert", {"stop_if_update_error": True,
                                                                "stop_if_upsert_error": False})
    fix = _reject(target_uri, "update", "upsert")
    execute(source_uri, "UPDATE t SET v = -1 WHERE id = 1; INSERT INTO t VALUES (9, 9, 'i')")
    path = write_settings(tmp_path / "t.json", doc)
    env = {"TREMPY_HOME": str(trempy_home)}
    res = run_cli(["run", str(path), "--until-caught-up", "-q"], env=env)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "update of public.t failed for key {'id': '1'}" in lines[0]
    assert lines[0].endswith("(error_handling.stop_if_update_error is true)"), lines[0]
    execute(target_uri, fix)
    res = run_cli(["run", str(path), "--until-caught-up", "-q"], env=env)
    assert res.returncode == 0, res.stderr
    assert _current(target_uri, "upsert") == _source(source_uri)


# --- full load --------------------------------------------------------------------------------


def _full_doc(task_name: str, source_uri: str, target_uri: str, mode: str, flags: dict[str, Any],
              truncate: bool) -> dict[str, Any]:
    return settings(task_name, source_uri, target_uri, rtype="full_load", mode=mode,
                    error_handling=flags, full_load_settings={"truncate_before_insert": truncate})


def _full_target(target_uri: str, mode: str, merge: bool) -> None:
    scd = ", scd_start_date timestamptz, scd_end_date timestamptz, scd_current boolean" if mode == "scd2" else ""
    pk = "" if mode == "scd2" else " PRIMARY KEY"
    execute(target_uri, f"CREATE TABLE t (id int{pk}, v int CHECK (v >= 0), s text{scd})")
    if merge:  # a non-empty target: the load merges (upsert or SCD2 close + open)
        cols = ", scd_start_date, scd_end_date, scd_current" if mode == "scd2" else ""
        vals = ", now() - interval '1 day', NULL, true" if mode == "scd2" else ""
        execute(target_uri, f"INSERT INTO t (id, v, s{cols}) VALUES (4, 0, 'old'{vals})")


@pytest.mark.parametrize("merge", [False, True], ids=["empty", "merge"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["op", "mode"])
def test_full_load_flag_off_records_and_skips_the_row(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str, merge: bool, how: str
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, CASE WHEN i = 7 THEN -7 ELSE i END, 'r' || i FROM generate_series(1, 50) i")
    _full_target(target_uri, mode, merge)
    task = Task.from_settings(_full_doc(task_name, source_uri, target_uri, mode,
                                        _flags("insert", mode, False, how), truncate=not merge))
    result = task.run(progress=False)
    assert result.tables[0].rows_failed == 1
    assert [r[0] for r in _current(target_uri, mode)] == [i for i in range(1, 51) if i != 7]
    errs = task.errors()
    assert errs.height == 1
    rec = errs.row(0, named=True)
    assert (rec["schema"], rec["table"], rec["operation"]) == ("public", "t", "insert")
    assert json.loads(rec["key"]) == {"id": 7}
    assert json.loads(rec["payload"]) == {"id": 7, "v": -7, "s": "r7"}
    assert "t_v_check" in rec["error"]


@pytest.mark.parametrize("merge", [False, True], ids=["empty", "merge"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["op", "mode"])
def test_full_load_flag_on_stops_then_a_rerun_loads_everything(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, mode: str, merge: bool, how: str
) -> None:
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, CASE WHEN i = 7 THEN -7 ELSE i END, 'r' || i FROM generate_series(1, 50) i")
    _full_target(target_uri, mode, merge)
    before = _current(target_uri, mode)
    doc = _full_doc(task_name, source_uri, target_uri, mode, _flags("insert", mode, True, how), truncate=not merge)
    with pytest.raises(RowError) as info:
        Task.from_settings(doc).run(progress=False)
    flag = "stop_if_insert_error" if how == "op" else f"stop_if_{mode}_error"
    assert str(info.value) == (
        "insert into public.t failed for key {'id': 7}: new row for relation \"t\" violates check constraint"
        f" \"t_v_check\" (error_handling.{flag} is true)"
    )
    assert _current(target_uri, mode) == before  # the table's transaction rolled back
    execute(target_uri, "ALTER TABLE t DROP CONSTRAINT t_v_check")
    Task.from_settings(with_start_mode(doc, "continue")).run(progress=False)
    assert [r[:2] for r in _current(target_uri, mode)] == [r[:2] for r in _source(source_uri)]


# --- terminal errors ----------------------------------------------------------------------------


@pytest.fixture
def target_role(pg_cluster: Cluster, target_uri: str) -> Iterator[tuple[str, str]]:
    """A login role that owns the target database and its public schema; yields (role, its URI)."""
    role, pw = "tr_" + uuid.uuid4().hex[:8], "pw_" + secrets.token_hex(8)
    db = target_uri.rsplit("/", 1)[1]
    execute(target_uri, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(pw)).as_string(None))
    execute(target_uri, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
        sql.Identifier(db), sql.Identifier(role)).as_string(None))
    execute(target_uri, sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)).as_string(None))
    yield role, pg_cluster.uri(db, user=role, password=pw)
    execute(target_uri, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)).as_string(None))


ALL_OFF = {f"stop_if_{f}_error": False for f in FLAGS}


def test_full_load_terminal_error_stops_once_with_no_row_records(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, target_role: tuple[str, str],
    tmp_path: Path,
) -> None:
    role, role_uri = target_role
    execute(source_uri, T_SQL)
    execute(source_uri, "INSERT INTO t SELECT i, i, 'r' FROM generate_series(1, 300) i")
    doc = settings(task_name, source_uri, role_uri, rtype="full_load", error_handling=ALL_OFF)
    Task.from_settings(doc).run(progress=False)  # creates the table, owned by the role
    execute(target_uri, sql.SQL("REVOKE INSERT ON public.t FROM {}").format(sql.Identifier(role)).as_string(None))
    path = write_settings(tmp_path / "t.json", doc)
    res = run_cli(["run", str(path), "-q"], env={"TREMPY_HOME": str(trempy_home)})
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "insert into public.t failed: permission denied for table t [SQLSTATE 42501]" in lines[0], lines[0]
    assert "pw_" not in res.stderr
    assert Task.from_settings(doc).errors().height == 0  # not one record per row


def test_cdc_terminal_error_stops_once_then_continue_applies_everything(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str, target_role: tuple[str, str]
) -> None:
    role, role_uri = target_role
    execute(source_uri, T_SQL)
    execute(source_uri, INITIAL)
    doc = settings(task_name, source_uri, role_uri, rtype="full_load_and_cdc", error_handling=ALL_OFF)
    Task.from_settings(doc).run(until_caught_up=True, progress=False)
    doc = with_start_mode(doc, "continue")
    revoke = sql.SQL("REVOKE INSERT, UPDATE ON public.t FROM {}").format(sql.Identifier(role)).as_string(None)
    execute(target_uri, revoke)
    execute(source_uri, "INSERT INTO t SELECT i, i, 'n' FROM generate_series(10, 60) i; UPDATE t SET v = 0 WHERE id < 10")
    task = Task.from_settings(doc)
    with pytest.raises(TerminalError) as info:
        task.run(until_caught_up=True, progress=False)
    msg = str(info.value)
    assert msg.startswith("insert/update into public.t failed: permission denied for table t"), msg
    assert "[SQLSTATE 42501]" in msg and "\n" not in msg
    assert task.errors().height == 0
    execute(target_uri, sql.SQL("GRANT INSERT, UPDATE ON public.t TO {}").format(sql.Identifier(role)).as_string(None))
    task.run(until_caught_up=True, progress=False)
    assert _current(target_uri, "upsert") == _source(source_uri)


# --- the RabbitMQ transport keeps the same records ------------------------------------------------


def test_rabbitmq_flag_off_records_the_change_like_local(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    pika = pytest.importorskip("pika")
    from tests.conftest import in_ci
    from trempy_nb.transport.rabbitmq import DEFAULT_URL

    try:
        pika.BlockingConnection(pika.URLParameters(DEFAULT_URL)).close()
    except Exception:  # noqa: BLE001
        if in_ci():
            raise
        pytest.skip("RabbitMQ is not running")
    flags = _flags("update", "upsert", False, "op")
    doc = _loaded(task_name, source_uri, target_uri, "upsert", flags, transport="rabbitmq")
    _reject(target_uri, "update", "upsert")
    execute(source_uri, "; ".join([*GOOD[:1], BAD["update"][0], *GOOD[1:]]))
    task = Task.from_settings(doc)
    task.run(until_caught_up=True, progress=False)
    assert _current(target_uri, "upsert") == [(1, 1, "a"), (3, 3, "c"), (4, 40, "d"), (5, 5, "e")]
    rec = task.errors().row(0, named=True)
    assert (rec["schema"], rec["table"], rec["operation"], json.loads(rec["key"])) == ("public", "t", "update", {"id": "1"})
    assert json.loads(rec["payload"])["values"]["v"] == "-1" and "v_ok" in rec["error"]
    assert task.dead_letters().height == 0
