"""Metadata store: CRUD, frames, masking, and writes from many threads and processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from trempy_nb import connections as conns
from trempy_nb.errors import SettingsError
from trempy_nb.logs import attach_store, get_logger
from trempy_nb.metadata import MetadataStore

PW = "M3ta-Secret-pw"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    conns._forget_secrets()
    yield
    conns._forget_secrets()


@pytest.fixture
def store(trempy_home: Path) -> Iterator[MetadataStore]:
    s = MetadataStore()
    yield s
    s.close()


def test_default_path_is_under_trempy_home(store: MetadataStore, trempy_home: Path) -> None:
    assert store.path == trempy_home / "metadata.sqlite3"
    assert store.path.exists()
    mode = store._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_explicit_path(tmp_path: Path) -> None:
    with MetadataStore(tmp_path / "sub" / "m.db") as s:
        s.log("t", None, "INFO", "hi")
        assert s.logs()["message"].to_list() == ["hi"]


def test_empty_frames_have_schemas(store: MetadataStore) -> None:
    assert store.runs().schema["started_at"] == pl.Datetime("us", "UTC")
    assert store.stats().columns[:5] == ["run_id", "task", "schema", "table", "operation"]
    assert store.logs().columns == ["time", "task", "run_id", "level", "message"]
    assert store.errors().height == 0
    assert store.dead_letters().schema["attempts"] == pl.Int64
    assert store.list_tasks().columns == ["name", "updated_at"]


def test_tasks_crud(store: MetadataStore) -> None:
    settings = {"task": {"task_name": "emp", "source": "hr", "target": "${DW_URI}"}, "tables": []}
    assert store.save_task("emp", settings) == settings
    assert store.load_task("emp") == settings
    settings["tables"] = [{"schema_name": "s", "table_name": "t"}]
    store.save_task("emp", settings)
    assert store.load_task("emp")["tables"] == [{"schema_name": "s", "table_name": "t"}]
    assert store.list_tasks()["name"].to_list() == ["emp"]
    with pytest.raises(SettingsError, match="saved tasks: emp"):
        store.load_task("nope")
    assert store.delete_task("emp") and not store.delete_task("emp")
    assert store.list_tasks().height == 0


def test_task_with_literal_password_uses_saved_connection(
    store: MetadataStore, trempy_home: Path
) -> None:
    uri = f"postgresql://u:{PW}@h:5432/db?sslmode=require"
    stored = store.save_task("emp", {"task": {"source": uri, "target": "postgresql://u@h/dw"}})
    assert stored["task"] == {"source": "emp-source", "target": "postgresql://u@h/dw"}
    raw = store._conn().execute("SELECT settings FROM tasks").fetchone()[0]
    assert PW not in raw
    assert PW not in (trempy_home / "connections.json").read_text()
    assert conns.resolve(store.load_task("emp")["task"]["source"]) == uri


def test_run_lifecycle(store: MetadataStore) -> None:
    r1 = store.start_run("emp", "full_load")
    r2 = store.start_run("emp", "cdc")
    store.start_run("other", "full_load_and_cdc")
    store.end_run(r1, "succeeded")
    store.end_run(r2, "failed", RuntimeError(f"lost postgresql://u:{PW}@h/db"))
    df = store.runs("emp")
    assert df["run_id"].to_list() == [r2, r1]  # newest first
    assert df["status"].to_list() == ["failed", "succeeded"]
    assert df["ended_at"].null_count() == 0
    assert PW not in df["error"][0] and "u:***@h" in df["error"][0]
    assert store.runs().height == 3
    assert store.runs("other")["status"].to_list() == ["running"]


def test_run_validation(store: MetadataStore) -> None:
    with pytest.raises(ValueError):
        store.start_run("emp", "weekly")  # type: ignore[arg-type]
    run = store.start_run("emp", "cdc")
    with pytest.raises(ValueError):
        store.end_run(run, "running")
    with pytest.raises(KeyError):
        store.end_run("no-such-run", "stopped")


def test_stats_accumulate(store: MetadataStore) -> None:
    run = store.start_run("emp", "full_load")
    store.record_stats(
        run, "emp", "hr", "employee", "insert", rows_read=10, rows_written=8, duration_s=0.5
    )
    store.record_stats(
        run, "emp", "hr", "employee", "insert", rows_read=5, rows_filtered=2, duration_s=0.25
    )
    store.record_stats(run, "emp", "hr", "dept", "insert", rows_read=1, rows_failed=1)
    df = store.stats(task="emp", run_id=run)
    row = df.filter(pl.col("table") == "employee").to_dicts()[0]
    assert (row["rows_read"], row["rows_written"], row["rows_filtered"], row["rows_failed"]) == (
        15,
        8,
        2,
        0,
    )
    assert row["duration_s"] == pytest.approx(0.75)
    assert df.height == 2
    assert store.stats(task="other").height == 0
    with pytest.raises(ValueError, match="unknown counters"):
        store.record_stats(run, "emp", "hr", "employee", "insert", rows_deleted=1)


def test_logs_are_masked_and_limited(store: MetadataStore) -> None:
    conns.register_secret(PW)
    for i in range(5):
        store.log("emp", None, logging.INFO, f"line {i}")
    store.log("emp", None, "warning", f"echo {PW} and host=h password=kw99")
    store.log("other", None, "INFO", "elsewhere")
    df = store.logs("emp", limit=3)
    assert df["message"].to_list() == ["line 3", "line 4", "echo *** and host=h password=***"]
    assert df["level"].to_list() == ["INFO", "INFO", "WARNING"]
    assert store.logs().height == 7


def test_errors_payload_masked_json(store: MetadataStore) -> None:
    conns.register_secret(PW)
    import datetime as dt

    payload = {
        "id": 1,
        "note": f'quote " and {PW}',
        "dsn": "postgresql://u:zz99@h/db",
        "when": dt.date(2024, 1, 2),
        "nested": [{"password": "x"}, None, 1.5],
    }
    store.record_error(
        "emp", "r1", "hr", "employee", "insert", ValueError(f"dup key, {PW}"), payload
    )
    df = store.errors("emp")
    assert df.height == 1
    text = df["payload"][0]
    assert PW not in text and "zz99" not in text and PW not in df["error"][0]
    back = json.loads(text)
    assert back["id"] == 1 and back["when"] == "2024-01-02" and back["nested"][2] == 1.5
    assert back["dsn"] == "postgresql://u:***@h/db"


def test_dead_letters(store: MetadataStore) -> None:
    store.record_dead_letter("emp", "hr.employee", "0/16B3748", "0/16B3790", "boom", 3, "dlx:emp:1")
    df = store.dead_letters("emp")
    assert df.select("table", "first_lsn", "end_lsn", "attempts", "payload_ref").row(0) == (
        "hr.employee",
        "0/16B3748",
        "0/16B3790",
        3,
        "dlx:emp:1",
    )
    assert store.dead_letters("other").height == 0


def test_concurrent_writes_from_threads(store: MetadataStore) -> None:
    run = store.start_run("emp", "cdc")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(40):
                store.record_stats(
                    run, "emp", "hr", f"t{i % 3}", "upsert", rows_read=1, rows_written=2
                )
                store.log("emp", run, "INFO", f"thread {i}")
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    df = store.stats(run_id=run)
    assert df["rows_read"].sum() == 8 * 40 and df["rows_written"].sum() == 2 * 8 * 40
    assert store.logs("emp", limit=10_000).height == 8 * 40


def test_concurrent_writes_from_processes(store: MetadataStore) -> None:
    run = store.start_run("emp", "cdc")
    code = (
        "import sys\n"
        "from trempy_nb.metadata import MetadataStore\n"
        "s = MetadataStore(sys.argv[1])\n"
        "for _ in range(50):\n"
        "    s.record_stats(sys.argv[2], 'emp', 'hr', 'employee', 'insert', rows_read=1)\n"
        "    s.log('emp', sys.argv[2], 'INFO', 'proc')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(store.path), run], cwd=REPO)
        for _ in range(4)
    ]
    for _ in range(50):
        store.record_stats(run, "emp", "hr", "employee", "insert", rows_read=1)
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert store.stats(run_id=run)["rows_read"].to_list() == [250]
    assert store.logs("emp", limit=1000).height == 200


def test_log_hook_stores_masked_records(store: MetadataStore) -> None:
    conns.register_secret(PW)
    handler = attach_store(store, task="emp", run_id="r9")
    try:
        log = get_logger("runner_test")
        log.info("opened postgresql://u:%s@h/db", PW)
        log.debug("not stored at INFO")
        log.warning("for another run", extra={"run_id": "r10"})
    finally:
        get_logger().removeHandler(handler)
    df = store.logs("emp")
    assert df["message"].to_list() == ["opened postgresql://u:***@h/db", "for another run"]
    assert df["run_id"].to_list() == ["r9", "r10"]
    log.info("after detach")
    assert store.logs("emp").height == 2


def test_stores_created_at_the_same_instant_in_threads(tmp_path: Path) -> None:
    """Two runners opening the store at once used to raise "database is locked" (WAL switch and
    schema creation); both must open it, repeatedly, on a fresh file each round."""
    for round_ in range(10):
        path = tmp_path / f"race_{round_}.sqlite3"
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_store(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(5)
                s = MetadataStore(path)
                s.log("emp", None, "INFO", "opened")
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert MetadataStore(path).logs("emp").height == 6
