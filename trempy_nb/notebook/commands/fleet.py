"""The state store's view of every task, beside this kernel's runners: `%trempy status` and `%trempy stop`.

A task may run in this kernel (a runner of `SESSION`), in another kernel, a CLI process or a
worker on another host; the state store (`%config Trempy.metadata_url`, else
$TREMPY_METADATA_URL, else SQLite in $TREMPY_HOME) knows the desired state of all of them and
what their owners report. A kernel runner's row comes from the runner itself (fresher);
every other task's row from the store.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import polars as pl

from trempy_nb.errors import ConnectionFailed
from trempy_nb.notebook.commands.session import SESSION, _store
from trempy_nb.notebook.render import KeyValues, Note
from trempy_nb.redact import mask
from trempy_nb.store import ACTIVE_STATES

__all__ = ["STATUS_SCHEMA", "status_frame", "store_task_status", "stop_in_store"]

STATUS_SCHEMA: dict[str, Any] = {
    "task": pl.String,
    "status": pl.String,
    "running": pl.Boolean,
    "changes": pl.Int64,
    "lag_s": pl.Float64,
    "error": pl.String,
    "desired": pl.String,
    "runs_in": pl.String,
    "worker": pl.String,
    "host": pl.String,
    "pid": pl.Int64,
    "heartbeat_age_s": pl.Float64,
    "lag_bytes": pl.Int64,
    "role": pl.String,
}


def _store_rows() -> list[dict[str, Any]]:
    """Every task role of the store; an unreachable store is said once and shows nothing."""
    try:
        return _store().fleet_status()
    except ConnectionFailed as exc:
        print(f"trempy: state store not read: {mask(str(exc))}", file=sys.stderr)
        return []


def status_frame() -> pl.DataFrame:
    """This kernel's runners, then every other task of the state store, one row per task role."""
    stored = _store_rows()
    desired = {r["task"]: r["desired"] for r in stored}
    here, pid = socket.gethostname(), os.getpid()
    rows = [
        {
            "task": n,
            "status": r.status,
            "running": r.running,
            "changes": r.counters.changes,
            "lag_s": round(r.counters.lag_seconds, 3),
            "error": "" if r.error is None else str(r.error),
            "desired": desired.get(n),
            "runs_in": "this kernel",
            "worker": None,
            "host": here,
            "pid": pid,
            "heartbeat_age_s": 0.0,
            "lag_bytes": r.counters.lag_bytes,
            "role": getattr(r, "role", None) or "both",
        }
        for n, r in SESSION.runners.items()
    ]
    for r in stored:
        if r["task"] in SESSION.runners:
            continue
        rows.append({
            "task": r["task"],
            "status": r["state"],
            "running": r["state"] in ACTIVE_STATES and r["worker"] is not None,
            "changes": r["changes_applied"],
            "lag_s": r["lag_s"],
            "error": r["error"] or "",
            "desired": r["desired"],
            "runs_in": r["worker"] or "",
            "worker": r["worker"],
            "host": r["host"],
            "pid": r["pid"],
            "heartbeat_age_s": r["heartbeat_age_s"],
            "lag_bytes": r["lag_bytes"],
            "role": r["role"],
        })
    return pl.DataFrame(rows, schema=STATUS_SCHEMA)


def store_task_status(name: str) -> KeyValues:
    """One task of the store (not running in this kernel): desired and actual state per role."""
    rows = _store().fleet_status(name)  # UnknownTask lists the known names
    out: list[tuple[str, Any]] = [("desired", rows[0]["desired"])]
    for r in rows:
        prefix = "" if len(rows) == 1 else f"{r['role']} "
        owner = f"{r['worker']} on {r['host']}, pid {r['pid']}" if r["worker"] else "nobody"
        out += [
            (f"{prefix}state", r["state"]),
            (f"{prefix}owner", owner),
            (f"{prefix}heartbeat", "-" if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.1f} s ago"),
            (f"{prefix}lag", "-" if r["lag_s"] is None and r["lag_bytes"] is None
             else f"{r['lag_s'] or 0:.2f} s, {r['lag_bytes'] or 0:,} bytes"),
            (f"{prefix}changes applied", "-" if r["changes_applied"] is None else f"{r['changes_applied']:,}"),
            (f"{prefix}lease epoch", str(r["epoch"])),
        ]
        if r["error"]:
            out.append((f"{prefix}error", r["error"]))
    return KeyValues(f"task {name} (state store)", out)


def stop_in_store(name: str) -> Note:
    """Set a task that does not run in this kernel desired-stopped; its owner drains and stops it."""
    store = _store()
    store.set_desired(name, "stopped")  # UnknownTask lists the store's tasks
    owners = sorted({f"{r['worker']} on {r['host']}" for r in store.fleet_status(name) if r["worker"]})
    if owners:
        return Note(f"task {name}: desired stopped in the state store; {', '.join(owners)} drains and stops it", "ok")
    return Note(f"task {name}: desired stopped in the state store (no worker runs it)", "ok")
