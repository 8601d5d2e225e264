"""One `trempy-nb worker` process against real parts: bad input and store faults.

Unreachable store at start (exit 1, one masked line), a live duplicate --name (exit 2), bad
flags (exit 2), a task that keeps failing (capped backoff, then failed with its error and
desired stopped), a state store lost while running (applying goes on only while the lease is
provably valid, then stops; the worker reclaims and catches up when the store is back), and a
detached run through `Task.submit()` spawning a local worker that outlives its caller.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fleet_harness import (
    Fleet,
    UpdateLoad,
    WorkerProc,
    all_streaming,
    owners,
    scd2_task,
    wait_for,
)
from trempy_nb.embedded import Cluster, start_cluster

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trempy_nb.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=str(REPO))


@pytest.fixture
def fleet(tmp_path: Path, source_uri: str, target_uri: str, pg_cluster: Cluster) -> Iterator[Fleet]:
    meta = pg_cluster.create_database(f"meta_{uuid.uuid4().hex[:8]}")
    f = Fleet(tmp_path / "fleet", meta, {"FLEET_SRC": source_uri, "FLEET_TGT": target_uri})
    try:
        yield f
    finally:
        f.close()
        with psycopg.connect(pg_cluster.uri(), autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")


def test_unreachable_store_exits_1_with_one_masked_line(trempy_home: Path) -> None:
    res = _cli("worker", "--metadata", "postgresql://fleet:Sup3rSecretPw@127.0.0.1:1/meta")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "state store unreachable" in lines[0], res.stderr
    assert "Sup3rSecretPw" not in res.stderr + res.stdout
    assert not (trempy_home / "workers").exists()


def test_duplicate_name_and_bad_flags_exit_2(fleet: Fleet) -> None:
    env = {"TREMPY_METADATA_URL": fleet.store_url}
    for bad in (["--roles", "both,leader"], ["--lease-ttl", "0"], ["--max-tasks", "0"]):
        res = _cli("worker", *bad, env=env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (bad, res.stderr)
    first = WorkerProc(fleet, "same_name", ttl=5)
    store = fleet.store()
    wait_for(lambda: "same_name" in {w["name"] for w in store.workers() if w["alive"]}, 60, "the first worker",
             fleet.logs)
    res = _cli("worker", "--name", "same_name", env=env)
    assert res.returncode == 2 and "same_name" in res.stderr, res.stderr
    assert first.alive()
    assert first.terminate() == 0
    assert "same_name" not in {w["name"] for w in store.workers()}  # unregistered on the way out


def test_failing_task_backs_off_then_is_marked_failed(fleet: Fleet) -> None:
    store = fleet.store()
    task = f"bad_{uuid.uuid4().hex[:6]}"
    store.submit(task, scd2_task(task, "no_such_table"))
    w = WorkerProc(fleet, "w_fail", ttl=5, extra_args=["--max-failures", "2"])
    row = wait_for(lambda: (r := owners(store, [task]).get(task)) and r["state"] == "failed" and r, 90,
                   "the task marked failed", fleet.logs)
    assert "no_such_table" in (row["error"] or ""), row
    assert row["desired"] == "stopped"  # no other worker restarts it in a loop
    log = w.log()
    assert "run failed (1/2), restarting in" in log and "failed 2 times in a row, giving up" in log, log
    time.sleep(2)
    assert w.alive() and w.log().count("started (epoch") == 2  # and it stays given up
    assert w.terminate() == 0


def test_store_lost_while_running(tmp_path: Path, source_uri: str, target_uri: str) -> None:
    """The store on a cluster of its own, stopped under a streaming worker: the worker applies only
    while its lease is provably valid (ttl - margin since the last renewal), then writes nothing;
    with the store back it claims the task again and catches up, exactly."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"trempy_store_{uuid.uuid4().hex[:6]}"
    base.mkdir()
    os.chmod(base, 0o755)
    store_cluster = start_cluster(base=base)
    f = Fleet(tmp_path / "fleet", store_cluster.create_database("meta"),
              {"FLEET_SRC": source_uri, "FLEET_TGT": target_uri})
    ttl = 4.0
    try:
        load = UpdateLoad(source_uri, ["s0"], rows=20)
        task = f"lost_{uuid.uuid4().hex[:6]}"
        store = f.store()
        store.submit(task, scd2_task(task, "s0"))
        w = WorkerProc(f, "w_lost", ttl=ttl)
        wait_for(lambda: all_streaming(store, [task], {w.name}), 90, "the task streaming", f.logs)
        store.close()
        load.start(rate=20)
        time.sleep(1.5)
        store_cluster.stop("fast")
        time.sleep(ttl + 2)  # past the lease's local validity: the run must have stopped writing
        frozen = sum(v for v, _ in load.versions(target_uri, "s0").values())
        time.sleep(3)
        assert sum(v for v, _ in load.versions(target_uri, "s0").values()) == frozen, f.logs()
        assert w.alive()
        store_cluster.start()
        store = f.store()
        wait_for(lambda: all_streaming(store, [task], {w.name}), 60, "the task streaming again", f.logs)
        load.stop()
        wait_for(lambda: load.diff(target_uri)[:2] == (0, 0), 60, "exact versions", f.logs)
        log = w.log()
        assert "state store unreachable" in log and "reachable again" in log, log
        assert w.terminate() == 0
    finally:
        f.close()
        store_cluster.destroy()


def test_task_submit_spawns_a_local_worker_that_outlives_the_caller(
        trempy_home: Path, source_uri: str, target_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from trempy_nb.fleet import spawn
    from trempy_nb.metadata import MetadataStore
    from trempy_nb.task import Task

    monkeypatch.delenv("TREMPY_METADATA_URL", raising=False)  # the SQLite store under TREMPY_HOME
    monkeypatch.setenv("FLEET_SRC", source_uri)
    monkeypatch.setenv("FLEET_TGT", target_uri)
    load = UpdateLoad(source_uri, ["p0"], rows=10)
    name = f"detached_{uuid.uuid4().hex[:6]}"
    placement = Task.from_settings(scd2_task(name, "p0")).submit()
    proc: Any = spawn._SPAWNED[-1]
    try:
        assert placement.spawned is not None and placement.spawned.pid == proc.pid
        assert "No worker was alive: started local worker" in placement.message
        assert placement.spawned.log == trempy_home / "workers" / f"{placement.spawned.name}.log"
        assert os.getsid(proc.pid) != os.getsid(0)  # its own session: the caller's end does not end it
        store = MetadataStore()
        wait_for(lambda: all_streaming(store, [name], {placement.spawned.name}), 90, "the detached task streaming",
                 lambda: placement.spawned.log.read_text())
        again = Task.from_settings(scd2_task(name, "p0")).submit()
        assert again.spawned is None and placement.spawned.name in again.message
        load.start(rate=20)
        time.sleep(1)
        load.stop()
        wait_for(lambda: load.diff(target_uri)[:2] == (0, 0), 60, "exact versions",
                 lambda: placement.spawned.log.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, placement.spawned.log.read_text()[-2000:]


def test_stop_drains_the_task_and_submit_resumes_it(fleet: Fleet, tmp_path: Path) -> None:
    """`trempy-nb stop NAME`: the owner finishes its batch and releases the task (state stopped,
    worker still up); `trempy-nb submit` again: a worker claims it and continues from the
    checkpoint (no reload: exactly 1 + updates versions per key)."""
    import json

    src, tgt = fleet.uris["FLEET_SRC"], fleet.uris["FLEET_TGT"]
    load = UpdateLoad(src, ["q0"], rows=20)
    task = f"stopme_{uuid.uuid4().hex[:6]}"
    doc = scd2_task(task, "q0")
    path = tmp_path / "task.json"
    path.write_text(json.dumps(doc))
    env = {"TREMPY_METADATA_URL": fleet.store_url, **fleet.uris}
    assert _cli("submit", str(path), env=env).returncode == 0
    w = WorkerProc(fleet, "w_stop", ttl=5)
    store = fleet.store()
    wait_for(lambda: all_streaming(store, [task], {w.name}), 90, "the task streaming", fleet.logs)
    load.start(rate=20)
    time.sleep(1.5)
    res = _cli("stop", task, env=env)
    assert res.returncode == 0, res.stderr
    row = wait_for(lambda: (r := owners(store, [task]).get(task)) and r["state"] == "stopped" and r, 30,
                   "the task stopped", fleet.logs)
    assert row["desired"] == "stopped" and not row["error"]
    assert store.claimable(["both"]) == []  # released, and nobody claims a stopped task
    assert w.alive() and "desired state stopped: draining the task" in w.log()
    time.sleep(1)
    assert _cli("submit", str(path), env=env).returncode == 0
    wait_for(lambda: all_streaming(store, [task], {w.name}), 60, "the task streaming again", fleet.logs)
    load.stop()
    wait_for(lambda: load.diff(tgt)[:2] == (0, 0), 60, "exact versions", fleet.logs)
    assert " ERROR " not in w.log()
    assert w.terminate() == 0


def test_metrics_port_serves_the_store_and_a_taken_port_exits_1(fleet: Fleet, tmp_path: Path) -> None:
    """`worker --metrics-port`: scraped over HTTP while the worker applies a task's changes, the
    applied-changes counter grows by exactly the updates committed; a taken port exits 1."""
    import json
    import urllib.request

    from trempy_nb.embedded import free_port

    src = fleet.uris["FLEET_SRC"]
    load = UpdateLoad(src, ["m0"], rows=10)
    task = f"metrics_{uuid.uuid4().hex[:6]}"
    path = tmp_path / "task.json"
    path.write_text(json.dumps(scd2_task(task, "m0")))
    env = {"TREMPY_METADATA_URL": fleet.store_url, **fleet.uris}
    assert _cli("submit", str(path), env=env).returncode == 0
    port = free_port()
    w = WorkerProc(fleet, "w_metrics", ttl=5, extra_args=["--metrics-port", str(port)])
    store = fleet.store()
    wait_for(lambda: all_streaming(store, [task], {w.name}), 90, "the task streaming", fleet.logs)

    def applied() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "trempy_takeovers_total" in text
        # an SCD2 update closes one version and opens one: count the opened versions
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("trempy_changes_applied_total{") and f'task="{task}"' in line
                   and 'op="scd2 open"' in line)

    before = wait_for(lambda: (v := applied()) is not None and (v,), 30, "/metrics", fleet.logs)[0]
    load.start(rate=50)
    time.sleep(1.5)
    load.stop()
    updates = sum(load.committed.values())
    assert updates > 0
    seen: list[float] = []
    wait_for(lambda: seen.append(applied() - before) or seen[-1] == updates, 60,
             f"the counter grown by {updates}", lambda: f"grown by {seen[-3:]}\n" + fleet.logs())
    res = _cli("worker", "--name", "w_other", "--metrics-port", str(port),
               env={"TREMPY_METADATA_URL": fleet.store_url})
    assert res.returncode == 1 and str(port) in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "w_other" not in {x["name"] for x in store.workers()}  # nothing started
    assert w.terminate() == 0
