"""The task's checkpoint on the target: the last source commit LSN whose changes are applied.

It lives next to the data and is written in the same transaction as the rows
it describes, so after any crash the target and its checkpoint agree and a
replayed batch is recognised and skipped. SQL text comes from `writer.sql`.
"""

from __future__ import annotations

import psycopg

from trempy_nb.writer import sql as wsql
from trempy_nb.writer.ddl import ensure_state_tables


def state_tables_exist(conn: psycopg.Connection) -> bool:
    row = conn.execute(wsql.state_exists_sql()).fetchone()
    return bool(row and row[0])


def read_checkpoint(conn: psycopg.Connection, task: str, *, for_update: bool = False) -> int | None:
    """The task's checkpoint LSN, or None when it has none (or the state tables do not exist yet).

    `for_update` locks the row until the end of the caller's transaction, so two
    appliers of one task cannot both apply the same batch.
    """
    if not state_tables_exist(conn):
        return None
    row = conn.execute(wsql.checkpoint_select_sql(for_update), (task,)).fetchone()
    return int(row[0]) if row else None


def write_checkpoint(conn: psycopg.Connection, task: str, lsn: int) -> None:
    """Set the task's checkpoint (creating the state tables on first use)."""
    if not state_tables_exist(conn):
        ensure_state_tables(conn)
    conn.execute(wsql.checkpoint_upsert_sql(), (task, int(lsn)))


def reset_checkpoint(conn: psycopg.Connection, task: str) -> None:
    """Forget the task's checkpoint (start_mode `reload`)."""
    if state_tables_exist(conn):
        conn.execute(wsql.checkpoint_delete_sql(), (task,))
