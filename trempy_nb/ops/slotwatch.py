"""A worker's slot watch: warn in the logs when a slot it owns retains too much WAL.

`check_slot` is called by the worker on its own schedule (every heartbeat is fine): it reads the
task's slot on the worker's source connection and writes one WARNING record (fields: retained
bytes, threshold, wal_status, safe_wal_size) when the slot crosses the threshold, then again at
most every `repeat_s` while it stays above, and one INFO record when it falls back below, so
the log shows the episode without a line per check. The threshold defaults to
$TREMPY_SLOT_WARN_BYTES (bytes, default 1 GiB).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

from trempy_nb.capture.slot import SlotStatus, slot_name, slot_status

__all__ = ["DEFAULT_WARN_BYTES", "check_slot", "warn_threshold", "watch_retained"]

DEFAULT_WARN_BYTES = 1024**3
_STATE: dict[str, float] = {}  # task -> monotonic time of the last warning (absent: below)
_LOCK = threading.Lock()


def warn_threshold() -> int:
    """$TREMPY_SLOT_WARN_BYTES, else 1 GiB."""
    raw = os.environ.get("TREMPY_SLOT_WARN_BYTES", "").strip()
    return int(raw) if raw else DEFAULT_WARN_BYTES


def check_slot(
    store: Any,
    task: str,
    source_conn: psycopg.Connection,
    threshold: int | None = None,
    *,
    worker: str | None = None,
    run_id: str | None = None,
    repeat_s: float = 900.0,
) -> SlotStatus | None:
    """The task's slot status, read on `source_conn`; logs as `watch_retained` does."""
    st = slot_status(source_conn, slot_name(task))
    if st is None or st.retained_bytes is None:
        return st
    watch_retained(store, task, st.retained_bytes, threshold, worker=worker, run_id=run_id, repeat_s=repeat_s,
                   fields={"slot": st.name, "wal_status": st.wal_status, "safe_wal_size": st.safe_wal_size})
    return st


def watch_retained(
    store: Any,
    task: str,
    retained: int,
    threshold: int | None = None,
    *,
    worker: str | None = None,
    run_id: str | None = None,
    repeat_s: float = 900.0,
    fields: dict[str, Any] | None = None,
) -> None:
    """Log a WARNING when the task's slot retains `retained` bytes at or over `threshold`
    (again at most every `repeat_s`), and one INFO when it falls back under it.
    A worker calls it on each heartbeat with the figure its run already read."""
    limit = warn_threshold() if threshold is None else int(threshold)
    slot = (fields or {}).get("slot") or slot_name(task)
    record = {"slot": slot, **(fields or {}), "retained_bytes": retained, "threshold_bytes": limit}
    now = time.monotonic()
    with _LOCK:
        last = _STATE.get(task)
        if retained >= limit:
            if last is not None and now - last < repeat_s:
                return
            _STATE[task] = now
            message = (f"replication slot {slot} retains {retained:,} bytes of WAL"
                       f" (threshold {limit:,}); the task is behind or stopped")
            level = "WARNING"
        else:
            if last is None:
                return
            del _STATE[task]
            message = f"replication slot {slot} retains {retained:,} bytes again, under {limit:,}"
            level = "INFO"
    store.log(task, run_id, level, message, worker=worker, fields=record)
