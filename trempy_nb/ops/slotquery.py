"""The one module of the slot cockpit that talks to the source: every slot of the cluster, the
server's WAL position and settings, and a WAL-rate sample. The rest of `ops.slots` is pure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from trempy_nb.changes import lsn_to_int

__all__ = ["ServerFacts", "drop_inactive_slot", "drop_own_publication", "read_server", "read_slots", "sample_wal_rate"]

# pg_replication_slots gained wal_status/safe_wal_size in PostgreSQL 13; older servers get NULLs.
# lag_s: the walsender's replay_lag (pg_stat_replication), known only while a consumer streams.
_SLOTS = """
SELECT s.slot_name::text, s.plugin::text, s.slot_type, s.database::text, s.active, s.active_pid,
       s.restart_lsn::text, s.confirmed_flush_lsn::text,
       CASE WHEN s.restart_lsn IS NOT NULL
            THEN (pg_current_wal_lsn() - s.restart_lsn)::bigint END AS retained_bytes,
       CASE WHEN s.confirmed_flush_lsn IS NOT NULL
            THEN (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint END AS lag_bytes,
       {wal_cols},
       extract(epoch FROM r.replay_lag)::float8 AS lag_s
FROM pg_replication_slots s
LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
ORDER BY s.slot_name
"""
_WAL_COLS_13 = "s.wal_status, s.safe_wal_size::bigint"
_WAL_COLS_OLD = "NULL::text AS wal_status, NULL::bigint AS safe_wal_size"


@dataclass(frozen=True)
class ServerFacts:
    """The source server as the cockpit needs it: where WAL is now and how much a slot may keep."""

    database: str
    version_num: int
    current_lsn: int
    max_slot_wal_keep_size: int | None  # bytes; None = unlimited (-1) or before PostgreSQL 13
    wal_segment_size: int


def read_server(conn: psycopg.Connection) -> ServerFacts:
    """Current database, version, WAL position and max_slot_wal_keep_size (bytes, None = unlimited)."""
    row = conn.execute(
        "SELECT current_database()::text, current_setting('server_version_num')::int,"
        " pg_current_wal_lsn()::text, current_setting('wal_segment_size')"
    ).fetchone()
    assert row is not None
    keep: int | None = None
    if row[1] >= 130000:
        value = conn.execute(
            "SELECT setting::bigint, unit FROM pg_settings WHERE name = 'max_slot_wal_keep_size'"
        ).fetchone()
        if value is not None and value[0] >= 0:
            keep = int(value[0]) * _unit_bytes(value[1])
    return ServerFacts(row[0], int(row[1]), lsn_to_int(row[2]), keep, _size(row[3]))


def read_slots(conn: psycopg.Connection, version_num: int) -> list[dict[str, Any]]:
    """Every replication slot of the cluster (all databases, logical and physical), one dict each."""
    cols = _WAL_COLS_13 if version_num >= 130000 else _WAL_COLS_OLD
    cur = conn.execute(_SLOTS.format(wal_cols=cols))  # a constant choice of column lists
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def sample_wal_rate(conn: psycopg.Connection, seconds: float) -> tuple[float, float]:
    """(bytes of WAL written per second, seconds measured): pg_current_wal_lsn() read twice,
    `seconds` apart. A sample, not pg_stat_wal's average since its last reset: the projection
    is about the rate now."""
    first = conn.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()").fetchone()
    time.sleep(max(0.0, seconds))
    second = conn.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()").fetchone()
    assert first is not None and second is not None
    elapsed = max(1e-6, (second[1] - first[1]).total_seconds())
    return max(0, lsn_to_int(second[0]) - lsn_to_int(first[0])) / elapsed, elapsed


def _unit_bytes(unit: str | None) -> int:
    return {"B": 1, "kB": 1024, "8kB": 8192, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}.get(unit or "MB", 1024**2)


def _size(text: str) -> int:
    """'16MB' / '16777216' (current_setting of a size) to bytes."""
    text = text.strip()
    for suffix, mult in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024), ("B", 1)):
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * mult
    return int(text)


def drop_inactive_slot(conn: psycopg.Connection, name: str) -> bool:
    """Drop a slot only if no process uses it (no wait, no termination); True if dropped."""
    try:
        row = conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND NOT active",
            (name,),
        ).fetchone()
    except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
        return False  # taken (or dropped) between the check and the drop
    return row is not None


def drop_own_publication(conn: psycopg.Connection, name: str) -> bool:
    """Drop the publication of that name in this database if our role owns it (one made by the
    tables' owner for a least-privilege task is left alone, as `drop_task_objects` does)."""
    owned = conn.execute(
        "SELECT pg_has_role(current_user, pubowner, 'USAGE') FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if owned is None or not owned[0]:
        return False
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    return True
