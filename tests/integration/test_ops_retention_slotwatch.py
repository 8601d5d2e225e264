"""Log retention deletes only records older than the setting, in small batches, on both an
explicit call and the background start; a worker's slot watch logs one warning when its slot
crosses the retained-WAL threshold (not one per check) and one note when it falls back."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from tests.cdc_helpers import execute, run_cli
from trempy_nb.embedded import Cluster
from trempy_nb.errors import SettingsError
from trempy_nb.metadata import MetadataStore
from trempy_nb.ops import retention
from trempy_nb.ops.slotwatch import check_slot


def test_retention_deletes_only_old_records_in_batches(trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MetadataStore()
    now = datetime.now(timezone.utc)
    old = [((now - timedelta(days=8, seconds=i)).isoformat(timespec="microseconds"), "t", "INFO", f"old {i}")
           for i in range(1234)]
    assert store.path is not None
    with sqlite3.connect(store.path) as db:
        db.executemany("INSERT INTO logs (time, task, level, message) VALUES (?, ?, ?, ?)", old)
    for i in range(5):
        store.log("t", None, "INFO", f"new {i}")
    monkeypatch.delenv("TREMPY_LOG_RETENTION", raising=False)
    assert retention.retention() == timedelta(days=7)
    assert retention.prune(store, batch=100, pause_s=0) == 1234
    left = store.search_logs("t", limit=10_000)
    assert left["message"].to_list() == [f"new {i}" for i in range(5)]
    monkeypatch.setenv("TREMPY_LOG_RETENTION", "1s")
    time.sleep(1.1)
    thread = retention.prune_soon(MetadataStore())
    assert thread is not None
    thread.join(30)
    assert store.search_logs("t", limit=10).height == 0
    assert retention.prune_soon(MetadataStore()) is None  # once an hour per process and store
    monkeypatch.setenv("TREMPY_LOG_RETENTION", "off")
    assert retention.retention() is None and retention.prune(store) == 0
    monkeypatch.setenv("TREMPY_LOG_RETENTION", "a week")
    with pytest.raises(SettingsError, match="TREMPY_LOG_RETENTION"):
        retention.retention()


def test_slot_watch_warns_once_when_the_threshold_is_crossed(trempy_home: Path, source_uri: str) -> None:
    store = MetadataStore()
    task = "w" + uuid.uuid4().hex[:8]
    slot = f"trempy_{task}"
    with psycopg.connect(source_uri, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            st = check_slot(store, task, conn, threshold=10**12, worker="w1")
            assert st is not None and store.search_logs(task).height == 0  # under the threshold
            execute(source_uri, "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g")
            st = check_slot(store, task, conn, threshold=100_000, worker="w1")
            assert st is not None and st.retained_bytes is not None and st.retained_bytes >= 100_000
            check_slot(store, task, conn, threshold=100_000, worker="w1")  # still above: no new line
            logs = store.search_logs(task)
            assert logs["level"].to_list() == ["WARNING"] and logs["worker"].to_list() == ["w1"]
            fields = json.loads(logs["fields"][0])
            assert fields["slot"] == slot and fields["threshold_bytes"] == 100_000
            assert fields["retained_bytes"] == st.retained_bytes
            check_slot(store, task, conn, threshold=10**12, worker="w1")  # back under it
            assert store.search_logs(task)["level"].to_list() == ["WARNING", "INFO"]
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_postgresql_store_search_cli_and_retention(pg_cluster: Cluster, trempy_home: Path) -> None:
    """The same search (CLI --metadata) and retention against the PostgreSQL backend."""
    uri = pg_cluster.create_database(f"ops_store_{uuid.uuid4().hex[:8]}")
    store = MetadataStore(uri)
    try:
        store.save_task("pgt", {"task": {"task_name": "pgt"}})
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("INSERT INTO trempy_metadata.logs (time, task, level, message)"
                         " SELECT now() - interval '10 days' - g * interval '1 second', 'pgt', 'INFO', 'old ' || g"
                         " FROM generate_series(1, 300) g")
        store.log("pgt", None, "WARNING", "new warning", table="public.t", fields={"n": 1})
        store.log("pgt", None, "INFO", "new info")
        assert retention.prune(store, keep=timedelta(days=7), batch=64, pause_s=0) == 300
        assert store.search_logs("pgt", limit=1000)["message"].to_list() == ["new warning", "new info"]
        res = run_cli(["logs", "pgt", "--metadata", uri, "--level", "warning", "--json"])
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        assert [(r["message"], r["table"], r["fields"]) for r in rows] == [("new warning", "public.t", {"n": 1})]
        res = run_cli(["logs", "pgt", "--metadata", uri, "--since", "1d", "--json"])
        assert [r["message"] for r in json.loads(res.stdout)] == ["new warning", "new info"]
        assert pg_cluster.password not in res.stdout + res.stderr
    finally:
        store.close()
