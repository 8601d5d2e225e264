"""Errors carry a category: transient ones are retried with backoff, terminal ones stop.

Every message is one line meant for a user; it never carries a password
(see `connections.mask`).
"""

from __future__ import annotations


class TrempyError(Exception):
    """Base of every error the tool raises on purpose (`writer.errorpolicy.classify` reads `transient`)."""

    transient: bool = False
    exit_code: int = 1


class SettingsError(TrempyError):
    """The settings document is invalid (names the field path). Exit code 2."""

    exit_code = 2


class UnknownTask(SettingsError):
    """A task name nobody saved or ran (exit code 2; the message lists the known names)."""


class UnknownTable(SettingsError):
    """A table that is not in the task (exit code 2; the message names the task's tables)."""


class ValidationFailed(SettingsError):
    """The settings do not fit the live source (unknown table/column, wrong type...)."""


#: SQLSTATEs (class or code) of a refused connection that no retry can cure: 28 invalid
#: authorization (wrong password, no such role), 3D000 no such database.
CONNECT_TERMINAL_SQLSTATES = ("28", "3D000")


class ConnectionFailed(TrempyError):
    """A database or broker could not be reached or refused the credentials.

    Transient (worth retrying) unless the server refused who we are or the database
    (`CONNECT_TERMINAL_SQLSTATES`); a caller that knows better sets `transient` itself."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.transient = not (sqlstate or "").startswith(CONNECT_TERMINAL_SQLSTATES)


class TransientError(TrempyError):
    """Worth retrying: connection reset, serialization failure, broker gone."""

    transient = True


class TerminalError(TrempyError):
    """Stops the task: lost slot, missing key, schema change that cannot be applied."""


class OwnedElsewhere(TerminalError):
    """The task runs elsewhere under a live lease: writing its target from here is refused (names the owner)."""


class SlotLost(TerminalError):
    """The replication slot is missing, recreated or invalidated while a checkpoint exists."""


class SchemaChanged(TerminalError):
    """A source column was dropped or retyped under a running task."""


class RowError(TrempyError):
    """A batch failed on the target and a stop_if_* flag says stop."""


class AlreadyRunning(TerminalError):
    """Another runner holds this task."""


class TaskRunning(TrempyError):
    """A changed settings document was submitted for a task that is running (submit with replace)."""


class WorkerNameTaken(TrempyError):
    """A live worker already has this name (the state store refuses a second one)."""


class Fenced(TerminalError):
    """This copy of a task lost its lease: the target holds a newer epoch (or the lease expired), so
    its write was rolled back and it stops (`writer.fence`)."""
