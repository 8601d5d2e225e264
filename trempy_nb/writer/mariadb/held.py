"""The RabbitMQ transport's state on a MariaDB target: tables held behind a dead letter, and the
per-stream checkpoints of replays (`<task>#replay:<schema>.<table>`, rows of the checkpoints table).

The same functions (names, arguments, meaning) as the held-table part of `writer/state.py`, over a
table in the database the target URI names (the connection's), beside the task's checkpoints.
"""

from __future__ import annotations

from typing import Any

from trempy_nb.writer.mariadb.apply import database_of
from trempy_nb.writer.mariadb.ddl import CHECKPOINTS, ENGINE
from trempy_nb.writer.mariadb.names import execute, qualified

HELD = "trempy_rabbitmq_held"

Held = tuple[int, int, bool]  # (since_lsn, held_upto, replay_failed)


def _table(conn: Any) -> str:
    return qualified(database_of(conn), HELD)


def ensure_held_table(conn: Any) -> None:
    """DDL: commits implicitly (call it outside a data transaction)."""
    with conn.cursor() as cur:
        execute(cur, f"CREATE TABLE IF NOT EXISTS {_table(conn)} (task VARCHAR(255) NOT NULL,"
                " schema_name VARCHAR(64) NOT NULL, table_name VARCHAR(64) NOT NULL, since_lsn BIGINT NOT NULL,"
                " held_upto BIGINT NOT NULL, replay_failed BOOLEAN NOT NULL DEFAULT 0,"
                " updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
                f" PRIMARY KEY (task, schema_name, table_name)) {ENGINE}")


def read_held(conn: Any, task: str) -> dict[tuple[str, str], Held]:
    with conn.cursor() as cur:
        execute(cur, f"SELECT schema_name, table_name, since_lsn, held_upto, replay_failed FROM {_table(conn)}"
                " WHERE task = %s", (task,))
        return {(s, t): (int(since), int(upto), bool(failed)) for s, t, since, upto, failed in cur.fetchall()}


def write_held(conn: Any, task: str, key: tuple[str, str], held: Held) -> None:
    with conn.cursor() as cur:
        execute(cur, f"INSERT INTO {_table(conn)} (task, schema_name, table_name, since_lsn, held_upto, replay_failed,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE"
                " held_upto = VALUES(held_upto), replay_failed = VALUES(replay_failed),"
                " updated_at = VALUES(updated_at)", (task, key[0], key[1], int(held[0]), int(held[1]), bool(held[2])))


def delete_held(conn: Any, task: str, key: tuple[str, str] | None = None) -> None:
    """Release one held table of the task, or (no key) all of them."""
    with conn.cursor() as cur:
        if key is None:
            execute(cur, f"DELETE FROM {_table(conn)} WHERE task = %s", (task,))
        else:
            execute(cur, f"DELETE FROM {_table(conn)} WHERE task = %s AND schema_name = %s AND table_name = %s",
                    (task, key[0], key[1]))


def delete_stream_checkpoints(conn: Any, task: str) -> None:
    """The task's per-stream checkpoints (`<task>#...`, e.g. replays), not the task's own."""
    pattern = task.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "#%"
    with conn.cursor() as cur:
        execute(cur, f"DELETE FROM {qualified(database_of(conn), CHECKPOINTS)} WHERE task LIKE %s", (pattern,))
