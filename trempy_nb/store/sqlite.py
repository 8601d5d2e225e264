"""The SQLite backend: one file under $TREMPY_HOME, nothing to install.

WAL mode lets readers (the dashboard) run while a runner writes; each thread gets its
own connection and every write is one short `BEGIN IMMEDIATE` transaction with a
generous busy timeout, so several threads and processes of ONE host can write safely
(a network file system breaks SQLite's locks: a fleet on several hosts needs PostgreSQL).
The store's clock is this host's clock (`clock_timestamp()` is registered as a function),
so leases are consistent between the processes of the host.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from trempy_nb.store.backend import Backend, Cursor, utc_now
from trempy_nb.store.schema import SCHEMA_VERSION, SQLITE

__all__ = ["SqliteBackend", "iso"]

T = TypeVar("T")


def iso(value: datetime) -> str:
    """UTC ISO-8601 with microseconds: fixed width, so it sorts as text and parses as a Polars datetime."""
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _clock() -> str:
    return iso(utc_now())


def _after(seconds: float) -> str:
    return iso(utc_now() + timedelta(seconds=float(seconds)))


def retry_locked(fn: Callable[[], T], timeout: float) -> T:
    """Run `fn`, retrying while SQLite reports the database locked/busy (bounded by `timeout`).

    Schema creation and the WAL switch can fail at once with "database is locked" when another
    connection is doing the same (not every lock wait goes through the busy timeout)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class _Run:
    """Statements on one sqlite3 connection (`?` placeholders as written)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, [tuple(r) for r in rows])


class SqliteBackend(Backend):
    """Tables in one SQLite file, safe across threads and processes of one host."""

    dialect = SQLITE
    text_times = True

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        conn = self.conn()

        def create() -> None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                self.apply_migrations(_Run(conn))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        if int(conn.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
            retry_locked(create, self.timeout)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection: sqlite3 connections must not be shared between threads (nor forks)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = " + str(int(self.timeout * 1000)))  # an int; pragmas take no parameters
            # switching to WAL takes an exclusive lock and does not wait on the busy handler: two
            # stores opened at the same instant (two runner threads) would get "database is locked"
            retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), self.timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.create_function("clock_timestamp", 0, _clock)
            conn.create_function("trempy_after", 1, _after)
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def read(self) -> Iterator[_Run]:
        yield _Run(self.conn())

    @contextmanager
    def write(self) -> Iterator[_Run]:
        """One short write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _Run(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def param_time(self, value: datetime) -> str:
        return iso(value)

    def current_version(self, run: Any) -> int:
        user_version = int(run.execute("PRAGMA user_version").fetchone()[0])
        try:
            row = run.execute("SELECT max(version) FROM schema_version").fetchone()
        except sqlite3.OperationalError:  # no such table: a store from before version 3
            return user_version
        return max(user_version, int(row[0] or 0))

    def columns(self, run: Any, table: str) -> set[str]:
        return {r[0] for r in run.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()}

    def record_version(self, run: Any, version: int) -> None:
        run.execute("DELETE FROM schema_version")
        run.execute("INSERT INTO schema_version (version, updated_at) VALUES (?, ?)", (version, _clock()))
        run.execute("PRAGMA user_version = " + str(int(version)))  # PRAGMA takes no parameters; an int

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def describe(self) -> str:
        return str(self.path)
