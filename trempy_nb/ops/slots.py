"""The slot cockpit: every replication slot of a source, what it retains, who owns it, orphans.

Pure computation over what `slotquery` reads from the source and what the metadata store
knows of the tasks; `cockpit()` is the one function that does I/O (through those two).

A slot is trempy's when it is named like one (`trempy_<task>`, capture/slot.py). It is an
**orphan** when it is inactive and either its task is unknown to the store, or its task is not
wanted running (no fleet desired state `running`), has no owner, and was last seen (worker
heartbeat, else its latest run's start or end) longer than `orphan_after` ago. An active slot,
a slot of another tool, and a slot of a task that is owned or wanted running are never orphans.

The projection `fill_eta_s` is the time until `max_slot_wal_keep_size` would invalidate the
slot if it stopped advancing now, at the WAL rate sampled from `pg_current_wal_lsn()` twice a
short interval apart (`wal_rate_bytes_s`); None when the setting is unlimited or no WAL was
written during the sample. The volume holding pg_wal is not readable over SQL without
superuser file functions, so it is not projected.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from trempy_nb.capture.slot import slot_name
from trempy_nb.changes import int_to_lsn, lsn_to_int
from trempy_nb.db import connect
from trempy_nb.ops import slotquery

__all__ = [
    "DEFAULT_ORPHAN_AFTER",
    "Cockpit",
    "SlotView",
    "TaskInfo",
    "classify",
    "parse_duration",
    "task_of_slot",
]

DEFAULT_ORPHAN_AFTER = timedelta(hours=24)
_PREFIX = slot_name("")  # "trempy_"
_TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DURATION_FORMS = "a number and a unit: 30s, 15m, 1h, 2d, 1w"


def parse_duration(text: str) -> timedelta:
    """'30s', '15m', '1h', '2d', '1w' as a timedelta; ValueError naming the accepted forms."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"cannot read the duration {text!r}: give {DURATION_FORMS}")
    return timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})


def task_of_slot(name: str) -> str | None:
    """The task a slot named like trempy's belongs to, or None for any other slot."""
    if not name.startswith(_PREFIX):
        return None
    task = name[len(_PREFIX):]
    return task if _TASK_NAME.match(task) else None


@dataclass(frozen=True)
class TaskInfo:
    """What the store knows of one task: fleet state (if any worker reports it) and last sign of life."""

    name: str
    desired: str | None = None  # fleet desired state: running / stopped; None outside the fleet
    state: str | None = None  # fleet actual state, else the latest run's status
    owner: str | None = None  # the worker holding it, when that worker is alive
    last_seen: datetime | None = None  # worker heartbeat, else the latest run's end or start
    lag_s: float | None = None


@dataclass(frozen=True)
class SlotView:
    """One row of the cockpit (`--json`: one object per slot with these keys)."""

    slot_name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_bytes: int | None
    lag_bytes: int | None
    lag_s: float | None
    wal_status: str | None
    safe_wal_size: int | None
    task: str | None
    task_state: str | None
    owner: str | None
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    orphan: bool
    orphan_reason: str | None
    fill_eta_s: float | None

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["heartbeat_at"] = self.heartbeat_at.isoformat() if self.heartbeat_at else None
        return out


@dataclass(frozen=True)
class Cockpit:
    """Every slot of one source plus the server figures the projection used."""

    source_database: str
    current_lsn: str
    max_slot_wal_keep_size: int | None
    wal_rate_bytes_s: float
    sample_s: float
    slots: tuple[SlotView, ...]

    @property
    def orphans(self) -> list[SlotView]:
        return [s for s in self.slots if s.orphan]


def _orphan(row: dict[str, Any], task: str | None, info: TaskInfo | None, now: datetime,
            orphan_after: timedelta) -> str | None:
    """Why this slot is an orphan, or None. Only trempy-named, inactive slots can be."""
    if task is None or row.get("active"):
        return None
    if info is None:
        return f"task {task} is unknown to the metadata store"
    if info.desired == "running" or info.owner is not None or info.state in ("running", "loading",
                                                                            "streaming", "catching_up"):
        return None
    if info.last_seen is None:
        return f"task {task} has no run, owner or heartbeat"
    age = now - info.last_seen
    if age > orphan_after:
        return f"task {task} stopped, no owner, last seen {_human(age)} ago"
    return None


def fill_eta(retained: int | None, safe_wal_size: int | None, keep: int | None, rate: float) -> float | None:
    """Seconds until max_slot_wal_keep_size would invalidate a slot that stopped advancing now."""
    if keep is None or rate <= 0:
        return None
    left = safe_wal_size if safe_wal_size is not None else keep - int(retained or 0)
    return max(0.0, left / rate)


def classify(
    rows: list[dict[str, Any]],
    tasks: dict[str, TaskInfo],
    *,
    now: datetime,
    orphan_after: timedelta = DEFAULT_ORPHAN_AFTER,
    keep: int | None = None,
    wal_rate: float = 0.0,
) -> list[SlotView]:
    """Slot rows (slotquery.read_slots) joined with the store's tasks: owner, heartbeat, orphan, projection."""
    out = []
    for row in rows:
        task = task_of_slot(row["slot_name"])
        info = tasks.get(task) if task else None
        seen = info.last_seen if info else None
        lag_s = row.get("lag_s")
        if lag_s is None and info is not None:
            lag_s = info.lag_s
        reason = _orphan(row, task, info, now, orphan_after)
        out.append(SlotView(
            slot_name=row["slot_name"],
            plugin=row.get("plugin"),
            slot_type=row.get("slot_type") or "logical",
            database=row.get("database"),
            active=bool(row.get("active")),
            active_pid=row.get("active_pid"),
            restart_lsn=row.get("restart_lsn"),
            confirmed_flush_lsn=row.get("confirmed_flush_lsn"),
            retained_bytes=_int(row.get("retained_bytes")),
            lag_bytes=_int(row.get("lag_bytes")),
            lag_s=float(lag_s) if lag_s is not None else None,
            wal_status=row.get("wal_status"),
            safe_wal_size=_int(row.get("safe_wal_size")),
            task=task,
            task_state=info.state if info else None,
            owner=info.owner if info else None,
            heartbeat_at=seen,
            heartbeat_age_s=(now - seen).total_seconds() if seen else None,
            orphan=reason is not None,
            orphan_reason=reason,
            fill_eta_s=fill_eta(_int(row.get("retained_bytes")), _int(row.get("safe_wal_size")), keep, wal_rate),
        ))
    return out


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _human(age: timedelta) -> str:
    s = age.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def lsn_order(lsn: str | None) -> int:
    """An LSN's position (0 for none), to compare slots."""
    return lsn_to_int(lsn) if lsn else 0


# --------------------------------------------------------------------------- with I/O


def task_infos(store: Any, now: datetime | None = None) -> dict[str, TaskInfo]:
    """Every task the store knows, with its fleet state (fleet_status) or its latest run."""
    now = now or now_utc()
    infos: dict[str, TaskInfo] = {n: TaskInfo(n) for n in store.task_names()}
    runs = store.runs()
    if runs.height:
        latest = runs.sort("started_at", descending=True).unique("task", keep="first")
        for r in latest.iter_rows(named=True):
            seen = r["ended_at"] or r["started_at"]
            infos[r["task"]] = TaskInfo(r["task"], state=r["status"], last_seen=seen)
    for f in store.fleet_status():
        name = f["task"]
        base = infos.get(name, TaskInfo(name))
        age = f.get("heartbeat_age_s")
        seen = now - timedelta(seconds=float(age)) if age is not None else base.last_seen
        alive = age is not None and f.get("worker") and f.get("state") not in ("stopped", "failed")
        infos[name] = TaskInfo(
            name,
            desired=f.get("desired"),
            state=f.get("state") or base.state,
            owner=f.get("worker") if alive else None,
            last_seen=max((t for t in (seen, base.last_seen) if t is not None), default=None),
            lag_s=f.get("lag_s"),
        )
    return infos


def cockpit(
    source_uri: str,
    store: Any,
    *,
    orphan_after: timedelta = DEFAULT_ORPHAN_AFTER,
    sample_s: float = 1.0,
) -> Cockpit:
    """Read every slot of the source's cluster and join it with the store's tasks."""
    with connect(source_uri, autocommit=True, application_name="trempy_nb:ops:slots") as conn:
        server = slotquery.read_server(conn)
        rate, measured = slotquery.sample_wal_rate(conn, sample_s) if sample_s > 0 else (0.0, 0.0)
        rows = slotquery.read_slots(conn, server.version_num)
    now = now_utc()
    views = classify(rows, task_infos(store, now), now=now, orphan_after=orphan_after,
                     keep=server.max_slot_wal_keep_size, wal_rate=rate)
    return Cockpit(server.database, int_to_lsn(server.current_lsn), server.max_slot_wal_keep_size,
                   rate, measured, tuple(views))


def drop_orphans(
    source_uri: str,
    store: Any,
    names: list[str],
    *,
    orphan_after: timedelta = DEFAULT_ORPHAN_AFTER,
) -> list[str]:
    """Drop the slots of `names` that are still orphans in the source's own database, and their
    task's publication; returns the slots dropped. Each is checked again right before (a worker
    may have claimed the task since the listing), and `pg_drop_replication_slot` refuses an
    active slot, so an active or owned slot is never dropped; no backend is terminated."""
    again = {s.slot_name: s for s in cockpit(source_uri, store, orphan_after=orphan_after, sample_s=0).slots}
    dropped: list[str] = []
    with connect(source_uri, autocommit=True, application_name="trempy_nb:ops:drop") as conn:
        db = slotquery.read_server(conn).database
        for name in names:
            view = again.get(name)
            if view is None or not view.orphan or view.active or view.database != db or view.task is None:
                continue
            if slotquery.drop_inactive_slot(conn, name):
                slotquery.drop_own_publication(conn, name)
                dropped.append(name)
    return dropped


# --------------------------------------------------------------------------- rendering


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _eta(seconds: float | None) -> str:
    return "-" if seconds is None else _human(timedelta(seconds=seconds))


TEXT_COLUMNS = ("slot_name", "database", "plugin", "active", "active_pid", "retained", "lag",
                "lag_s", "wal_status", "safe_wal_size", "task", "state", "owner", "heartbeat_age",
                "orphan", "fill_eta")


def rows_for_display(cockpit: Cockpit) -> list[dict[str, Any]]:
    """One row of readable cells per slot (the text table and the dashboard's slots pane)."""
    return [
        {
            "slot_name": s.slot_name, "database": s.database or "-", "plugin": s.plugin or s.slot_type,
            "active": "yes" if s.active else "no", "active_pid": str(s.active_pid or "-"),
            "retained": human_bytes(s.retained_bytes), "lag": human_bytes(s.lag_bytes),
            "lag_s": "-" if s.lag_s is None else f"{s.lag_s:.1f}",
            "wal_status": s.wal_status or "-", "safe_wal_size": human_bytes(s.safe_wal_size),
            "task": s.task or "-", "state": s.task_state or "-", "owner": s.owner or "-",
            "heartbeat_age": "-" if s.heartbeat_age_s is None else _human(timedelta(seconds=s.heartbeat_age_s)),
            "orphan": "ORPHAN" if s.orphan else "", "fill_eta": _eta(s.fill_eta_s),
        }
        for s in cockpit.slots
    ]


def summary_line(c: Cockpit) -> str:
    keep = "unlimited" if c.max_slot_wal_keep_size is None else human_bytes(c.max_slot_wal_keep_size)
    rate = (f"WAL rate {human_bytes(int(c.wal_rate_bytes_s))}/s sampled over {c.sample_s:.1f} s"
            if c.sample_s else "WAL rate not sampled")
    return (f"database {c.source_database}, WAL at {c.current_lsn}, max_slot_wal_keep_size {keep},"
            f" {rate}; {len(c.slots)} slot(s), {len(c.orphans)} orphan(s)")


def cockpit_text(c: Cockpit) -> str:
    """The aligned table `trempy-nb slots` prints, under a line of server figures."""
    rows = rows_for_display(c)
    if not rows:
        return summary_line(c) + "\n(no replication slots)"
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in TEXT_COLUMNS}
    lines = ["  ".join(k.ljust(widths[k]) for k in TEXT_COLUMNS).rstrip()]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in TEXT_COLUMNS).rstrip() for r in rows]
    reasons = [f"  {s.slot_name}: {s.orphan_reason}" for s in c.slots if s.orphan]
    return "\n".join([summary_line(c), *lines, *(["orphans:", *reasons] if reasons else [])])
