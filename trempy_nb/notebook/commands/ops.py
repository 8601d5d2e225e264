"""`%trempy slots`, `%trempy logs` (with the CLI's filters) and the fleet view's data."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import polars as pl

from trempy_nb import reports
from trempy_nb.connections import resolve
from trempy_nb.errors import SettingsError
from trempy_nb.notebook.commands.session import SESSION, _store
from trempy_nb.ops import logsearch
from trempy_nb.ops import slots as slotmod

SLOT_SCHEMA = {
    "slot_name": pl.String, "plugin": pl.String, "slot_type": pl.String, "database": pl.String,
    "active": pl.Boolean, "active_pid": pl.Int64, "restart_lsn": pl.String, "confirmed_flush_lsn": pl.String,
    "retained_bytes": pl.Int64, "lag_bytes": pl.Int64, "lag_s": pl.Float64, "wal_status": pl.String,
    "safe_wal_size": pl.Int64, "task": pl.String, "task_state": pl.String, "owner": pl.String,
    "heartbeat_at": pl.String, "heartbeat_age_s": pl.Float64, "orphan": pl.Boolean,
    "orphan_reason": pl.String, "fill_eta_s": pl.Float64,
}


def slot_cockpit(source: str, orphan_after: str = "24h", sample: float = 1.0) -> slotmod.Cockpit:
    """The cockpit of a source (a saved connection name, a URI or ${VAR})."""
    try:
        after = slotmod.parse_duration(orphan_after)
    except ValueError as exc:
        raise SettingsError(f"--orphan-after: {exc}") from None
    return slotmod.cockpit(resolve(source), _store(), orphan_after=after, sample_s=max(0.0, sample))


def slots(source: str, orphan_after: str = "24h", sample: float = 1.0) -> pl.DataFrame:
    """Every replication slot of the source, one row each (the columns of `trempy-nb slots --json`)."""
    cockpit = slot_cockpit(source, orphan_after, sample)
    return pl.DataFrame([s.record() for s in cockpit.slots], schema=SLOT_SCHEMA, orient="row")


def logs(
    name: str | None = None,
    *,
    level: str | None = None,
    grep: str | None = None,
    table: str | None = None,
    since: str | None = None,
    limit: int = 200,
) -> pl.DataFrame:
    """Stored log records matching every filter, oldest first (the newest `limit`)."""
    if name is not None and name not in SESSION.tasks:
        reports.check_known(_store(), name)
    return logsearch.search(_store(), name, level=level, grep=grep, table=table, since=since, limit=limit)


def follow_logs(
    name: str | None,
    emit: Callable[[str], None],
    *,
    level: str | None = None,
    grep: str | None = None,
    table: str | None = None,
    since: str | None = None,
    limit: int = 200,
    timeout: float | None = None,
    interval: float = 0.5,
) -> int:
    """Emit the matching records as lines, then each new one as it is written, until `timeout`
    (None: until interrupted); returns how many lines were emitted."""
    frame = logs(name, level=level, grep=grep, table=table, since=since, limit=limit)
    count = 0
    for rec in logsearch.records(frame):
        emit(logsearch.line(rec))
        count += 1
    last = int(frame["id"][-1]) if frame.height else _last_id()
    deadline = None if timeout is None else time.monotonic() + timeout
    emitted = [count]

    def out(rec: dict[str, Any]) -> None:
        emit(logsearch.line(rec))
        emitted[0] += 1

    try:
        logsearch.follow(_store(), name, out, after_id=last, level=level, grep=grep, table=table,
                         interval=interval, stop=lambda: deadline is not None and time.monotonic() > deadline)
    except KeyboardInterrupt:
        pass
    return emitted[0]


def _last_id() -> int:
    frame = logsearch.search(_store(), None, limit=1)
    return int(frame["id"][0]) if frame.height else 0
