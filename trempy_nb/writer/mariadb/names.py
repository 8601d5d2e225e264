"""Identifier quoting for MariaDB/MySQL: backticks, a backtick inside a name doubled.

Names never enter SQL text any other way; values travel as bind parameters or
through LOAD DATA. PyMySQL fills `%s` placeholders by Python %-formatting, so a
quoted name doubles its `%` too and every statement goes through `execute`
(always with a parameter tuple, maybe empty), which turns `%%` back into `%`.
Pure: no I/O, except `execute`, which only hands the text to a cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: MariaDB's limit for database, table and column names (characters)
MAX_NAME = 64


def quote(name: str) -> str:
    """`name` as a quoted identifier; refuses what MariaDB cannot name (empty, NUL, too long)."""
    if not isinstance(name, str) or not name:
        raise ValueError("an identifier must be a non-empty string")
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL character")
    if len(name) > MAX_NAME:
        raise ValueError(f"identifier {name!r} is longer than MariaDB's {MAX_NAME} characters")
    if name != name.rstrip(" "):
        raise ValueError(f"identifier {name!r} ends with a space, which MariaDB does not allow")
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def qualified(database: str, table: str) -> str:
    """`database`.`table`."""
    return f"{quote(database)}.{quote(table)}"


def column_list(columns: Sequence[str], alias: str | None = None) -> str:
    """`a`, `b` (or s.`a`, s.`b` with an alias)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + quote(c) for c in columns)


def key_match(key: Sequence[str], left: str = "t", right: str = "s") -> str:
    """t.`k1` = s.`k1` AND ... (keys are never NULL)."""
    return " AND ".join(f"{left}.{quote(k)} = {right}.{quote(k)}" for k in key)


def database_of(conn: Any) -> str:
    """The database a connection selected (where the task's state tables live)."""
    db = conn.db
    return db.decode() if isinstance(db, bytes) else str(db or "")


def execute(cur: Any, statement: str, params: Sequence[Any] = ()) -> int:
    """Run a statement built here (names quoted by `quote`, values as %s placeholders)."""
    return int(cur.execute(statement, tuple(params)))
