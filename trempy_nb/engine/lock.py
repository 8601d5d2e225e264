"""The task lock: one runner per task, across processes and machines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import psycopg

from trempy_nb.db import connect, task_app_name
from trempy_nb.errors import AlreadyRunning


@contextlib.contextmanager
def task_lock(source_uri: str, task: str, *, wait_s: float = 0.0,
              on_busy: Callable[[int], None] | None = None) -> Iterator[psycopg.Connection]:
    """A session advisory lock on the source: one runner per task, across processes and machines.

    `wait_s`: retry that long while another session holds it (a fenced takeover: the evicted
    owner's session is on its way out); `on_busy(our_pid)` is called before each retry."""
    conn = connect(source_uri, autocommit=True, application_name=task_app_name(task, "lock"))
    try:
        deadline = time.monotonic() + wait_s
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"trempy:{task}",)).fetchone()
            if row and row[0]:
                break
            if time.monotonic() >= deadline:
                raise AlreadyRunning(f"task {task} is already running elsewhere (another runner holds its lock)")
            if on_busy is not None:
                on_busy(conn.info.backend_pid)
            time.sleep(0.2)
        yield conn
    finally:
        conn.close()


#: Is a task's lock held? `task_lock` takes a session advisory lock keyed hashtext('trempy:<task>');
#: pg_locks shows a bigint key as classid (high 32 bits) and objid (low 32 bits).
_LOCK_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint)"
)


def lock_held(source_uri: str, task: str) -> bool:
    """Whether some runner (in any process) holds the task's lock: the task is running."""
    with connect(source_uri, autocommit=True, application_name=task_app_name(task, "probe")) as conn:
        row = conn.execute(_LOCK_HELD, (f"trempy:{task}",)).fetchone()
    return bool(row and row[0])
