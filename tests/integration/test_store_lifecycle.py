"""The state store's per-table lifecycle part on both backends (SQLite, PostgreSQL): requests go
requested -> running -> done|failed, the owner's poll sees only open ones, table states and the last
diff per table replace earlier rows, errors are masked; a version-3 store migrates to the current version."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trempy_nb.embedded import Cluster
from trempy_nb.store import SCHEMA_VERSION, MetadataStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, trempy_home: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        where = str(tmp_path / "store.sqlite3")
    else:
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        where = cluster.create_database(f"store_{time.monotonic_ns()}")
    s = MetadataStore(where)
    yield s
    s.close()


def test_requests_states_and_diffs(store: MetadataStore) -> None:
    a = store.request_table("t1", "public.a", "pause")
    b = store.request_table("t1", "public.b", "resync", {"baseline": True})
    store.request_table("t2", "public.a", "add")
    assert [(r["id"], r["action"], r["options"]) for r in store.open_table_requests("t1")] == [
        (a, "pause", {}), (b, "resync", {"baseline": True})]
    store.start_table_request(a)
    assert [r["state"] for r in store.open_table_requests("t1")] == ["running", "requested"]
    store.end_table_request(a, "done", message="paused")
    store.end_table_request(b, "failed", error="postgresql://u:hunter2secret@h/db refused")
    assert store.open_table_requests("t1") == []
    done = store.table_request(a)
    failed = store.table_request(b)
    assert done is not None and done["state"] == "done" and done["message"] == "paused"
    assert failed is not None and "hunter2secret" not in failed["error"]
    assert store.table_requests("t1")["id"].to_list() == [b, a]  # newest first
    with pytest.raises(ValueError, match="table action"):
        store.request_table("t1", "public.a", "explode")

    store.set_table_state("t1", "public.a", "paused", request_id=a)
    store.set_table_state("t1", "public.a", "streaming", request_id=a)
    states = store.table_states("t1")
    assert states.select("table", "state").rows() == [("public.a", "streaming")]
    with pytest.raises(ValueError, match="table state"):
        store.set_table_state("t1", "public.a", "sleeping")

    store.record_diff("t1", "public.a", "dw.a", source_rows=10, target_rows=9, missing=1, extra=0, different=0,
                      repaired=0, summary="1 missing")
    store.record_diff("t1", "public.a", "dw.a", source_rows=10, target_rows=10, missing=0, extra=0, different=0,
                      repaired=0, summary="equal")
    diffs = store.table_diffs("t1")
    assert diffs.height == 1 and diffs["summary"].to_list() == ["equal"]


def test_a_version_3_sqlite_store_migrates(tmp_path: Path, trempy_home: Path) -> None:
    path = tmp_path / "old.sqlite3"
    MetadataStore(path).close()
    with sqlite3.connect(path) as c:  # back to version 3: the lifecycle tables gone
        for t in ("table_requests", "table_state", "table_diffs"):
            c.execute(f"DROP TABLE {t}")
        c.execute("PRAGMA user_version = 3")
        c.execute("UPDATE schema_version SET version = 3")
    s = MetadataStore(path)
    try:
        assert SCHEMA_VERSION >= 4
        assert s.request_table("t", "public.a", "pause") == 1
        s.report("t", state="streaming", worker="run@h:7", host="h", pid=7)  # version 5's columns are there too
        assert (s.fleet_status("t")[0]["host"], s.fleet_status("t")[0]["pid"]) == ("h", 7)
        with s.backend.read() as run:
            assert s.backend.current_version(run) == SCHEMA_VERSION
    finally:
        s.close()
