"""`%trempy run NAME --detach` in a real IPython shell: the task goes to the state store, a local
worker is started (none was alive) in a session of its own, runs the task, and keeps running
after the cell; a second --detach finds the live worker. SQLite store under $TREMPY_HOME."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.notebooks.test_magics import define, run
from trempy_nb.db import connect
from trempy_nb.notebook.magics import TrempyMagicError


def test_run_detach_starts_a_local_worker_that_runs_the_task(shell: Any, hr: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from trempy_nb.fleet import spawn
    from trempy_nb.metadata import MetadataStore

    monkeypatch.delenv("TREMPY_METADATA_URL", raising=False)
    define(shell)
    with pytest.raises(TrempyMagicError, match="--detach runs on a worker"):
        run(shell, "%trempy run t_hr --detach --wait")
    note = run(shell, "%trempy run t_hr --detach")
    proc = spawn._SPAWNED[-1]
    try:
        text = repr(note)
        assert "No worker was alive: started local worker" in text and f"pid {proc.pid}" in text
        assert os.getsid(proc.pid) != os.getsid(0)
        store = MetadataStore()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = store.fleet_status("t_hr")[0]
            if row["state"] == "streaming":
                break
            assert row["state"] != "failed", row
            time.sleep(0.3)
        assert row["state"] == "streaming" and row["pid"] == proc.pid, row
        assert "live worker(s) will claim it" in repr(run(shell, "%trempy run t_hr --detach"))
        with connect(hr["source"], autocommit=True) as conn:
            conn.execute("UPDATE employees.employee SET salary = salary + 1000 WHERE id = 2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            hist = run(shell, "%trempy history t_hr employees.employee id=2")
            if hist.height == 2:
                break
            time.sleep(0.3)
        assert hist["scd_current"].to_list() == [False, True]
        assert (hr["home"] / "workers").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0
