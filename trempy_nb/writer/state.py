"""The task's state on a PostgreSQL target (`trempy.*`): the one module that creates and queries it.

Every table of the state schema, its DDL and migrations, and every query of it
live here; callers pass the connection (and own its transaction):

- `checkpoints`: the last source commit LSN whose changes are applied (`lsn`),
  written in the same transaction as the rows it describes, so after any crash
  the target and its checkpoint agree and a replayed batch is skipped; and
  `slot_lsn`, the furthest slot position recorded before confirming it to the
  source, so a slot found further ahead was recreated (a loud SlotLost);
- `fences`: the fencing epoch of each task (and role) that may write (see
  `writer.fence`), checked and written in the transaction of every data write;
- `source_shapes`: the source columns each table is planned with, so `continue`
  notices a column dropped, renamed or retyped while the task was stopped;
- `load_state`: which tables the full load finished;
- `rabbitmq_held`: tables of the RabbitMQ transport held behind a dead letter, and
  the per-stream checkpoints of replays (`<task>#replay:<schema>.<table>`)
  (created on first use by that transport).

Migrations: tables are created with IF NOT EXISTS and a table added in a later
version is created when `ensure_state_tables` finds one missing; a column added
later is added there too (ADD COLUMN IF NOT EXISTS).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import psycopg
from psycopg import sql

from trempy_nb.errors import Fenced
from trempy_nb.writer.fence import Fence, lost_message

STATE_SCHEMA = "trempy"
CHECKPOINTS = "checkpoints"
#: The state tables `state_tables_sql` creates
STATE_TABLES = (CHECKPOINTS, "load_state", "source_shapes", "fences")

_S = sql.Identifier(STATE_SCHEMA)


# -- DDL and migrations -------------------------------------------------------------------------


def state_tables_sql() -> list[sql.Composed]:
    """The task state kept on the target, next to the data it describes (idempotent)."""
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_S),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.checkpoints (task text PRIMARY KEY, lsn bigint NOT NULL,"
            " slot_lsn bigint, updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(_S),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.load_state (task text, schema_name text, table_name text,"
            " status text NOT NULL, rows bigint, snapshot_lsn bigint, updated_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (task, schema_name, table_name))"
        ).format(_S),
        # the source columns (name, type) each table's changes were last planned with: a column
        # dropped or retyped while the task was stopped is caught on `continue`
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.source_shapes (task text, schema_name text, table_name text,"
            " columns jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (task, schema_name, table_name))"
        ).format(_S),
        # the fencing epoch of each lease (`writer.fence`); a row of its own, not a checkpoint column:
        # a checkpoint row means "resume", and a takeover must store its epoch before any checkpoint
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.fences (task text PRIMARY KEY, epoch bigint NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(_S),
    ]


_EXISTING = sql.SQL(
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind = 'r'"
)


def ensure_state_tables(conn: psycopg.Connection) -> None:
    """Create (or migrate) the state schema and tables unless all exist (one catalog query when they
    do: the DDL takes locks and round trips at every run)."""
    row = conn.execute(_EXISTING, (STATE_SCHEMA, list(STATE_TABLES))).fetchone()
    if row and row[0] == len(STATE_TABLES):
        return
    for stmt in state_tables_sql():
        conn.execute(stmt)


def state_exists_sql() -> sql.Composed:
    """One boolean row: does the checkpoints table exist? (Parameters: none.)"""
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p'))"
    ).format(sql.Literal(STATE_SCHEMA), sql.Literal(CHECKPOINTS))


def state_tables_exist(conn: psycopg.Connection) -> bool:
    row = conn.execute(state_exists_sql()).fetchone()
    return bool(row and row[0])


# -- the checkpoint -----------------------------------------------------------------------------


def checkpoint_select_sql(for_update: bool = False) -> sql.Composed:
    """The task's last applied commit LSN. Parameter: task."""
    q = sql.SQL("SELECT lsn FROM {}.checkpoints WHERE task = %s").format(_S)
    return sql.SQL("{} FOR UPDATE").format(q) if for_update else q


def checkpoint_upsert_sql() -> sql.Composed:
    """Set the task's checkpoint. Parameters: task, lsn."""
    return sql.SQL(
        "INSERT INTO {}.checkpoints AS c (task, lsn, updated_at) VALUES (%s, %s, now())"
        " ON CONFLICT (task) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = EXCLUDED.updated_at"
    ).format(_S)


def checkpoint_delete_sql() -> sql.Composed:
    """Forget the task's checkpoint (start_mode reload). Parameter: task."""
    return sql.SQL("DELETE FROM {}.checkpoints WHERE task = %s").format(_S)


def read_checkpoint(conn: psycopg.Connection, task: str, *, for_update: bool = False) -> int | None:
    """The task's checkpoint LSN, or None when it has none (or the state tables do not exist yet).

    `for_update` locks the row until the end of the caller's transaction, so two
    appliers of one task cannot both apply the same batch.
    """
    if not state_tables_exist(conn):
        return None
    row = conn.execute(checkpoint_select_sql(for_update), (task,)).fetchone()
    return int(row[0]) if row else None


def write_checkpoint(conn: psycopg.Connection, task: str, lsn: int) -> None:
    """Set the task's checkpoint (creating the state tables on first use)."""
    if not state_tables_exist(conn):
        ensure_state_tables(conn)
    conn.execute(checkpoint_upsert_sql(), (task, int(lsn)))


def reset_checkpoint(conn: psycopg.Connection, task: str) -> None:
    """Forget the task's checkpoint (start_mode `reload`)."""
    if state_tables_exist(conn):
        conn.execute(checkpoint_delete_sql(), (task,))


def read_positions(conn: psycopg.Connection, task: str) -> tuple[int, int | None] | None:
    """(checkpoint lsn, slot_lsn) of the task, or None (reconcile reports them)."""
    if not state_tables_exist(conn):
        return None
    row = conn.execute(sql.SQL("SELECT lsn, slot_lsn FROM {}.checkpoints WHERE task = %s").format(_S),
                       (task,)).fetchone()
    return (int(row[0]), None if row[1] is None else int(row[1])) if row else None


# -- fencing (`writer.fence`) -------------------------------------------------------------------

_FENCE_LOCK = sql.SQL("SELECT epoch FROM {}.fences WHERE task = %s FOR UPDATE").format(_S)
_FENCE_SET = sql.SQL(
    "INSERT INTO {}.fences AS f (task, epoch) VALUES (%s, %s) ON CONFLICT (task) DO UPDATE"
    " SET epoch = EXCLUDED.epoch, updated_at = now() WHERE f.epoch <= EXCLUDED.epoch RETURNING epoch"
).format(_S)
_FENCE_GET = sql.SQL("SELECT epoch FROM {}.fences WHERE task = %s").format(_S)


def _key(fence: Fence, task: str) -> str:
    return fence.key or task


def check_fence(conn: psycopg.Connection, fence: Fence | None, task: str) -> None:
    """Inside the caller's write transaction: lock the fence row, refuse (`Fenced`) when the target
    holds a newer epoch or the lease is no longer valid, store the epoch. No fence: nothing.
    The row lock is held to the commit, so a takeover's `claim_fence` waits for this transaction."""
    if fence is None:
        return
    key = _key(fence, task)
    row = conn.execute(_FENCE_LOCK, (key,)).fetchone()
    stored = int(row[0]) if row else None
    if stored is not None and stored > fence.epoch:
        raise Fenced(lost_message(key, stored, fence.epoch))
    if not fence.valid():
        raise Fenced(lost_message(key, None, fence.epoch))
    if stored != fence.epoch:
        claim_fence(conn, key, fence.epoch)


def recheck_fence(fence: Fence | None, task: str) -> None:
    """Right before a commit: the lease must still be valid (the epoch row is locked since the check)."""
    if fence is not None and not fence.valid():
        raise Fenced(lost_message(_key(fence, task), None, fence.epoch))


def claim_fence(conn: psycopg.Connection, key: str, epoch: int) -> None:
    """Store `epoch` for `key` unless the target already holds a newer one (then `Fenced`)."""
    if conn.execute(_FENCE_SET, (key, int(epoch))).fetchone() is None:
        raise Fenced(lost_message(key, read_fence(conn, key), int(epoch)))


def read_fence(conn: psycopg.Connection, key: str) -> int | None:
    """The stored epoch of a fence key (None: never fenced)."""
    if not state_tables_exist(conn):
        return None
    row = conn.execute(_FENCE_GET, (key,)).fetchone()
    return int(row[0]) if row else None


def claim_target(conn: psycopg.Connection, key: str, epoch: int) -> None:
    """Takeover: store the new epoch on the target before anything else, in a transaction of its own
    (committed here); from then on every write of an older epoch is refused."""
    ensure_state_tables(conn)
    conn.commit()
    try:
        claim_fence(conn, key, epoch)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise

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


def record_slot_lsn(conn: psycopg.Connection, task: str, lsn: int, *, fence: Fence | None = None) -> None:
    """The slot is about to be confirmed up to `lsn` (never moves back). With a fence, in a
    transaction of its own that checks it (the connection is in autocommit)."""
    if fence is None:
        conn.execute(_SLOT_LSN_SET, (int(lsn), task))
        return
    with conn.transaction():
        check_fence(conn, fence, task)
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
