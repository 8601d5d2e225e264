"""`trempy-nb submit | stop | status` and `--metadata` as a user runs them (subprocesses), on a
PostgreSQL state store and on the SQLite default; outputs are compared with what the store holds."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cdc_helpers import drop_task, run_cli, write_settings
from trempy_nb.embedded import Cluster
from trempy_nb.store import ENV_VAR, MetadataStore

STATUS_KEYS = {"task", "desired", "state", "worker", "host", "pid", "heartbeat_age_s", "lag_bytes",
               "changes_applied", "error", "role", "lag_s", "epoch"}


def doc(name: str, table: str = "a") -> dict[str, Any]:
    return {"task": {"task_name": name, "source": "src", "target": "tgt", "replication_type": "full_load_and_cdc"},
            "tables": [{"schema_name": "public", "table_name": table}]}


@pytest.fixture
def store_url(pg_cluster: Cluster, trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(ENV_VAR, raising=False)
    return pg_cluster.create_database(f"fleetcli_{time.monotonic_ns()}")


def test_submit_stop_status_with_metadata(store_url: str, tmp_path: Path, pg_cluster: Cluster) -> None:
    path = write_settings(tmp_path / "t1.json", doc("t1"))
    res = run_cli(["submit", str(path), "--metadata", store_url])
    assert res.returncode == 0, res.stderr
    assert "submitted task t1" in res.stdout and "no live worker" in res.stderr
    store = MetadataStore(store_url)
    assert store.fleet_status("t1")[0]["desired"] == "running"

    # a worker owns it: changed settings are refused, then accepted with --replace
    store.register_worker("w1", "host-a", 77, ["both"], 60)
    assert store.claim("t1", "both", "w1", 60) is not None
    store.report("t1", state="streaming", worker="w1", lag_bytes=10, lag_s=0.25, changes_applied=3)
    write_settings(path, doc("t1", table="b"))
    res = run_cli(["--metadata", store_url, "submit", str(path)])
    assert res.returncode == 1 and "--replace" in res.stderr and "w1" in res.stderr
    assert store.load_task("t1")["tables"][0]["table_name"] == "a"
    res = run_cli(["submit", str(path), "--replace", f"--metadata={store_url}"])
    assert res.returncode == 0, res.stderr
    assert store.load_task("t1")["tables"][0]["table_name"] == "b"

    # the environment variable works like --metadata
    res = run_cli(["status", "--json"], env={ENV_VAR: store_url})
    assert res.returncode == 0, res.stderr
    [row] = json.loads(res.stdout)
    assert STATUS_KEYS <= set(row)
    assert (row["task"], row["desired"], row["state"], row["worker"], row["host"], row["pid"]) == (
        "t1", "running", "streaming", "w1", "host-a", 77)
    assert (row["lag_bytes"], row["lag_s"], row["changes_applied"], row["epoch"], row["error"]) == (10, 0.25, 3, 1, None)
    assert row["heartbeat_age_s"] >= 0

    text = run_cli(["status", "--metadata", store_url]).stdout
    assert "t1" in text and "streaming" in text and "workers: w1 (host-a, pid 77, alive" in text

    res = run_cli(["stop", "t1", "--metadata", store_url])
    assert res.returncode == 0 and "w1 drains and stops it" in res.stdout
    assert store.fleet_status("t1")[0]["desired"] == "stopped"
    res = run_cli(["stop", "nope", "--metadata", store_url])
    assert res.returncode == 2 and "known tasks: t1" in res.stderr
    res = run_cli(["status", "nope", "--json", "--metadata", store_url])
    assert res.returncode == 2 and res.stdout == ""
    assert pg_cluster.password not in res.stderr + text


def test_default_store_is_sqlite_in_trempy_home(trempy_home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    path = write_settings(tmp_path / "t2.json", doc("t2"))
    assert run_cli(["submit", str(path)]).returncode == 0
    assert MetadataStore(trempy_home / "metadata.sqlite3").fleet_status()[0]["task"] == "t2"
    data = json.loads(run_cli(["status", "--json"]).stdout)
    assert [(r["task"], r["state"], r["worker"]) for r in data] == [("t2", "pending", None)]
    # --metadata reaches the report commands too
    other = tmp_path / "other.sqlite3"
    MetadataStore(other).save_task("elsewhere", doc("elsewhere"))
    res = run_cli(["runs", "t2", "--metadata", str(other)])
    assert res.returncode == 2 and "elsewhere" in res.stderr


def test_unreachable_store_is_one_masked_line(trempy_home: Path) -> None:
    secret = "Unre4chable-pw"
    res = run_cli(["status", "--metadata", f"postgresql://u:{secret}@127.0.0.1:1/db"])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "state store unreachable" in lines[0] and secret not in res.stderr
    assert "u:***@127.0.0.1:1/db" in lines[0]


def test_a_run_outside_the_fleet_shows_in_status(trempy_home: Path, tmp_path: Path, source_uri: str,
                                                  target_uri: str) -> None:
    """A plain `trempy-nb run` (no worker, no submit) reports itself: another process's `status`
    shows it streaming with its host and pid and the changes it applied, then stopped after SIGTERM."""
    with psycopg.connect(source_uri, autocommit=True) as c:
        c.execute("CREATE TABLE public.a (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO public.a SELECT i, 'x' FROM generate_series(1, 10) i")
    d = {"task": {"task_name": "solo", "source": source_uri, "target": target_uri,
                  "replication_type": "full_load_and_cdc", "interval_seconds": 0.1},
         "tables": [{"schema_name": "public", "table_name": "a"}]}
    path = write_settings(tmp_path / "solo.json", d)
    proc = subprocess.Popen([sys.executable, "-m", "trempy_nb.cli", "run", str(path), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def row() -> dict[str, Any] | None:
            res = run_cli(["status", "solo", "--json"])
            return json.loads(res.stdout)[0] if res.returncode == 0 else None

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ((r := row()) is None or r["state"] != "streaming"):
            time.sleep(0.5)
        assert r is not None and r["state"] == "streaming", r
        assert (r["desired"], r["pid"], r["host"]) == ("running", proc.pid, socket.gethostname())
        assert r["worker"] == f"run@{socket.gethostname()}:{proc.pid}"
        with psycopg.connect(source_uri, autocommit=True) as c:
            c.execute("UPDATE public.a SET v = 'y' WHERE id <= 4")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ((r := row()) is None or r["changes_applied"] != 4):
            time.sleep(0.5)
        assert r is not None and r["changes_applied"] == 4, r
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    r = row()
    assert r is not None and (r["state"], r["desired"], r["worker"]) == ("stopped", "stopped", None), r
    drop_task(source_uri, "solo")
