"""Log retention: records older than $TREMPY_LOG_RETENTION (default 7d; `off` keeps all) are
deleted in small batches on a background thread, at most once an hour per process, started
opportunistically (a run's start, `trempy-nb logs`): no run ever waits on it, and each batch is
one short store transaction, so a writer is never blocked for long."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from trempy_nb.errors import SettingsError
from trempy_nb.logs import get_logger
from trempy_nb.ops.slots import parse_duration

__all__ = ["DEFAULT_RETENTION", "prune", "prune_soon", "retention"]

DEFAULT_RETENTION = timedelta(days=7)
BATCH = 500
_EVERY_S = 3600.0
_LAST: dict[str, float] = {}
_LOCK = threading.Lock()
_LOG = get_logger("ops.retention")


def retention() -> timedelta | None:
    """$TREMPY_LOG_RETENTION as a duration (30d, 12h...), DEFAULT_RETENTION if unset, None for off/0."""
    raw = os.environ.get("TREMPY_LOG_RETENTION", "").strip()
    if not raw:
        return DEFAULT_RETENTION
    if raw.lower() in ("off", "0", "none", "forever"):
        return None
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise SettingsError(f"TREMPY_LOG_RETENTION: {exc} (or off)") from None


def prune(store: Any, *, keep: timedelta | None = None, now: datetime | None = None,
          batch: int = BATCH, pause_s: float = 0.05, max_batches: int = 10_000) -> int:
    """Delete log records older than `keep` (default: the setting), `batch` rows per transaction;
    returns how many were deleted."""
    keep = retention() if keep is None else keep
    if keep is None:
        return 0
    before = (now or datetime.now(timezone.utc)) - keep
    total = 0
    for _ in range(max_batches):
        n = int(store.delete_logs(before=before, limit=batch))
        total += n
        if n < batch:
            break
        time.sleep(pause_s)  # let writers in between batches
    return total


def prune_soon(store: Any) -> threading.Thread | None:
    """Start `prune` on a daemon thread unless this process pruned this store within the hour."""
    key = repr(store)
    with _LOCK:
        if time.monotonic() - _LAST.get(key, -_EVERY_S) < _EVERY_S:
            return None
        _LAST[key] = time.monotonic()

    def work() -> None:
        try:
            n = prune(store)
            if n:
                _LOG.info("log retention: deleted %d record(s) older than %s", n, retention())
        except Exception as exc:  # retention must never disturb a run
            _LOG.warning("log retention failed: %s", exc)

    thread = threading.Thread(target=work, name="trempy-log-retention", daemon=True)
    thread.start()
    return thread
