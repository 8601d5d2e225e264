"""`%config Trempy.metadata_url`, `%trempy status` and `%trempy stop` over a PostgreSQL state store
that other processes (here: another store object standing in for a worker) write to."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trempy_nb.embedded import Cluster
from trempy_nb.notebook.magics import TrempyMagicError
from trempy_nb.store import ENV_VAR, MetadataStore


def run(ip: Any, code: str) -> Any:
    res = ip.run_cell(code, store_history=True)
    if res.error_before_exec is not None:
        raise res.error_before_exec
    if res.error_in_exec is not None:
        raise res.error_in_exec
    return res.result


def doc(name: str) -> dict[str, Any]:
    return {"task": {"task_name": name, "source": "src", "target": "tgt", "replication_type": "full_load_and_cdc"},
            "tables": [{"schema_name": "public", "table_name": "a"}]}


@pytest.fixture
def fleet_store(pg_cluster: Cluster, trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, MetadataStore]]:
    """A PostgreSQL store where a 'worker' owns task remote1 and task idle2 is submitted but unowned."""
    monkeypatch.setenv(ENV_VAR, "")  # restored (unset) after the test, whatever %config did
    url = pg_cluster.create_database(f"nbfleet_{time.monotonic_ns()}")
    worker = MetadataStore(url)
    worker.submit("remote1", doc("remote1"))
    worker.submit("idle2", doc("idle2"))
    worker.register_worker("wk-a", "host-a", 31337, ["both"], 60)
    assert worker.claim("remote1", "both", "wk-a", 60) is not None
    worker.report("remote1", state="streaming", worker="wk-a", lag_bytes=2048, lag_s=1.5, changes_applied=42)
    yield url, worker
    worker.close()


def test_status_and_stop_of_tasks_running_elsewhere(shell: Any, fleet_store: tuple[str, MetadataStore],
                                                    pg_cluster: Cluster) -> None:
    url, worker = fleet_store
    run(shell, f"%config Trempy.metadata_url = {url!r}")
    assert os.environ[ENV_VAR] == url
    frame = run(shell, "%trempy status")
    rows = {r["task"]: r for r in frame.to_dicts()}
    assert set(rows) == {"remote1", "idle2"}
    remote = rows["remote1"]
    assert (remote["status"], remote["desired"], remote["worker"], remote["host"], remote["pid"]) == (
        "streaming", "running", "wk-a", "host-a", 31337)
    assert (remote["changes"], remote["lag_bytes"], remote["lag_s"], remote["running"]) == (42, 2048, 1.5, True)
    assert remote["heartbeat_age_s"] >= 0 and remote["runs_in"] == "wk-a"
    assert (rows["idle2"]["status"], rows["idle2"]["worker"], rows["idle2"]["running"]) == ("pending", None, False)

    one = repr(run(shell, "%trempy status remote1"))
    assert "streaming" in one and "wk-a on host-a, pid 31337" in one and "42" in one

    note = run(shell, "%trempy stop remote1")
    assert "desired stopped" in repr(note) and "wk-a on host-a drains and stops it" in repr(note)
    assert worker.fleet_status("remote1")[0]["desired"] == "stopped"
    with pytest.raises(TrempyMagicError, match="known tasks: idle2, remote1"):
        run(shell, "%trempy stop nope")
    with pytest.raises(TrempyMagicError, match="when-caught-up"):
        run(shell, "%trempy stop idle2 --when-caught-up")
    assert pg_cluster.password not in repr(frame) + one + repr(note)

    run(shell, "%config Trempy.metadata_url = ''")  # back to the environment's store (SQLite here)
    assert os.environ.get(ENV_VAR) == ""
    assert run(shell, "%trempy status").height == 0


def test_unreachable_store_still_shows_the_kernel(shell: Any, trempy_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(ENV_VAR, "postgresql://u:N0tThere-pw@127.0.0.1:1/db")
    assert run(shell, "%trempy status").height == 0
    err = capsys.readouterr().err
    assert "state store not read" in err and "N0tThere-pw" not in err
