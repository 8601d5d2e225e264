"""The slot cockpit against a real cluster: a trempy task's slot (a real CDC run), a slot of
another tool holding WAL after writes, a physical slot, a hand-made orphan with the trempy
prefix and its publication, and an *active* trempy-prefixed slot with no task (held by
pg_recvlogical). Figures are checked against pg_replication_slots and pg_current_wal_lsn()
read around the command; `drop --orphans` removes the orphan and nothing else."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cdc_helpers import drop_task, execute, rows, run_cli, settings, write_settings
from trempy_nb.changes import lsn_to_int
from trempy_nb.connections import save_connection
from trempy_nb.embedded import Cluster
from trempy_nb.metadata import MetadataStore
from trempy_nb.ops.slots import cockpit


def cli_json(*args: str) -> list[dict[str, Any]]:
    res = run_cli([*args, "--json"])
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data, list)
    return data


def wal_lsn(uri: str) -> int:
    return lsn_to_int(rows(uri, "SELECT pg_current_wal_lsn()::text")[0][0])


def slot_row(uri: str, name: str) -> tuple[Any, ...] | None:
    found = rows(uri, "SELECT restart_lsn::text, confirmed_flush_lsn::text, active, plugin::text,"
                 " database::text FROM pg_replication_slots WHERE slot_name = %s", (name,))
    return found[0] if found else None


@pytest.fixture
def setup(pg_cluster: Cluster, source_uri: str, target_uri: str, trempy_home: Path,
          tmp_path: Path) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    task, other, ghost, busy, phys = (f"ops{tag}", f"othertool_{tag}", f"trempy_ghost{tag}",
                                      f"trempy_busy{tag}", f"phys_{tag}")
    save_connection("src", source_uri)
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    execute(source_uri, "INSERT INTO t SELECT i, i FROM generate_series(1, 10) i")
    path = write_settings(tmp_path / "task.json", settings(task, "src", target_uri, rtype="full_load_and_cdc"))
    res = run_cli(["run", str(path), "--until-caught-up", "-q"])
    assert res.returncode == 0, res.stderr
    with psycopg.connect(source_uri, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (other,))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (ghost,))
        conn.execute(f'CREATE PUBLICATION "{ghost}" FOR TABLE t')
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (busy,))
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (phys,))
    # writes after the slots: every slot now holds WAL
    execute(source_uri, "INSERT INTO t SELECT i, i FROM generate_series(11, 2000) i")
    recv = subprocess.Popen(
        [str(pg_cluster.bindir / "pg_recvlogical"), "-d", source_uri, "--slot", busy, "--start",
         "-f", "/dev/null", "--no-loop"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (slot_row(source_uri, busy) or (None, None, False))[2]:
            assert time.monotonic() < deadline, "pg_recvlogical never took the slot"
            assert recv.poll() is None, recv.stderr.read() if recv.stderr else ""
            time.sleep(0.1)
        yield {"task": task, "other": other, "ghost": ghost, "busy": busy, "phys": phys,
               "uri": source_uri, "path": path}
    finally:
        recv.terminate()
        recv.wait(10)
        with psycopg.connect(source_uri, autocommit=True) as conn:
            for name in (other, ghost, busy, phys):
                for _ in range(50):
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                                     " WHERE slot_name = %s", (name,))
                        break
                    except psycopg.errors.ObjectInUse:
                        time.sleep(0.1)
        drop_task(source_uri, task)


def test_cockpit_figures_owners_orphans_and_drop(setup: dict[str, Any]) -> None:
    uri = setup["uri"]
    before = wal_lsn(uri)
    listing = cli_json("slots", "src", "--sample", "0.2")
    after = wal_lsn(uri)
    by_name = {s["slot_name"]: s for s in listing}
    mine = {setup[k] for k in ("task", "other", "ghost", "busy", "phys") if k != "task"} | {f"trempy_{setup['task']}"}
    assert mine <= set(by_name)

    for name in mine:
        s = by_name[name]
        restart, confirmed, active, plugin, database = slot_row(uri, name)  # type: ignore[misc]
        assert (s["restart_lsn"], s["confirmed_flush_lsn"], s["plugin"]) == (restart, confirmed, plugin)
        assert s["database"] == database
        # retained = pg_current_wal_lsn() - restart_lsn at the moment the command read it
        assert before - lsn_to_int(restart) <= s["retained_bytes"] <= after - lsn_to_int(restart)
        if confirmed is not None:
            assert before - lsn_to_int(confirmed) <= s["lag_bytes"] <= after - lsn_to_int(confirmed)
            assert s["retained_bytes"] - s["lag_bytes"] == lsn_to_int(confirmed) - lsn_to_int(restart)
        for key in ("slot_name", "plugin", "database", "active", "retained_bytes", "lag_bytes", "task", "orphan"):
            assert key in s

    task_slot = by_name[f"trempy_{setup['task']}"]
    # the run reported itself to the store (engine.reporting): its actual state once it ended
    assert (task_slot["task"], task_slot["orphan"], task_slot["task_state"]) == (setup["task"], False, "stopped")
    assert task_slot["heartbeat_at"] is not None and task_slot["active"] is False
    other = by_name[setup["other"]]
    assert (other["task"], other["orphan"]) == (None, False)
    assert other["retained_bytes"] > 0  # the 1,990 rows written after it was made
    assert by_name[setup["phys"]]["plugin"] is None and by_name[setup["phys"]]["orphan"] is False
    ghost = by_name[setup["ghost"]]
    assert ghost["orphan"] is True and ghost["task"] == setup["ghost"][len("trempy_"):]
    assert "unknown" in ghost["orphan_reason"]
    busy = by_name[setup["busy"]]
    assert busy["active"] is True and busy["active_pid"] and busy["orphan"] is False

    text = run_cli(["slots", "src", "--sample", "0"])
    assert text.returncode == 0 and setup["ghost"] in text.stdout and "ORPHAN" in text.stdout

    # a stopped task's slot becomes an orphan only after --orphan-after without a sign of life
    time.sleep(1.2)
    aged = {s["slot_name"]: s for s in cli_json("slots", "src", "--sample", "0", "--orphan-after", "1s")}
    assert aged[f"trempy_{setup['task']}"]["orphan"] is True
    assert aged[setup["busy"]]["orphan"] is False  # active: never

    # no --yes and no terminal: listed, exit 0, nothing dropped
    listed = run_cli(["drop", "--orphans", "--source", "src"], stdin=subprocess.DEVNULL)
    assert listed.returncode == 0, listed.stderr
    assert setup["ghost"] in listed.stdout and "--yes" in listed.stderr
    assert slot_row(uri, setup["ghost"]) is not None

    dropped = run_cli(["drop", "--orphans", "--source", "src", "--yes"])
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped slot {setup['ghost']}" in dropped.stdout
    assert slot_row(uri, setup["ghost"]) is None
    assert rows(uri, "SELECT 1 FROM pg_publication WHERE pubname = %s", (setup["ghost"],)) == []
    for key in ("other", "busy", "phys"):
        assert slot_row(uri, setup[key]) is not None, key
    assert slot_row(uri, f"trempy_{setup['task']}") is not None  # known task, seen just now
    assert rows(uri, "SELECT 1 FROM pg_publication WHERE pubname = %s", (f"trempy_{setup['task']}",)) != []

    # the existing `drop TASK` still works
    gone = run_cli(["drop", setup["task"], "--source", "src"])
    assert gone.returncode == 0, gone.stderr
    assert slot_row(uri, f"trempy_{setup['task']}") is None


def test_bad_inputs(trempy_home: Path, source_uri: str) -> None:
    res = run_cli(["slots", "no_such_connection"])
    assert res.returncode == 2 and "no_such_connection" in res.stderr
    res = run_cli(["slots", source_uri, "--orphan-after", "soon"])
    assert res.returncode == 2 and "30s" in res.stderr
    res = run_cli(["drop", "--orphans"])
    assert res.returncode == 2 and "--source" in res.stderr
    res = run_cli(["drop"])
    assert res.returncode == 2


def test_fill_projection_against_max_slot_wal_keep_size(pg_cluster: Cluster, source_uri: str,
                                                        trempy_home: Path) -> None:
    """With max_slot_wal_keep_size set and WAL being written during the sample, fill_eta_s is the
    server's safe_wal_size over the sampled WAL rate."""
    name = f"keep_{uuid.uuid4().hex[:8]}"
    admin = pg_cluster.uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        conn.execute("SELECT pg_reload_conf()")
    stop = threading.Event()

    def churn() -> None:  # WAL written while the cockpit samples the rate
        with psycopg.connect(source_uri, autocommit=True) as c:
            c.execute("CREATE TABLE churn (g int, pad text)")
            while not stop.is_set():
                c.execute("INSERT INTO churn SELECT g, repeat('x', 100) FROM generate_series(1, 500) g")
                time.sleep(0.01)

    writer = threading.Thread(target=churn, daemon=True)
    try:
        with psycopg.connect(source_uri, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
            deadline = time.monotonic() + 10
            while rows(source_uri, "SELECT current_setting('max_slot_wal_keep_size')")[0][0] != "1GB":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            writer.start()
            c = cockpit(source_uri, MetadataStore(), sample_s=0.5)
            stop.set()
            writer.join(10)
            view = next(s for s in c.slots if s.slot_name == name)
            assert c.max_slot_wal_keep_size == 1024**3 and c.wal_rate_bytes_s > 0
            assert view.safe_wal_size is not None and view.safe_wal_size > 0  # the server's own figure
            assert view.fill_eta_s == pytest.approx(view.safe_wal_size / c.wal_rate_bytes_s)
            assert view.wal_status in ("reserved", "extended")
            text = run_cli(["slots", source_uri, "--sample", "0"])
            assert text.returncode == 0 and "max_slot_wal_keep_size 1.0 GB" in text.stdout
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    finally:
        stop.set()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
