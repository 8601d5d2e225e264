"""The task lock: one runner per task, across processes and machines."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from trempy_nb.db import connect
from trempy_nb.errors import AlreadyRunning


@contextlib.contextmanager
def task_lock(source_uri: str, task: str) -> Iterator[psycopg.Connection]:
    """A session advisory lock on the source: one runner per task, across processes and machines."""
    conn = connect(source_uri, autocommit=True, application_name=f"trempy_nb:{task}:lock")
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"trempy:{task}",)).fetchone()
        if not row or not row[0]:
            raise AlreadyRunning(f"task {task} is already running elsewhere (another runner holds its lock)")
        yield conn
    finally:
        conn.close()
