"""Errors carry a category: transient ones are retried with backoff, terminal ones stop.

Every message is one line meant for a user; it never carries a password
(see `connections.mask`).
"""

from __future__ import annotations


class TrempyError(Exception):
    """Base of every error the tool raises on purpose."""

    transient: bool = False
    exit_code: int = 1


class SettingsError(TrempyError):
    """The settings document is invalid (names the field path). Exit code 2."""

    exit_code = 2


class UnknownTask(SettingsError):
    """A task name nobody saved or ran (exit code 2; the message lists the known names)."""


class ValidationFailed(SettingsError):
    """The settings do not fit the live source (unknown table/column, wrong type...)."""


class ConnectionFailed(TrempyError):
    """A database or broker could not be reached or refused the credentials."""


class TransientError(TrempyError):
    """Worth retrying: connection reset, serialization failure, broker gone."""

    transient = True


class TerminalError(TrempyError):
    """Stops the task: lost slot, missing key, schema change that cannot be applied."""


class SlotLost(TerminalError):
    """The replication slot is missing, recreated or invalidated while a checkpoint exists."""


class SchemaChanged(TerminalError):
    """A source column was dropped or retyped under a running task."""


class RowError(TrempyError):
    """A batch failed on the target and a stop_if_* flag says stop."""


class AlreadyRunning(TerminalError):
    """Another runner holds this task."""


def is_transient(exc: BaseException) -> bool:
    """Classify any exception: our own by their flag, psycopg's by SQLSTATE class."""
    if isinstance(exc, TrempyError):
        return exc.transient
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, psycopg.OperationalError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        # 28xxx: authentication; 3D000: no such database -> terminal
        return not (sqlstate.startswith("28") or sqlstate == "3D000")
    if isinstance(exc, psycopg.Error):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        # 40001 serialization, 40P01 deadlock, 57P01 admin shutdown, 08xxx connection
        return sqlstate in ("40001", "40P01", "57P01", "57P02", "57P03") or sqlstate.startswith("08")
    return isinstance(exc, (ConnectionError, TimeoutError))
