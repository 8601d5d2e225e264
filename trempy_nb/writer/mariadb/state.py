"""The task's state on a MariaDB target, for the CDC session: `writer/state.py`'s functions (same
names and arguments) over the tables of the database the target URI names (the connection's).

The checkpoint itself is `apply.read_checkpoint` / `write_checkpoint` (written inside each batch's
transaction). Each function runs on the caller's connection and leaves the commit to it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from trempy_nb.writer.fence import Fence
from trempy_nb.writer.mariadb.apply import database_of
from trempy_nb.writer.mariadb.ddl import CHECKPOINTS, LOAD_STATE, SOURCE_SHAPES
from trempy_nb.writer.mariadb.fencing import check_fence
from trempy_nb.writer.mariadb.names import execute, qualified

Shape = list[tuple[str, str]]  # the source columns (name, type) a table's changes are planned with
_TABLES = {"load_state": LOAD_STATE, "source_shapes": SOURCE_SHAPES, "checkpoints": CHECKPOINTS}


def _db(conn: Any, database: str | None) -> str:
    return database or database_of(conn)


def record_slot_lsn(conn: Any, task: str, lsn: int, *, database: str | None = None,
                    fence: Fence | None = None, wait: bool = True) -> bool:
    """The slot is about to be confirmed up to `lsn` (never moves back). With a fence, in a
    transaction of its own that checks it. Always waits for the row (`wait` is the PostgreSQL
    dialect's: there a busy apply holds it); True once recorded."""
    if fence is not None:
        conn.begin()
    try:
        check_fence(conn, fence, task, database=database)
        with conn.cursor() as cur:
            execute(cur, f"UPDATE {qualified(_db(conn, database), CHECKPOINTS)}"
                    " SET slot_lsn = GREATEST(COALESCE(slot_lsn, 0), %s) WHERE task = %s", (int(lsn), task))
        if fence is not None:
            conn.commit()
        return True
    except BaseException:
        if fence is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
        raise


def read_slot_lsn(conn: Any, task: str, *, database: str | None = None) -> int:
    with conn.cursor() as cur:
        execute(cur, f"SELECT slot_lsn FROM {qualified(_db(conn, database), CHECKPOINTS)} WHERE task = %s", (task,))
        row = cur.fetchone()
    return int(row[0] or 0) if row else 0


def record_shapes(conn: Any, task: str, shapes: dict[tuple[str, str], Shape], *, database: str | None = None) -> None:
    with conn.cursor() as cur:
        for key, columns in shapes.items():
            execute(cur, f"INSERT INTO {qualified(_db(conn, database), SOURCE_SHAPES)} (task, schema_name, table_name,"
                    " `columns`, updated_at) VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE"
                    " `columns` = VALUES(`columns`), updated_at = VALUES(updated_at)",
                    (task, key[0], key[1], json.dumps([list(c) for c in columns])))


def read_shapes(conn: Any, task: str, *, database: str | None = None) -> dict[tuple[str, str], Shape]:
    with conn.cursor() as cur:
        execute(cur, f"SELECT schema_name, table_name, `columns` FROM {qualified(_db(conn, database), SOURCE_SHAPES)}"
                " WHERE task = %s", (task,))
        return {(r[0], r[1]): [(c[0], c[1]) for c in json.loads(r[2])] for r in cur.fetchall()}


def loaded_tables(conn: Any, task: str, *, database: str | None = None) -> set[tuple[str, str]]:
    """Tables whose full load finished."""
    with conn.cursor() as cur:
        execute(cur, f"SELECT schema_name, table_name FROM {qualified(_db(conn, database), LOAD_STATE)}"
                " WHERE task = %s AND status = 'done'", (task,))
        return {(r[0], r[1]) for r in cur.fetchall()}


def forget_task(conn: Any, task: str, tables: Iterable[str] = ("load_state", "source_shapes"), *,
                database: str | None = None) -> None:
    """start_mode reload: the task's load state and recorded shapes go (its checkpoint is reset apart,
    or here too with "checkpoints" in `tables`)."""
    with conn.cursor() as cur:
        for table in tables:
            execute(cur, f"DELETE FROM {qualified(_db(conn, database), _TABLES[table])} WHERE task = %s", (task,))

