"""One error policy for the full load and the change apply (pure: no I/O, callables in).

Every failure is one of three kinds (`classify`):

- transient: worth trying again (connection lost, deadlock, serialization failure, server
  shutting down, lock timeout). Retried with capped exponential backoff (`retry`, `backoff`).
- row: caused by the values of some rows (SQLSTATE classes in `ROW_LEVEL_CLASSES`, e.g. a CHECK,
  NOT NULL, unique or foreign key violation, a value out of range, a trigger's RAISE). The
  failing set is split in halves (`isolate`) down to single rows (full load) or keys (CDC);
  each bad one then stops the run or is recorded and skipped, per `error_handling` (`decide`).
- terminal: anything else (privileges, a missing table or column, a lost slot, bad settings).
  Never retried, never split: it stops at once with one message, whatever the flags say.

Flags: the most specific setting wins. For a change of operation insert, update or delete,
`stop_if_<operation>_error` decides when the settings document sets it explicitly; otherwise
the mode's flag (`stop_if_upsert_error` or `stop_if_scd2_error`) does. Full-load rows are inserts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, TypeVar

import psycopg

from trempy_nb.errors import CONNECT_TERMINAL_SQLSTATES, RowError, TerminalError, TrempyError
from trempy_nb.settings import ErrorHandling

Operation = Literal["insert", "update", "delete"]
Mode = Literal["upsert", "scd2"]
T = TypeVar("T")
U = TypeVar("U")

#: SQLSTATE classes (first two characters) or codes whose cause is the rows' values: isolate them.
#: 22 data exception (bad input syntax, out of range, too long...), 23 integrity constraint
#: violation (not null, foreign key, unique, check, exclusion), 44 WITH CHECK OPTION violation,
#: P0 PL/pgSQL raise (a trigger rejecting a row), 54000 program limit exceeded (an index row too big).
ROW_LEVEL_CLASSES = ("22", "23", "44", "P0")
ROW_LEVEL_CODES = ("54000",)

#: Worth retrying: 08 connection exception, 40001 serialization failure, 40P01 deadlock, 53 insufficient
#: resources (too many connections, out of memory, disk full), 55P03 lock not available, 55006 object
#: in use, 57014 query canceled, 57P01-57P03 server shutting down or starting, 57P05 idle session
#: timeout, 58030 I/O error.
TRANSIENT_CLASSES = ("08", "53")
TRANSIENT_CODES = ("40001", "40P01", "55P03", "55006", "57014", "57P01", "57P02", "57P03", "57P05", "58030")

_CONNECT_TERMINAL = CONNECT_TERMINAL_SQLSTATES  # 28 invalid authorization, 3D000 no such database

#: The stream loop and the broker consumer reconnect and retry a batch at least this many times
#: (a server restart takes seconds; the slot or the queue keeps every change meanwhile).
RECONNECT_MIN_RETRIES = 10


class Kind(Enum):
    TRANSIENT = "transient"
    ROW = "row"
    TERMINAL = "terminal"


def sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def classify(exc: BaseException) -> Kind:
    """Transient, row-level or terminal (see the module docstring)."""
    if isinstance(exc, TrempyError):
        # our own errors carry their category (ConnectionFailed sets it per cause)
        return Kind.TRANSIENT if exc.transient else Kind.TERMINAL
    code = sqlstate(exc)
    if isinstance(exc, psycopg.OperationalError) and not code:
        return Kind.TRANSIENT  # the connection broke (no server answer to classify)
    if isinstance(exc, psycopg.Error):
        if code.startswith(_CONNECT_TERMINAL):
            return Kind.TERMINAL
        if code.startswith(TRANSIENT_CLASSES) or code in TRANSIENT_CODES:
            return Kind.TRANSIENT
        if code.startswith(ROW_LEVEL_CLASSES) or code in ROW_LEVEL_CODES:
            return Kind.ROW
        return Kind.TERMINAL
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Kind.TRANSIENT
    return Kind.TERMINAL


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth retrying (the classifier's first kind)."""
    return classify(exc) is Kind.TRANSIENT


# --- retries ----------------------------------------------------------------------------------


def backoff(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): base * 2**(attempt-1), capped."""
    return min(cap, base * 2 ** max(0, attempt - 1))


def reconnect_budget(max_retries: int) -> int:
    """How many times a batch is retried on a fresh connection (stream loop, broker consumer)."""
    return max(int(max_retries), RECONNECT_MIN_RETRIES)


def retry(
    fn: Callable[[], T],
    max_retries: int,
    *,
    retryable: Callable[[BaseException], bool] = is_transient,
    base: float = 0.1,
    cap: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fn()`, retried up to `max_retries` times while it raises a retryable error; else re-raised."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= max_retries or not retryable(exc):
                raise
            attempt += 1
            sleep(backoff(attempt, base=base, cap=cap))


def attempt(
    fn: Callable[[], T],
    max_retries: int,
    what: str | Callable[[], str],
    *,
    retryable: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
    kind_of: Callable[[BaseException], Kind] = classify,
) -> tuple[T | None, BaseException | None]:
    """Run one write (the caller wraps it in a savepoint): (result, None) on success, (None, error)
    when the rows' values are at fault. A transient error that outlives the retries is re-raised
    as is (the caller's caller reconnects); a terminal one becomes one `TerminalError` naming
    `what` (operation and table; a callable is asked only then): splitting would only repeat it
    for every row. `kind_of` classifies another driver's errors (the MariaDB target's)."""
    try:
        return retry(fn, max_retries, retryable=retryable, sleep=sleep), None
    except Exception as exc:
        kind = kind_of(exc)
        if kind is Kind.ROW:
            return None, exc
        if kind is Kind.TRANSIENT or isinstance(exc, TrempyError):
            raise
        raise TerminalError(terminal_message(what if isinstance(what, str) else what(), exc)) from exc


def isolate(
    unit: U,
    run: Callable[[U], BaseException | None],
    split: Callable[[U], Sequence[U] | None],
    on_bad: Callable[[U, BaseException], None],
) -> None:
    """Run `unit`; on a row-level error run each half of it, down to units `split` cannot divide
    (one row, one key), which go to `on_bad` with their error. `run` returns the row-level error
    or None and raises anything else, so a terminal error never splits."""
    error = run(unit)
    if error is None:
        return
    halves = split(unit)
    if not halves:
        on_bad(unit, error)
        return
    for half in halves:
        isolate(half, run, split, on_bad)


# --- flags ------------------------------------------------------------------------------------


def deciding_flag(eh: ErrorHandling, operation: Operation, mode: Mode) -> str:
    """The error_handling field that decides for a failed change: the operation's flag when the
    document sets it, else the mode's."""
    own = f"stop_if_{operation}_error"
    return own if own in eh.model_fields_set else f"stop_if_{mode}_error"


@dataclass(frozen=True)
class Decision:
    stop: bool
    flag: str  # the error_handling field that decided
    operation: Operation


def decide(eh: ErrorHandling, operations: Iterable[Operation], mode: Mode) -> Decision:
    """Stop or record-and-skip for a bad row or key whose changes have these `operations` (a key of
    an SCD2 batch may hold several, applied together): stop if any operation's flag says so."""
    ops = list(dict.fromkeys(operations)) or ["insert"]
    first: Decision | None = None
    for op in ops:
        flag = deciding_flag(eh, op, mode)
        d = Decision(bool(getattr(eh, flag)), flag, op)
        if d.stop:
            return d
        first = first or d
    assert first is not None
    return first


_OPS: dict[str, Operation] = {"I": "insert", "U": "update", "D": "delete"}


def operation_of(op_code: str | None) -> Operation:
    """A change's operation from its I/U/D code (a full-load row, no code, is an insert)."""
    return _OPS.get(op_code or "I", "insert")


# --- records and messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class BadRow:
    """A change recorded and skipped: what the metadata store keeps for it."""

    schema: str
    table: str
    operation: Operation
    key: dict[str, Any]
    payload: dict[str, Any]
    error: str


def error_text(exc: BaseException) -> str:
    """One line: the server's message (its first line when there are several)."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def terminal_message(what: str, exc: BaseException) -> str:
    code = sqlstate(exc)
    state = f" [SQLSTATE {code}]" if code else ""
    return f"{what} failed: {error_text(exc)}{state} (not a data error: stopped, error_handling flags do not apply)"


_PREPOSITION = {"insert": "into", "update": "of", "delete": "from"}


def describe(operation: str, table: str) -> str:
    """'insert into dw.items', 'update of dw.items', 'delete from dw.items'."""
    return f"{operation} {_PREPOSITION.get(operation, 'into')} {table}"


def row_error(table: str, decision: Decision, error: str, key: dict[str, Any] | None = None) -> RowError:
    """The one-line error that stops a run because a flag says so (`key` None: a truncate)."""
    which = f"for key {key}" if key is not None else "(truncate)"
    return RowError(
        f"{describe(decision.operation, table)} failed {which}: {error}"
        f" (error_handling.{decision.flag} is true)"
    )
