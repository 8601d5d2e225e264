"""The one error policy's classification (`errorpolicy.Kind`) for MariaDB/MySQL server errors.

PyMySQL reports the server's error number, not its SQLSTATE, so the three kinds
are told by number. A LOAD DATA LOCAL INFILE turns data errors into warnings (it
behaves as IGNORE); `DataWarnings` brings them back as a row-level error so that
the batch is rolled back and split, never silently changed.
"""

from __future__ import annotations

from typing import Any

import pymysql

from trempy_nb.errors import TrempyError
from trempy_nb.writer.errorpolicy import Kind
from trempy_nb.writer.errorpolicy import classify as classify_pg

#: Caused by the rows' values: 1048 NULL in a NOT NULL column, 1062 duplicate key, 1264 out of
#: range, 1265 data truncated, 1292 incorrect (datetime) value, 1365 division by 0, 1366
#: incorrect value, 1367 illegal value, 1406 data too long, 1411 incorrect value for a function,
#: 1451/1452 foreign key, 1644 SIGNAL (a trigger refusing a row), 1690 value out of range,
#: 1916 overflow, 1918 cannot convert, 3140 invalid JSON (MySQL), 3819/4025 CHECK constraint
#: (MariaDB's JSON type is a json_valid check).
ROW_LEVEL = frozenset({1048, 1062, 1264, 1265, 1292, 1365, 1366, 1367, 1406, 1411, 1451, 1452,
                       1644, 1690, 1916, 1918, 3140, 3819, 4025})

#: Worth retrying: 1040 too many connections, 1053 server shutdown, 1205 lock wait timeout,
#: 1213 deadlock, 1927 connection killed, 2002/2003/2006/2013/2055 connection lost or refused,
#: 0 (PyMySQL: the connection is already closed).
TRANSIENT = frozenset({0, 1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055})


class DataWarnings(Exception):
    """A LOAD DATA left warnings: the server would have changed values; the batch is refused."""

    def __init__(self, warnings: list[tuple[Any, ...]]) -> None:
        self.warnings = warnings
        first = warnings[0] if warnings else ("Warning", 0, "unknown warning")
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        super().__init__(f"{first[2]} [MariaDB {first[0].lower()} {first[1]}]{more}")


def errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def classify(exc: BaseException) -> Kind:
    """Transient, row-level or terminal, as `errorpolicy.classify` does for PostgreSQL."""
    if isinstance(exc, DataWarnings):
        return Kind.ROW
    if isinstance(exc, TrempyError) or not isinstance(exc, pymysql.err.MySQLError):
        return classify_pg(exc)
    code = errno(exc)
    if isinstance(exc, pymysql.err.InterfaceError) or code in TRANSIENT:
        return Kind.TRANSIENT
    if code in ROW_LEVEL:
        return Kind.ROW
    return Kind.TERMINAL


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Kind.TRANSIENT


def message(exc: BaseException) -> str:
    """One line: the server's message with its error number (PyMySQL's args are (errno, text))."""
    code = errno(exc)
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if code is not None and len(args) > 1:
        return " ".join(f"{args[1]} [MariaDB error {code}]".split())
    return " ".join(str(exc).split()) or type(exc).__name__
