"""The task's state on the target (`trempy.*`), beyond the checkpoint itself (`writer.checkpoint`).

- `checkpoints.slot_lsn`: the furthest slot position the target recorded before
  confirming it to the source, so a slot found further ahead was recreated (a
  loud SlotLost) and not merely advanced;
- `source_shapes`: the source columns each table is planned with, so `continue`
  notices a column dropped, renamed or retyped while the task was stopped;
- `load_state`: which tables the full load finished (written by `fullload`).

The tables are created by `ddl.ensure_state_tables`; held tables of the RabbitMQ
transport keep their own table (`transport/rabbitmq/held.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import psycopg
from psycopg import sql

from trempy_nb.writer.ddl import STATE_SCHEMA

_S = sql.Identifier(STATE_SCHEMA)
_SLOT_LSN_SET = sql.SQL(
    "UPDATE {}.checkpoints SET slot_lsn = GREATEST(COALESCE(slot_lsn, 0), %s) WHERE task = %s"
).format(_S)
_SLOT_LSN_GET = sql.SQL("SELECT slot_lsn FROM {}.checkpoints WHERE task = %s").format(_S)
_SHAPE_SET = sql.SQL(
    "INSERT INTO {}.source_shapes (task, schema_name, table_name, columns) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (task, schema_name, table_name) DO UPDATE SET columns = EXCLUDED.columns, updated_at = now()"
).format(_S)
_SHAPE_GET = sql.SQL("SELECT schema_name, table_name, columns FROM {}.source_shapes WHERE task = %s").format(_S)
_LOADED = sql.SQL(
    "SELECT schema_name, table_name FROM {}.load_state WHERE task = %s AND status = 'done'"
).format(_S)

Shape = list[tuple[str, str]]  # [(column, pg_type), ...] in source order


def record_slot_lsn(conn: psycopg.Connection, task: str, lsn: int) -> None:
    """The slot is about to be confirmed up to `lsn` (never moves back)."""
    conn.execute(_SLOT_LSN_SET, (int(lsn), task))


def read_slot_lsn(conn: psycopg.Connection, task: str) -> int:
    row = conn.execute(_SLOT_LSN_GET, (task,)).fetchone()
    return int(row[0] or 0) if row else 0


def record_shapes(conn: psycopg.Connection, task: str, shapes: dict[tuple[str, str], Shape]) -> None:
    for key, columns in shapes.items():
        conn.execute(_SHAPE_SET, (task, key[0], key[1], json.dumps([list(c) for c in columns])))


def read_shapes(conn: psycopg.Connection, task: str) -> dict[tuple[str, str], Shape]:
    return {(r[0], r[1]): [(c[0], c[1]) for c in r[2]] for r in conn.execute(_SHAPE_GET, (task,)).fetchall()}


def loaded_tables(conn: psycopg.Connection, task: str) -> set[tuple[str, str]]:
    """Tables whose full load finished."""
    return {(r[0], r[1]) for r in conn.execute(_LOADED, (task,)).fetchall()}


def forget_task(conn: psycopg.Connection, task: str, tables: Iterable[str] = ("load_state", "source_shapes")) -> None:
    """start_mode reload: the task's load state and recorded shapes go (its checkpoint is reset apart)."""
    for table in tables:
        conn.execute(sql.SQL("DELETE FROM {}.{} WHERE task = %s").format(_S, sql.Identifier(table)), (task,))
