"""The PostgreSQL backend: the store in schema `trempy_metadata` of any database, for many hosts.

The schema is created and migrated on open under a transaction-level advisory lock, so
any number of processes may open a fresh database at once. Connections come from a small
pool shared by every store object of the process for that database (`PostgresBackend.shared`:
a worker with twenty task threads needs a handful, not twenty); reads run in
autocommit, writes are one short transaction each. Every session sets timeouts so that
nothing the store does can hang the fleet: a statement waits at most `lock_timeout` for a
row lock, and the server ends a session that a partitioned client left idle inside a
transaction (`idle_in_transaction_session_timeout`), releasing its row locks; TCP
keepalives and `tcp_user_timeout` notice a dead link on the client side. A lost
connection surfaces as a transient `ConnectionFailed` and is replaced on the next call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from trempy_nb.db import connect
from trempy_nb.errors import ConnectionFailed
from trempy_nb.redact import mask
from trempy_nb.store.backend import Backend, Cursor
from trempy_nb.store.schema import POSTGRESQL, SCHEMA_VERSION

__all__ = ["SCHEMA", "PostgresBackend"]

SCHEMA = "trempy_metadata"
#: pg_advisory_xact_lock key serialising schema creation and migration ("trempymd" in ASCII)
MIGRATION_LOCK = 0x7472656D70796D64
#: session settings of every store connection (see the module docstring)
SESSION_SETTINGS = (
    ("lock_timeout", "5s"),
    ("statement_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "15s"),
)
#: libpq options noticing a dead link (seconds; tcp_user_timeout in ms)
LINK_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


class _Run:
    """Statements on one psycopg connection: `?` placeholders become `%s` (a literal % is doubled)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @staticmethod
    def _sql(text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def execute(self, text: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(self._sql(text), tuple(params) or None)

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(text), [tuple(r) for r in rows])


#: one backend (one pool, one migration check) per store address in a process: a worker's twenty
#: runners each open a MetadataStore, and together they must not hold more than POOL_SIZE connections
_SHARED: dict[tuple[str, int], PostgresBackend] = {}
_SHARED_LOCK = threading.Lock()
POOL_SIZE = 8


class PostgresBackend(Backend):
    """Tables in schema trempy_metadata of a PostgreSQL database, safe with many writers on many hosts."""

    dialect = POSTGRESQL
    text_times = False

    @classmethod
    def shared(cls, conninfo: str, *, timeout: float = 30.0) -> PostgresBackend:
        """This process's backend for `conninfo`, created (and the schema checked) on first use."""
        key = (conninfo, os.getpid())
        with _SHARED_LOCK:
            backend = _SHARED.get(key)
            if backend is None:
                backend = _SHARED[key] = cls(conninfo, timeout=timeout)
            return backend

    def __init__(self, conninfo: str, *, pool_size: int = POOL_SIZE, timeout: float = 30.0) -> None:
        self._conninfo = conninfo
        self.pool_size = max(1, pool_size)
        self.timeout = timeout
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        with self._checkout() as conn:
            self._migrate(conn)

    # ------------------------------------------------------------------ connections

    def _new(self) -> psycopg.Connection[Any]:
        try:
            conn = connect(self._conninfo, autocommit=True, application_name="trempy_nb:store", **LINK_OPTIONS)
        except ConnectionFailed as exc:  # already one masked line: say which database it was
            raise ConnectionFailed(f"state store unreachable: {exc}", exc.sqlstate) from None
        try:
            for name, value in SESSION_SETTINGS:
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))
        except psycopg.Error as exc:
            conn.close()
            raise self._failure(exc) from None
        return conn

    def _failure(self, exc: BaseException) -> ConnectionFailed:
        """A driver error as one masked line naming the store (transient unless the server refused us)."""
        first = mask(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ConnectionFailed(f"state store {self.describe()}: {first}", getattr(exc, "sqlstate", None))

    @contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for the length of one operation; a broken one is dropped, not returned."""
        if os.getpid() != self._pid:  # a forked child must not share its parent's sockets
            self._idle, self._open, self._cond, self._pid = [], 0, threading.Condition(), os.getpid()
        deadline = time.monotonic() + self.timeout
        conn: psycopg.Connection[Any] | None = None
        with self._cond:
            while not self._idle and self._open >= self.pool_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionFailed(f"state store {self.describe()}: no free connection in {self.timeout:.0f} s")
                self._cond.wait(left)
            if self._idle:
                conn = self._idle.pop()
            else:
                self._open += 1
        try:
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    conn.close()
                conn = self._new()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        healthy = False
        try:
            yield conn
            healthy = True
        except psycopg.OperationalError as exc:
            raise self._failure(exc) from None
        finally:
            with self._cond:
                if healthy and not conn.closed and not conn.broken and conn.info.transaction_status == 0:
                    self._idle.append(conn)
                else:
                    self._open -= 1
                    conn.close()
                self._cond.notify()

    @contextmanager
    def read(self) -> Iterator[_Run]:
        with self._checkout() as conn:
            yield _Run(conn)

    @contextmanager
    def write(self) -> Iterator[_Run]:
        with self._checkout() as conn, conn.transaction():
            yield _Run(conn)

    # ------------------------------------------------------------------ schema

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or migrate the schema; the advisory lock makes concurrent openers take turns."""
        if self._version_unlocked(conn) >= SCHEMA_VERSION:
            return
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(SCHEMA)))
                self.apply_migrations(_Run(conn))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConnectionFailed(
                f"state store {self.describe()}: cannot create schema {SCHEMA} ({mask(str(exc)).splitlines()[0]});"
                " create it once as a privileged role, or grant CREATE on the database", "42501"
            ) from None

    def _version_unlocked(self, conn: psycopg.Connection[Any]) -> int:
        """The recorded version, read without the lock (the common case: nothing to do)."""
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_version",)
        ).fetchone()
        if not row or not row[0]:
            return 0
        found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(found[0] or 0) if found else 0

    def current_version(self, run: Any) -> int:
        found = run.execute("SELECT to_regclass(?) IS NOT NULL", (f"{SCHEMA}.schema_version",)).fetchone()
        if not found[0]:
            return 0
        return int(run.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)

    def columns(self, run: Any, table: str) -> set[str]:
        rows = run.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            (SCHEMA, table),
        ).fetchall()
        return {r[0] for r in rows}

    def record_version(self, run: Any, version: int) -> None:
        run.execute("DELETE FROM schema_version")
        run.execute("INSERT INTO schema_version (version, updated_at) VALUES (?, clock_timestamp())", (version,))

    def param_time(self, value: datetime) -> datetime:
        return value

    def close(self) -> None:
        """Close the idle connections (the pool is shared: connections in use elsewhere in the process stay)."""
        with self._cond:
            for conn in self._idle:
                conn.close()
            self._open -= len(self._idle)
            self._idle.clear()

    def describe(self) -> str:
        return mask(self._conninfo)
