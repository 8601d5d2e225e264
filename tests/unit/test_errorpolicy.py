"""The one error policy, pure: classification, flag resolution, retries and bisection."""

from __future__ import annotations

import itertools

import psycopg
import pytest
from psycopg import errors as pe

from trempy_nb.db import refusal_sqlstate
from trempy_nb.errors import (
    ConnectionFailed,
    RowError,
    SchemaChanged,
    SettingsError,
    SlotLost,
    TerminalError,
    TransientError,
)
from trempy_nb.settings import ErrorHandling, parse_settings
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer.errorpolicy import Kind, classify

OPS = ("insert", "update", "delete")
MODES = ("upsert", "scd2")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # row-level: the rows' values
        (pe.CheckViolation("check"), Kind.ROW),  # 23514
        (pe.NotNullViolation("null"), Kind.ROW),  # 23502
        (pe.UniqueViolation("dup"), Kind.ROW),  # 23505
        (pe.ForeignKeyViolation("fk"), Kind.ROW),  # 23503
        (pe.ExclusionViolation("excl"), Kind.ROW),  # 23P01
        (pe.InvalidTextRepresentation("bad int"), Kind.ROW),  # 22P02
        (pe.NumericValueOutOfRange("range"), Kind.ROW),  # 22003
        (pe.StringDataRightTruncation("long"), Kind.ROW),  # 22001
        (pe.RaiseException("trigger says no"), Kind.ROW),  # P0001
        (pe.WithCheckOptionViolation("view"), Kind.ROW),  # 44000
        (pe.ProgramLimitExceeded("index row too big"), Kind.ROW),  # 54000
        # transient
        (pe.SerializationFailure("ser"), Kind.TRANSIENT),  # 40001
        (pe.DeadlockDetected("deadlock"), Kind.TRANSIENT),  # 40P01
        (pe.AdminShutdown("bye"), Kind.TRANSIENT),  # 57P01
        (pe.CannotConnectNow("starting"), Kind.TRANSIENT),  # 57P03
        (pe.LockNotAvailable("lock"), Kind.TRANSIENT),  # 55P03
        (pe.QueryCanceled("cancel"), Kind.TRANSIENT),  # 57014
        (pe.TooManyConnections("full"), Kind.TRANSIENT),  # 53300
        (pe.ConnectionFailure("gone"), Kind.TRANSIENT),  # 08006
        (pe.ObjectInUse("slot active"), Kind.TRANSIENT),  # 55006
        (pe.IdleSessionTimeout("idle"), Kind.TRANSIENT),  # 57P05
        (pe.DatabaseDropped("gone for good"), Kind.TERMINAL),  # 57P04
        (pe.ObjectNotInPrerequisiteState("wal_level"), Kind.TERMINAL),  # 55000
        (psycopg.OperationalError("server closed the connection unexpectedly"), Kind.TRANSIENT),
        (ConnectionResetError("reset"), Kind.TRANSIENT),
        (TimeoutError("slow"), Kind.TRANSIENT),
        (TransientError("broker gone"), Kind.TRANSIENT),
        # terminal
        (pe.InsufficientPrivilege("permission denied"), Kind.TERMINAL),  # 42501
        (pe.UndefinedTable("no table"), Kind.TERMINAL),  # 42P01
        (pe.UndefinedColumn("no column"), Kind.TERMINAL),  # 42703
        (pe.SyntaxError("syntax"), Kind.TERMINAL),  # 42601
        (pe.InvalidCatalogName("no db"), Kind.TERMINAL),  # 3D000
        (pe.InvalidPassword("pw"), Kind.TERMINAL),  # 28P01
        (pe.InvalidSchemaName("no schema"), Kind.TERMINAL),  # 3F000
        (pe.ReadOnlySqlTransaction("ro"), Kind.TERMINAL),  # 25006
        (pe.FeatureNotSupported("nope"), Kind.TERMINAL),  # 0A000
        (pe.InternalError_("xx"), Kind.TERMINAL),  # XX000
        (psycopg.DataError("client-side error, no SQLSTATE"), Kind.TERMINAL),
        (TerminalError("x"), Kind.TERMINAL),
        (SlotLost("x"), Kind.TERMINAL),
        (SchemaChanged("x"), Kind.TERMINAL),
        (SettingsError("x"), Kind.TERMINAL),
        (RowError("a flag said stop"), Kind.TERMINAL),
        (ValueError("bug"), Kind.TERMINAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify(exc: BaseException, kind: Kind) -> None:
    assert classify(exc) is kind
    assert policy.is_transient(exc) is (kind is Kind.TRANSIENT)


def test_connection_failed_is_transient_unless_refused_for_good() -> None:
    assert classify(ConnectionFailed("cannot connect: Connection refused")) is Kind.TRANSIENT
    assert classify(ConnectionFailed("cannot connect: password authentication failed", "28P01")) is Kind.TERMINAL
    assert classify(ConnectionFailed("cannot connect: database x does not exist", "3D000")) is Kind.TERMINAL
    assert refusal_sqlstate('FATAL:  password authentication failed for user "u"') == "28P01"
    assert refusal_sqlstate('FATAL:  role "nouser" does not exist') == "28000"
    assert refusal_sqlstate('FATAL:  database "nodb" does not exist') == "3D000"
    assert refusal_sqlstate("Connection refused\n\tIs the server running on that host") is None
    assert refusal_sqlstate("FATAL:  the database system is starting up") is None


def _eh(**flags: bool) -> ErrorHandling:
    return ErrorHandling(**flags)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_mode_flag_decides_when_the_operation_flag_is_not_set(op: str, mode: str) -> None:
    for value in (True, False):
        eh = _eh(**{f"stop_if_{mode}_error": value})
        d = policy.decide(eh, [op], mode)  # type: ignore[list-item]
        assert (d.stop, d.flag, d.operation) == (value, f"stop_if_{mode}_error", op)
        # the other mode's flag never decides
        other = "scd2" if mode == "upsert" else "upsert"
        assert policy.decide(_eh(**{f"stop_if_{other}_error": not value, f"stop_if_{mode}_error": value}),
                             [op], mode).stop is value  # type: ignore[list-item]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_an_explicit_operation_flag_wins_over_the_mode_flag(op: str, mode: str) -> None:
    for op_value, mode_value in itertools.product((True, False), repeat=2):
        eh = _eh(**{f"stop_if_{op}_error": op_value, f"stop_if_{mode}_error": mode_value})
        d = policy.decide(eh, [op], mode)  # type: ignore[list-item]
        assert (d.stop, d.flag) == (op_value, f"stop_if_{op}_error")
        # another operation's explicit flag does not decide for this one
        others = [o for o in OPS if o != op]
        eh2 = _eh(**{f"stop_if_{others[0]}_error": not mode_value, f"stop_if_{mode}_error": mode_value})
        assert policy.decide(eh2, [op], mode).flag == f"stop_if_{mode}_error"  # type: ignore[list-item]


def test_defaults_and_documents_that_set_every_flag() -> None:
    # nothing set: the mode flags (default true) decide, for deletes too
    eh = ErrorHandling()
    assert all(policy.decide(eh, [op], m).stop for op in OPS for m in MODES)  # type: ignore[list-item]
    assert policy.decide(eh, ["delete"], "upsert").flag == "stop_if_upsert_error"
    # a document setting every flag: the operation flags decide, the mode flags never do
    doc = {"task": {"task_name": "t", "source": "s", "target": "t", "replication_type": "cdc"},
           "error_handling": {"stop_if_insert_error": True, "stop_if_update_error": False,
                              "stop_if_delete_error": False, "stop_if_upsert_error": False,
                              "stop_if_scd2_error": True, "max_retries": 3},
           "tables": [{"schema_name": "public", "table_name": "t"}]}
    eh = parse_settings(doc).error_handling
    for mode in MODES:
        assert policy.decide(eh, ["insert"], mode).stop  # type: ignore[arg-type]
        assert not policy.decide(eh, ["update"], mode).stop  # type: ignore[arg-type]
        assert not policy.decide(eh, ["delete"], mode).stop  # type: ignore[arg-type]
    # a flag set in the document to its default value is still explicit
    eh = parse_settings({**doc, "error_handling": {"stop_if_delete_error": False}}).error_handling
    assert policy.decide(eh, ["delete"], "upsert") == policy.Decision(False, "stop_if_delete_error", "delete")
    assert policy.decide(eh, ["insert"], "upsert") == policy.Decision(True, "stop_if_upsert_error", "insert")


def test_a_key_with_several_operations_stops_if_any_flag_says_stop() -> None:
    eh = _eh(stop_if_insert_error=False, stop_if_update_error=True, stop_if_scd2_error=False)
    d = policy.decide(eh, ["insert", "update", "delete"], "scd2")
    assert (d.stop, d.flag, d.operation) == (True, "stop_if_update_error", "update")
    d = policy.decide(eh, ["insert", "delete"], "scd2")
    assert (d.stop, d.flag, d.operation) == (False, "stop_if_insert_error", "insert")


def test_operation_of_codes() -> None:
    assert [policy.operation_of(c) for c in ("I", "U", "D", None)] == ["insert", "update", "delete", "insert"]


def test_backoff_is_exponential_and_capped() -> None:
    assert [policy.backoff(n, base=0.1, cap=1.0) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.reconnect_budget(0) == policy.RECONNECT_MIN_RETRIES
    assert policy.reconnect_budget(50) == 50


def test_retry_retries_transient_errors_up_to_max_retries() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise pe.DeadlockDetected("deadlock")
        return "ok"

    assert policy.retry(flaky, 3, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and sleeps == [0.1, 0.2]
    calls.clear()
    with pytest.raises(pe.DeadlockDetected):
        policy.retry(lambda: flaky() if False else (_ for _ in ()).throw(pe.DeadlockDetected("x")), 2,
                     sleep=sleeps.append)
    with pytest.raises(pe.CheckViolation):  # never retried
        policy.retry(lambda: (_ for _ in ()).throw(pe.CheckViolation("x")), 5, sleep=lambda s: pytest.fail("slept"))


def _raise(exc: BaseException):  # noqa: ANN202
    def fn() -> None:
        raise exc

    return fn


def test_attempt_sorts_errors_by_kind() -> None:
    assert policy.attempt(lambda: 5, 0, "insert into s.t") == (5, None)
    row = pe.CheckViolation("new row violates check constraint")
    assert policy.attempt(_raise(row), 3, "insert into s.t", sleep=lambda s: None) == (None, row)
    with pytest.raises(TerminalError) as info:
        policy.attempt(_raise(pe.InsufficientPrivilege("permission denied for table t")), 3, "insert into s.t")
    msg = str(info.value)
    assert msg.startswith("insert into s.t failed: permission denied for table t") and "flags do not apply" in msg
    assert "\n" not in msg
    with pytest.raises(pe.DeadlockDetected):  # transient past the retries: re-raised for the reconnect tier
        policy.attempt(_raise(pe.DeadlockDetected("d")), 1, "x", sleep=lambda s: None)
    with pytest.raises(SlotLost):  # our own errors pass unchanged
        policy.attempt(_raise(SlotLost("gone")), 1, "x")
    asked = []
    policy.attempt(lambda: 1, 0, lambda: asked.append(1) or "x")
    assert asked == []  # the description is built only for a terminal error


def test_isolate_bisects_down_to_the_bad_units_and_never_splits_a_terminal_error() -> None:
    bad = {3, 11}
    runs: list[tuple[int, ...]] = []
    found: list[tuple[int, ...]] = []

    def run(unit: tuple[int, ...]) -> BaseException | None:
        runs.append(unit)
        return pe.CheckViolation("no") if bad & set(unit) else None

    def split(unit: tuple[int, ...]) -> list[tuple[int, ...]] | None:
        return None if len(unit) <= 1 else [unit[: len(unit) // 2], unit[len(unit) // 2:]]

    policy.isolate(tuple(range(16)), run, split, lambda u, e: found.append(u))
    assert found == [(3,), (11,)]
    assert len(runs) < 16  # halves, not every row
    runs.clear()

    def terminal(unit: tuple[int, ...]) -> BaseException | None:
        runs.append(unit)
        raise TerminalError("permission denied")

    with pytest.raises(TerminalError):
        policy.isolate(tuple(range(16)), terminal, split, lambda u, e: found.append(u))
    assert runs == [tuple(range(16))]


def test_messages_name_operation_table_key_and_flag() -> None:
    d = policy.Decision(True, "stop_if_update_error", "update")
    msg = str(policy.row_error("dw.items", d, "violates check", {"id": "2"}))
    assert msg == ("update of dw.items failed for key {'id': '2'}: violates check"
                   " (error_handling.stop_if_update_error is true)")
    assert policy.describe("delete", "dw.items") == "delete from dw.items"
    assert policy.describe("insert", "dw.items") == "insert into dw.items"
    assert policy.error_text(ValueError("first line\n  detail")) == "first line"


def test_error_records_keep_the_key_also_in_a_store_made_before_it(tmp_path) -> None:  # noqa: ANN001
    import json
    import sqlite3

    from trempy_nb.metadata import MetadataStore

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # version 1's errors table: no "key" column
        old.execute('CREATE TABLE errors (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, task TEXT,'
                    ' run_id TEXT, "schema" TEXT, "table" TEXT, operation TEXT, error TEXT NOT NULL, payload TEXT)')
    with MetadataStore(path) as store:
        store.record_error("t", "r", "dw", "items", "update", "boom", {"values": {"v": 1}}, key={"id": 2})
        df = store.errors("t")
    assert df.row(0, named=True) | {"time": None} == {
        "time": None, "task": "t", "run_id": "r", "schema": "dw", "table": "items", "operation": "update",
        "key": json.dumps({"id": 2}), "error": "boom", "payload": json.dumps({"values": {"v": 1}}),
    }
