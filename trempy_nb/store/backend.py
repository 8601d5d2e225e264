"""What the store facade needs from a database: reads, short write transactions, the clock, migration.

SQL is written once with `?` placeholders and the few dialect words of `schema.Dialect`;
each backend runs it on its own driver. A backend returns timestamps either as ISO text
(SQLite) or as aware datetimes (PostgreSQL); `to_datetime` reads both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Protocol

from trempy_nb.store.schema import MIGRATIONS, SCHEMA_VERSION, Dialect, Step

__all__ = ["Backend", "Cursor", "Runner", "to_datetime", "utc_now"]


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses (sqlite3 and psycopg cursors both fit)."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Runner(Protocol):
    """Runs statements on one connection: inside a write transaction or an autocommit read."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_datetime(value: Any) -> datetime | None:
    """A timestamp read back from either backend (ISO text or datetime), as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Backend(ABC):
    """One database holding the store's tables; thread-safe, shared by every thread of a process."""

    dialect: Dialect
    #: True when timestamps come back as text (SQLite), False when as datetimes
    text_times: bool

    @abstractmethod
    def read(self) -> AbstractContextManager[Runner]:
        """A connection for reads (autocommit: every statement sees the latest commits)."""

    @abstractmethod
    def write(self) -> AbstractContextManager[Runner]:
        """One short write transaction, committed on exit, rolled back on error."""

    @abstractmethod
    def param_time(self, value: datetime) -> Any:
        """A timestamp as this backend's driver takes it for a timestamp column."""

    @abstractmethod
    def current_version(self, run: Runner) -> int:
        """The schema version recorded (0 for a store not created yet)."""

    @abstractmethod
    def columns(self, run: Runner, table: str) -> set[str]:
        """The column names a table has now."""

    @abstractmethod
    def record_version(self, run: Runner, version: int) -> None:
        """Record the schema version reached."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, masked (for repr and messages)."""

    def now(self) -> Any:
        """Now, as a timestamp parameter."""
        return self.param_time(utc_now())

    def apply_migrations(self, run: Runner) -> int:
        """Bring the schema to SCHEMA_VERSION inside the caller's (locked) transaction; the version reached.

        A store newer than this code is left alone: every step only adds, so older code keeps working."""
        version = self.current_version(run)
        if version >= SCHEMA_VERSION:
            return version
        for step in MIGRATIONS:
            if step.version > version:
                self._apply(run, step)
        self.record_version(run, SCHEMA_VERSION)
        return SCHEMA_VERSION

    def _apply(self, run: Runner, step: Step) -> None:
        for statement in self.dialect.ddl(step.ddl):
            run.execute(statement)
        for table, column, kind in step.columns:
            if column not in self.columns(run, table):
                run.execute(self.dialect.add_column(table, column, kind))

