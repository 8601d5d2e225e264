"""The task's state on a MariaDB target, for the CDC session: what `cdc.py` keeps in PostgreSQL's
`trempy` schema, here in the tables of the database the target URI names.

Checkpoint (`apply.read_checkpoint` / `write_checkpoint`, written inside each batch's
transaction), the furthest slot position the target recorded (`slot_lsn`), the source shapes a
task was planned with, the tables whose full load is done, and `reset_task` for start_mode
reload. Each function runs on the caller's connection and leaves the commit to it.
"""

from __future__ import annotations

import json
from typing import Any

from trempy_nb.writer.mariadb.ddl import CHECKPOINTS, LOAD_STATE, SOURCE_SHAPES
from trempy_nb.writer.mariadb.names import execute, qualified


def reset_task(conn: Any, database: str, task: str) -> None:
    """Forget the task's checkpoint, load state and shapes (start_mode reload)."""
    with conn.cursor() as cur:
        for table in (CHECKPOINTS, LOAD_STATE, SOURCE_SHAPES):
            execute(cur, f"DELETE FROM {qualified(database, table)} WHERE task = %s", (task,))


def get_slot_lsn(conn: Any, database: str, task: str) -> int | None:
    with conn.cursor() as cur:
        execute(cur, f"SELECT slot_lsn FROM {qualified(database, CHECKPOINTS)} WHERE task = %s", (task,))
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


def set_slot_lsn(conn: Any, database: str, task: str, lsn: int) -> None:
    """Record that the slot advanced to `lsn` (never backwards)."""
    with conn.cursor() as cur:
        execute(cur, f"UPDATE {qualified(database, CHECKPOINTS)} SET slot_lsn = GREATEST(COALESCE(slot_lsn, 0), %s)"
                " WHERE task = %s", (int(lsn), task))


def set_shape(conn: Any, database: str, task: str, schema: str, table: str, columns: list[list[str]]) -> None:
    """The source columns [name, type] a table's changes are planned with."""
    with conn.cursor() as cur:
        execute(cur, f"INSERT INTO {qualified(database, SOURCE_SHAPES)} (task, schema_name, table_name, `columns`,"
                " updated_at) VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE"
                " `columns` = VALUES(`columns`), updated_at = VALUES(updated_at)",
                (task, schema, table, json.dumps(columns)))


def get_shapes(conn: Any, database: str, task: str) -> dict[tuple[str, str], list[list[str]]]:
    with conn.cursor() as cur:
        execute(cur, f"SELECT schema_name, table_name, `columns` FROM {qualified(database, SOURCE_SHAPES)}"
                " WHERE task = %s", (task,))
        return {(r[0], r[1]): json.loads(r[2]) for r in cur.fetchall()}


def loaded_tables(conn: Any, database: str, task: str) -> set[tuple[str, str]]:
    """Source tables whose full load committed."""
    with conn.cursor() as cur:
        execute(cur, f"SELECT schema_name, table_name FROM {qualified(database, LOAD_STATE)}"
                " WHERE task = %s AND status = 'done'", (task,))
        return {(r[0], r[1]) for r in cur.fetchall()}
