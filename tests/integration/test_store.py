"""One state store suite, run on both backends: SQLite (a file) and PostgreSQL (a throwaway database).

Round trips of the whole API, migrations, concurrent lease claims from several processes
(exactly one winner per epoch), lease expiry and takeover, duplicate worker names,
submit/replace, log search and masking. No timing assertions: expiries are waited for
with bounded polls.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from trempy_nb import connections as conns
from trempy_nb.embedded import Cluster
from trempy_nb.errors import (
    ConnectionFailed,
    SettingsError,
    TaskRunning,
    UnknownTask,
    WorkerNameTaken,
)
from trempy_nb.store import SCHEMA_VERSION, Lease, MetadataStore

PW = "St0re-Secret-pw"


def settings(name: str, transport: str = "local", table: str = "a") -> dict[str, Any]:
    return {
        "task": {"task_name": name, "source": "src", "target": "tgt", "transport": transport,
                 "replication_type": "full_load_and_cdc"},
        "tables": [{"schema_name": "public", "table_name": table}],
    }


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    conns._forget_secrets()
    yield
    conns._forget_secrets()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path, trempy_home: Path) -> str:
    """Where a fresh store lives: a new SQLite file, or a new database of the throwaway cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"store_{time.monotonic_ns()}")


@pytest.fixture
def store(location: str) -> Iterator[MetadataStore]:
    s = MetadataStore(location)
    yield s
    s.close()


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    """Poll until `predicate()` is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------- existing API


def test_backend_and_version(store: MetadataStore, location: str) -> None:
    assert store.kind == ("sqlite" if location.endswith(".sqlite3") else "postgresql")
    with store.backend.read() as run:
        assert store.backend.current_version(run) == SCHEMA_VERSION
    if store.kind == "postgresql":
        with psycopg.connect(location) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'trempy_metadata'")}
        assert {"tasks", "runs", "logs", "leases", "workers", "task_state", "takeovers", "schema_version"} <= tables


def test_tasks_runs_stats_round_trip(store: MetadataStore) -> None:
    doc = settings("emp")
    assert store.save_task("emp", doc) == doc
    assert store.load_task("emp") == doc
    assert store.list_tasks()["name"].to_list() == ["emp"]
    with pytest.raises(SettingsError, match="saved tasks: emp"):
        store.load_task("nope")
    r1 = store.start_run("emp", "full_load")
    r2 = store.start_run("emp", "cdc")
    store.end_run(r1, "succeeded")
    store.end_run(r2, "failed", RuntimeError(f"lost postgresql://u:{PW}@h/db"))
    runs = store.runs("emp")
    assert set(runs["run_id"].to_list()) == {r1, r2}
    assert runs.schema["started_at"] == pl.Datetime("us", "UTC")
    assert PW not in runs.filter(pl.col("run_id") == r2)["error"][0]
    with pytest.raises(KeyError):
        store.end_run("no-such-run", "stopped")
    store.record_stats(r1, "emp", "hr", "employee", "insert", rows_read=10, rows_written=8, duration_s=0.5)
    store.record_stats(r1, "emp", "hr", "employee", "insert", rows_read=5, rows_filtered=2, duration_s=0.25)
    row = store.stats(task="emp").to_dicts()[0]
    assert (row["rows_read"], row["rows_written"], row["rows_filtered"]) == (15, 8, 2)
    assert row["duration_s"] == pytest.approx(0.75)
    assert store.task_names() == ["emp"]
    assert store.delete_task("emp") and not store.delete_task("emp")


def test_errors_dead_letters_targets_round_trip(store: MetadataStore) -> None:
    conns.register_secret(PW)
    store.record_error("emp", "r1", "hr", "employee", "insert", ValueError(f"dup {PW}"), {"id": 1, "pw": PW}, {"id": 1})
    err = store.errors("emp").to_dicts()[0]
    assert PW not in err["error"] and PW not in err["payload"] and json.loads(err["key"]) == {"id": 1}
    store.record_dead_letter("emp", "hr.employee", "0/1", "0/2", "boom", 3, "dlx:emp:1")
    assert store.dead_letters("emp").select("table", "attempts").row(0) == ("hr.employee", 3)
    store.record_targets("emp", "dw", [{
        "source_schema": "hr", "source_table": "employee", "target_schema": "dw", "target_table": "emp",
        "columns": ["id", "name"], "key_columns": ["id"], "mode": "scd2",
        "start_col": "s", "end_col": "e", "current_col": "c",
    }])
    t = store.targets("emp").to_dicts()[0]
    assert (t["target"], json.loads(t["columns"]), t["mode"]) == ("dw", ["id", "name"], "scd2")


def test_frames_have_the_same_schemas_on_both_backends(store: MetadataStore, tmp_path: Path) -> None:
    other = MetadataStore(tmp_path / "ref.sqlite3")
    for method in ("runs", "stats", "logs", "errors", "dead_letters", "list_tasks", "takeovers", "search_logs"):
        assert getattr(store, method)().schema == getattr(other, method)().schema, method
    assert store.targets("x").schema == other.targets("x").schema


# ---------------------------------------------------------------------------------------- logs


def test_log_columns_and_search(store: MetadataStore) -> None:
    conns.register_secret(PW)
    store.log("emp", "r1", "DEBUG", "debug line")
    store.log("emp", "r1", "INFO", "Batch applied", table="hr.employee", worker="w1", fields={"rows": 5})
    store.log("emp", "r1", "WARNING", f"slow 50%_ target {PW}", table="hr.dept")
    store.log("emp", "r1", 40, "apply FAILED", table="hr.employee", worker="w2")
    store.log("other", None, "ERROR", "elsewhere")
    every = store.search_logs()
    assert every.columns == ["id", "ts", "level", "task", "table", "run_id", "worker", "message", "fields"]
    assert every.height == 5 and every["id"].is_sorted()
    assert store.search_logs("emp", level="warning")["level"].to_list() == ["WARNING", "ERROR"]
    assert store.search_logs(level=logging_error())["task"].to_list() == ["emp", "other"]
    assert store.search_logs(grep="failed")["message"].to_list() == ["apply FAILED"]
    assert store.search_logs(grep="50%_")["table"].to_list() == ["hr.dept"]  # % and _ are literal
    assert store.search_logs(grep="%").height == 1
    assert store.search_logs(table="hr.employee")["worker"].to_list() == ["w1", "w2"]
    assert store.search_logs(table="employee").height == 2 and store.search_logs(table="ployee").height == 0
    info = store.search_logs(table="hr.employee", level="INFO").to_dicts()[0]
    assert json.loads(info["fields"]) == {"rows": 5} and info["run_id"] == "r1"
    assert PW not in "".join(store.search_logs()["message"].to_list())
    ids = every["id"].to_list()
    assert store.search_logs(after_id=ids[2])["id"].to_list() == ids[3:]
    assert store.search_logs(limit=2)["id"].to_list() == ids[-2:]  # the newest, in id order
    assert store.search_logs(since=datetime.now(timezone.utc) + timedelta(hours=1)).height == 0
    assert store.search_logs(since=datetime.now(timezone.utc) - timedelta(hours=1)).height == 5
    with pytest.raises(SettingsError, match="unknown log level"):
        store.search_logs(level="LOUD")
    assert store.logs("emp", limit=2)["message"].to_list()[-1] == "apply FAILED"


def logging_error() -> str:
    return "ERROR"


# ---------------------------------------------------------------------------------------- desired state


def test_submit_replace_and_desired(store: MetadataStore) -> None:
    store.submit("t1", settings("t1"))
    [row] = store.fleet_status("t1")
    assert (row["desired"], row["state"], row["worker"], row["epoch"], row["settings_version"]) == (
        "running", "pending", None, 0, 1)
    store.submit("t1", settings("t1"))  # unchanged: fine, even while running
    lease = store.claim("t1", "both", "w1", 30)
    assert lease is not None
    with pytest.raises(TaskRunning, match="worker w1.*--replace"):
        store.submit("t1", settings("t1", table="b"))
    assert store.load_task("t1")["tables"][0]["table_name"] == "a"  # nothing changed
    store.submit("t1", settings("t1"))
    store.submit("t1", settings("t1", table="b"), replace=True)
    assert store.load_task("t1")["tables"][0]["table_name"] == "b"
    assert store.fleet_status("t1")[0]["settings_version"] == 2
    store.release(lease)
    store.set_desired("t1", "stopped")
    store.submit("t1", settings("t1", table="c"))  # not active: accepted without replace
    assert store.fleet_status("t1")[0]["desired"] == "running"
    with pytest.raises(SettingsError, match="differs"):
        store.submit("t2", settings("t1"))
    with pytest.raises(SettingsError, match="tables"):
        store.submit("t2", {"task": {"task_name": "t2", "source": "s", "target": "t"}, "tables": []})
    with pytest.raises(UnknownTask, match="known tasks: t1"):
        store.set_desired("nope", "stopped")
    with pytest.raises(UnknownTask, match="known tasks: t1"):
        store.fleet_status("nope")


def test_report_and_fleet_status(store: MetadataStore) -> None:
    store.submit("mq", settings("mq", transport="rabbitmq"))
    store.submit("loc", settings("loc"))
    store.save_task("saved_only", settings("saved_only"))
    store.register_worker("w1", "host-a", 4242, ["producer", "consumer", "both"], 30)
    lease = store.claim("mq", "producer", "w1", 30)
    assert lease is not None and lease.epoch == 1
    store.report("mq", role="producer", state="streaming", worker="w1", lag_bytes=1024, lag_s=0.5, changes_applied=7)
    store.report("mq", role="producer", state="streaming", changes_applied=9)  # None keeps the last values
    store.report("loc", state="failed", error=RuntimeError(f"boom postgresql://u:{PW}@h/db"))
    rows = {(r["task"], r["role"]): r for r in store.fleet_status()}
    assert set(rows) == {("loc", "both"), ("mq", "consumer"), ("mq", "producer"), ("saved_only", "both")}
    prod = rows[("mq", "producer")]
    assert (prod["state"], prod["worker"], prod["host"], prod["pid"], prod["epoch"]) == ("streaming", "w1", "host-a", 4242, 1)
    assert (prod["lag_bytes"], prod["lag_s"], prod["changes_applied"]) == (1024, 0.5, 9)
    assert 0 <= prod["heartbeat_age_s"] < 30 and prod["lease_expires_in_s"] > 0
    assert rows[("mq", "consumer")]["state"] == "pending" and rows[("mq", "consumer")]["worker"] is None
    assert rows[("saved_only", "both")]["desired"] == "stopped"
    loc = rows[("loc", "both")]
    assert loc["state"] == "failed" and "boom" in loc["error"] and PW not in loc["error"]
    store.report("loc", state="streaming", error="")  # "" clears the error
    assert store.fleet_status("loc")[0]["error"] is None
    keys = {"task", "desired", "state", "worker", "host", "pid", "heartbeat_age_s", "lag_bytes",
            "changes_applied", "error", "role", "lag_s", "epoch"}
    assert all(keys <= set(r) for r in rows.values())
    with pytest.raises(SettingsError):
        store.report("loc", state="dancing")
    assert store.claimable(["producer", "consumer"]) == [("mq", "consumer")]
    assert store.claimable(["both"]) == [("loc", "both")]
    with pytest.raises(SettingsError, match="producer and consumer"):
        store.claim("mq", "both", "w1", 30)


# ---------------------------------------------------------------------------------------- leases


def test_lease_expiry_takeover_and_fencing(store: MetadataStore) -> None:
    store.submit("t1", settings("t1"))
    first = store.claim("t1", "both", "w1", 0.5)
    assert first == Lease("t1", "both", "w1", 1, 0.5)
    second = wait_for(lambda: store.claim("t1", "both", "w2", 30))
    assert isinstance(second, Lease)
    assert (second.worker, second.epoch, second.previous_worker) == ("w2", 2, "w1")
    assert second.previous_age_s is not None and second.previous_age_s >= 0.5
    assert store.renew(first) is False  # taken over: the old holder learns it
    store.release(first)  # a stale release changes nothing
    assert store.renew(second) is True
    assert store.claim("t1", "both", "w3", 30) is None  # held and live
    status = store.fleet_status("t1")[0]
    assert (status["worker"], status["epoch"]) == ("w2", 2)
    store.record_takeover("t1", "both", "w1", "w2", second.previous_age_s)
    tk = store.takeovers("t1")
    assert tk.select("from_worker", "to_worker").row(0) == ("w1", "w2") and tk["seconds"][0] >= 0.5
    store.release(second)
    third = store.claim("t1", "both", "w3", 30)
    assert third is not None and third.epoch == 3 and third.previous_worker is None  # released: no takeover
    store.set_desired("t1", "stopped")
    store.release(third)
    assert store.claim("t1", "both", "w1", 30) is None  # stopped tasks are not claimed
    assert store.claimable(["both"]) == []
    store.set_desired("t1", "running")
    assert store.claim("t1", "both", "w1", 30).epoch == 4  # type: ignore[union-attr]  # never reset


def test_renew_many_keeps_only_the_leases_still_held(store: MetadataStore) -> None:
    """A keeper's round renews all its leases in one write; one taken over meanwhile reports False,
    and a lease of an earlier incarnation of the same worker name is not extended."""
    for name in ("a", "b", "c"):
        store.submit(name, settings(name))
    a = store.claim("a", "both", "w1", 0.5)
    b = store.claim("b", "both", "w1", 30)
    old_c = store.claim("c", "both", "w1", 0.5)  # held by an earlier process of the same name
    assert a and b and old_c
    assert store.renew_many("w1", []) == {}
    taken = wait_for(lambda: store.claim("a", "both", "w2", 30))  # a expired: w2 takes it over
    assert isinstance(taken, Lease) and taken.epoch == a.epoch + 1
    assert store.renew_many("w1", [a, b]) == {("a", "both"): False, ("b", "both"): True}
    # c was not in the round: it expires and is free for another worker
    assert wait_for(lambda: store.claim("c", "both", "w3", 30)) is not None
    assert store.renew(taken) is True  # the round left w2's lease alone


def test_worker_names(store: MetadataStore, location: str) -> None:
    store.register_worker("w1", "host-a", 1, ["both"], 0.5)
    store.register_worker("w1", "host-a", 1, ["both"], 0.5)  # the same process again: fine
    other = MetadataStore(location)
    try:
        with pytest.raises(WorkerNameTaken, match="host-a, pid 1"):
            other.register_worker("w1", "host-b", 2, ["both"], 30)
        assert wait_for(lambda: not next(w for w in store.workers() if w["name"] == "w1")["alive"])
        other.register_worker("w1", "host-b", 2, ["producer"], 30)  # the old one died: its name is free
        with pytest.raises(WorkerNameTaken):  # the zombie wakes up: its name is someone else's now
            store.worker_heartbeat("w1", 30)
        other.worker_heartbeat("w1", 30)
        [w] = store.workers()
        assert (w["name"], w["host"], w["pid"], w["roles"], w["alive"]) == ("w1", "host-b", 2, ["producer"], True)
        store.submit("t1", settings("t1"))
        assert other.claim("t1", "both", "w1", 30) is not None
        other.unregister_worker("w1")  # frees its leases at once
        assert store.workers() == [] and store.claimable(["both"]) == [("t1", "both")]
        assert store.claim("t1", "both", "w9", 30).epoch == 2  # type: ignore[union-attr]
        with pytest.raises(SettingsError, match="roles"):
            store.register_worker("w2", "h", 3, ["everything"], 30)
    finally:
        other.close()


def _claimer(location: str, worker: str, rounds: int, barrier: Any, results: Any) -> None:
    """One process of the race: at every round all claim at once; the winner reports and releases."""
    store = MetadataStore(location)
    for rnd in range(rounds):
        barrier.wait(60)
        lease = store.claim("race", "both", worker, 30)
        barrier.wait(60)  # everyone tried before the winner frees the lease
        if lease is not None:
            results.put((rnd, lease.epoch, worker))
            store.release(lease)
    store.close()


def test_concurrent_claims_from_processes(store: MetadataStore, location: str) -> None:
    store.submit("race", settings("race"))
    ctx = mp.get_context("spawn")
    procs, rounds = 4, 8
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_claimer, args=(location, f"w{i}", rounds, barrier, results)) for i in range(procs)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(180)
    assert [p.exitcode for p in workers] == [0] * procs
    won = sorted(results.get(timeout=10) for _ in range(rounds))
    assert results.empty()
    assert [r for r, _, _ in won] == list(range(rounds))  # exactly one winner per round
    assert [e for _, e, _ in won] == list(range(1, rounds + 1))  # one epoch each, in order
    assert store.fleet_status("race")[0]["epoch"] == rounds


def _opener(location: str, barrier: Any) -> None:
    barrier.wait(60)
    MetadataStore(location).log("t", None, "INFO", "opened")


def test_concurrent_creation_from_processes(location: str) -> None:
    """Several processes open a store that does not exist yet: each creates or waits, none fails."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_opener, args=(location, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0] * 4
    assert MetadataStore(location).search_logs(grep="opened").height == 4


# ---------------------------------------------------------------------------------------- migrations, location


V2_DDL = """
CREATE TABLE tasks (name TEXT PRIMARY KEY, settings TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, task TEXT NOT NULL, kind TEXT NOT NULL, started_at TEXT NOT NULL,
    ended_at TEXT, status TEXT NOT NULL, error TEXT);
CREATE TABLE table_stats (run_id TEXT NOT NULL, task TEXT NOT NULL, "schema" TEXT NOT NULL, "table" TEXT NOT NULL,
    operation TEXT NOT NULL, rows_read INTEGER NOT NULL DEFAULT 0, rows_written INTEGER NOT NULL DEFAULT 0,
    rows_filtered INTEGER NOT NULL DEFAULT 0, rows_failed INTEGER NOT NULL DEFAULT 0,
    duration_s REAL NOT NULL DEFAULT 0, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, "schema", "table", operation));
CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, task TEXT, run_id TEXT,
    level TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE errors (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, task TEXT, run_id TEXT, "schema" TEXT,
    "table" TEXT, operation TEXT, error TEXT NOT NULL, payload TEXT, "key" TEXT);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, task TEXT NOT NULL, "table" TEXT,
    first_lsn TEXT, end_lsn TEXT, error TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, payload_ref TEXT);
CREATE TABLE task_targets (task TEXT NOT NULL, source_schema TEXT NOT NULL, source_table TEXT NOT NULL,
    target TEXT NOT NULL, target_schema TEXT NOT NULL, target_table TEXT NOT NULL, columns TEXT NOT NULL,
    key_columns TEXT NOT NULL, mode TEXT NOT NULL, start_col TEXT, end_col TEXT, current_col TEXT,
    updated_at TEXT NOT NULL, PRIMARY KEY (task, source_schema, source_table));
PRAGMA user_version = 2;
"""


def test_migration_from_a_version_2_sqlite_file(tmp_path: Path, trempy_home: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V2_DDL)
    now = "2026-01-02T03:04:05.000006+00:00"
    conn.execute("INSERT INTO tasks VALUES ('old', ?, ?)", (json.dumps(settings("old")), now))
    conn.execute("INSERT INTO runs VALUES ('r1', 'old', 'cdc', ?, NULL, 'running', NULL)", (now,))
    conn.execute("INSERT INTO logs (time, task, run_id, level, message) VALUES (?, 'old', 'r1', 'INFO', 'v2 line')", (now,))
    conn.commit()
    conn.close()
    store = MetadataStore(path)
    with store.backend.read() as run:
        assert store.backend.current_version(run) == SCHEMA_VERSION
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.load_task("old") == settings("old")
    assert store.runs("old")["run_id"].to_list() == ["r1"]
    [line] = store.search_logs("old").to_dicts()
    assert (line["message"], line["table"], line["worker"], line["ts"].year) == ("v2 line", None, None, 2026)
    assert store.fleet_status("old")[0]["desired"] == "stopped"  # saved, never submitted
    store.submit("old", settings("old"))
    assert store.claim("old", "both", "w1", 30).epoch == 1  # type: ignore[union-attr]
    store.close()
    again = MetadataStore(path)  # opening a current store changes nothing
    assert again.fleet_status("old")[0]["epoch"] == 1


def test_password_is_masked(pg_cluster: Cluster, trempy_home: Path) -> None:
    uri = pg_cluster.create_database(f"store_{time.monotonic_ns()}")
    password = pg_cluster.password
    assert password and password in uri
    store = MetadataStore(uri)
    assert password not in repr(store) and "***" in repr(store) and password not in store.location
    store.close()
    bad = f"postgresql://u:{PW}@127.0.0.1:1/db"
    with pytest.raises(ConnectionFailed) as info:
        MetadataStore(bad)
    assert PW not in str(info.value) and "***" in str(info.value)


def test_location_resolution(tmp_path: Path, trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TREMPY_METADATA_URL", raising=False)
    assert MetadataStore().path == trempy_home / "metadata.sqlite3"
    monkeypatch.setenv("TREMPY_METADATA_URL", str(tmp_path / "env.sqlite3"))
    assert MetadataStore().path == tmp_path / "env.sqlite3"
    monkeypatch.setenv("TREMPY_METADATA_URL", "sqlite://" + str(tmp_path / "url.sqlite3"))
    assert MetadataStore().path == tmp_path / "url.sqlite3"
    monkeypatch.setenv("TREMPY_METADATA_URL", "no_such_connection")
    with pytest.raises(SettingsError, match="not a saved connection"):
        MetadataStore()
    with pytest.raises(SettingsError, match="not MariaDB"):
        MetadataStore("mysql://u@h/db")


def test_saved_connection_name_selects_postgresql(pg_cluster: Cluster, trempy_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    uri = pg_cluster.create_database(f"store_{time.monotonic_ns()}")
    conns.save_connection("fleetstore", uri)
    monkeypatch.setenv("TREMPY_METADATA_URL", "fleetstore")
    store = MetadataStore()
    assert store.kind == "postgresql" and store.path is None
    store.submit("t1", settings("t1"))
    assert MetadataStore(uri).fleet_status()[0]["task"] == "t1"


def test_lost_connections_are_transient_and_replaced(pg_cluster: Cluster, trempy_home: Path) -> None:
    """The server ends every store session (a restart, a failover): calls fail as transient
    ConnectionFailed (masked) until the broken pooled connections are replaced, then work."""
    uri = pg_cluster.create_database(f"store_{time.monotonic_ns()}")
    store = MetadataStore(uri)
    store.submit("t1", settings("t1"))
    lease = store.claim("t1", "both", "w1", 60)
    assert lease is not None
    assert MetadataStore(uri).backend is store.backend  # one pool per process and database
    with psycopg.connect(uri, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'trempy_nb:store' AND datname = current_database()"
        ).fetchone()[0]
    assert killed >= 1
    failures = []
    for _ in range(10):
        try:
            ok = store.renew(lease)
            break
        except ConnectionFailed as exc:
            failures.append(exc)
    else:
        pytest.fail("the store never came back")
    assert ok is True and len(failures) <= killed
    assert all(f.transient and pg_cluster.password not in str(f) and "state store" in str(f) for f in failures)
    assert store.fleet_status("t1")[0]["worker"] == "w1"


def test_a_run_records_into_a_postgresql_store(pg_cluster: Cluster, source_uri: str, target_uri: str,
                                               trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine writes runs, stats and targets through $TREMPY_METADATA_URL: a full load plus
    CDC until caught up leaves them in the PostgreSQL store, and nothing in $TREMPY_HOME's SQLite file."""
    from tests.cdc_helpers import drop_task, execute
    from tests.cdc_helpers import settings as task_doc
    from trempy_nb.task import Task

    store_uri = pg_cluster.create_database(f"store_{time.monotonic_ns()}")
    monkeypatch.setenv("TREMPY_METADATA_URL", store_uri)
    execute(source_uri, "CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    execute(source_uri, "INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 50) g")
    name = f"pgstore_{time.monotonic_ns() % 10**8}"
    try:
        result = Task.from_settings(task_doc(name, source_uri, target_uri, rtype="full_load_and_cdc")).run(
            until_caught_up=True, progress=False)
        assert "succeeded" in repr(result)
        store = MetadataStore(store_uri)
        [run] = store.runs(name).to_dicts()
        assert (run["kind"], run["status"]) == ("full_load_and_cdc", "succeeded")
        assert store.stats(task=name)["rows_written"].sum() == 50
        assert store.targets(name)["target_table"].to_list() == ["t"]
        assert not (trempy_home / "metadata.sqlite3").exists()
    finally:
        drop_task(source_uri, name)
