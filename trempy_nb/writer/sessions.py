"""A task's sessions on a PostgreSQL server, found by application_name and terminated (eviction).

Every connection a run opens carries `trempy_nb:<task>:<what>` (`db.task_app_name`).
A worker taking a task over terminates the previous owner's sessions: a frozen
(SIGSTOPped) process keeps its sockets open, so its locks, its slot and its row
locks would otherwise stay held and the new owner would wait forever. Terminating
the server side rolls back whatever the zombie had in flight.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

#: how long pg_terminate_backend waits for each backend to exit (ms)
TERMINATE_WAIT_MS = 5000


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching names that start with `prefix` (its wildcards escaped)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def named_pids(conn: psycopg.Connection, like: str, *, unlike: str | None = None,
               keep: Iterable[int] = ()) -> list[int]:
    """Backends of this database whose application_name matches `like` (and not `unlike`),
    other than this connection's and `keep`."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s"
        " AND (%s::text IS NULL OR application_name NOT LIKE %s) AND pid <> pg_backend_pid()"
        " AND NOT pid = ANY(%s::int[])",
        (like, unlike, unlike, [int(p) for p in keep]),
    ).fetchall()
    return [int(r[0]) for r in rows]


def terminate(conn: psycopg.Connection, pids: Iterable[int]) -> list[int]:
    """Terminate each backend and wait (bounded) until it is gone; returns the pids terminated."""
    done = []
    for pid in dict.fromkeys(int(p) for p in pids):
        row = conn.execute("SELECT pg_terminate_backend(%s, %s)", (pid, TERMINATE_WAIT_MS)).fetchone()
        if row and row[0]:
            done.append(pid)
    return done


def terminate_named(conn: psycopg.Connection, like: str, *, unlike: str | None = None,
                    keep: Iterable[int] = ()) -> list[int]:
    """`named_pids`, terminated."""
    return terminate(conn, named_pids(conn, like, unlike=unlike, keep=keep))
