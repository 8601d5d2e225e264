"""The task's state on the target (`trempy.*`), beyond the checkpoint itself (`writer.checkpoint`).

- `checkpoints.slot_lsn`: the furthest slot position the target recorded before
  confirming it to the source, so a slot found further ahead was recreated (a
  loud SlotLost) and not merely advanced;
- `source_shapes`: the source columns each table is planned with, so `continue`
  notices a column dropped, renamed or retyped while the task was stopped;
- `load_state`: which tables the full load finished;
- `rabbitmq_held`: tables of the RabbitMQ transport held behind a dead letter, and
  the per-stream checkpoints of replays (`<task>#replay:<schema>.<table>`).

The tables are created by `ddl.ensure_state_tables` (`rabbitmq_held` on first
use by the transport). Every query of these tables is here; callers pass the
connection (and own its transaction).
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
_LOADED_SET = sql.SQL(
    "INSERT INTO {}.load_state (task, schema_name, table_name, status, rows, snapshot_lsn, updated_at)"
    " VALUES (%s, %s, %s, 'done', %s, %s, now()) ON CONFLICT (task, schema_name, table_name)"
    " DO UPDATE SET status = 'done', rows = EXCLUDED.rows, snapshot_lsn = EXCLUDED.snapshot_lsn,"
    " updated_at = now()"
).format(_S)
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


def record_loaded(cur: psycopg.Connection | psycopg.Cursor, task: str, key: tuple[str, str], rows: int,
                  snapshot_lsn: int | None) -> None:
    """A table's full load is done (in the transaction that wrote its rows)."""
    cur.execute(_LOADED_SET, (task, key[0], key[1], rows, snapshot_lsn))


def loaded_tables(conn: psycopg.Connection, task: str) -> set[tuple[str, str]]:
    """Tables whose full load finished."""
    return {(r[0], r[1]) for r in conn.execute(_LOADED, (task,)).fetchall()}


def forget_task(conn: psycopg.Connection, task: str, tables: Iterable[str] = ("load_state", "source_shapes")) -> None:
    """start_mode reload: the task's load state and recorded shapes go (its checkpoint is reset apart)."""
    for table in tables:
        conn.execute(sql.SQL("DELETE FROM {}.{} WHERE task = %s").format(_S, sql.Identifier(table)), (task,))


# -- held tables (RabbitMQ: tables waiting behind a dead letter) and replay checkpoints --------------

_HELD_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {}.rabbitmq_held (task text, schema_name text, table_name text,"
    " since_lsn bigint, held_upto bigint, replay_failed boolean NOT NULL DEFAULT false,"
    " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (task, schema_name, table_name))"
).format(_S)
_HELD_GET = sql.SQL(
    "SELECT schema_name, table_name, since_lsn, held_upto, replay_failed FROM {}.rabbitmq_held WHERE task = %s"
).format(_S)
_HELD_SET = sql.SQL(
    "INSERT INTO {}.rabbitmq_held (task, schema_name, table_name, since_lsn, held_upto, replay_failed)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (task, schema_name, table_name) DO UPDATE"
    " SET held_upto = EXCLUDED.held_upto, replay_failed = EXCLUDED.replay_failed, updated_at = now()"
).format(_S)
_HELD_DEL = sql.SQL(
    "DELETE FROM {}.rabbitmq_held WHERE task = %s AND schema_name = %s AND table_name = %s"
).format(_S)
_HELD_DEL_TASK = sql.SQL("DELETE FROM {}.rabbitmq_held WHERE task = %s").format(_S)
_STREAM_CHECKPOINTS_DEL = sql.SQL("DELETE FROM {}.checkpoints WHERE task LIKE %s").format(_S)

Held = tuple[int, int, bool]  # (since_lsn, held_upto, replay_failed)


def ensure_held_table(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_S))
    conn.execute(_HELD_DDL)


def read_held(conn: psycopg.Connection, task: str) -> dict[tuple[str, str], Held]:
    return {(s, t): (int(since), int(upto), bool(failed))
            for s, t, since, upto, failed in conn.execute(_HELD_GET, (task,))}


def write_held(conn: psycopg.Connection, task: str, key: tuple[str, str], held: Held) -> None:
    conn.execute(_HELD_SET, (task, key[0], key[1], *held))


def delete_held(conn: psycopg.Connection, task: str, key: tuple[str, str] | None = None) -> None:
    """Release one held table of the task, or (no key) all of them."""
    if key is None:
        conn.execute(_HELD_DEL_TASK, (task,))
    else:
        conn.execute(_HELD_DEL, (task, *key))


def delete_stream_checkpoints(conn: psycopg.Connection, task: str) -> None:
    """The task's per-stream checkpoints (`<task>#...`, e.g. replays), not the task's own."""
    conn.execute(_STREAM_CHECKPOINTS_DEL, (task.replace("_", r"\_") + "#%",))
