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
- `table_lifecycle`: tables of a running task that are held (paused, loading, resyncing), so a
  restarted owner keeps holding them; `held_changes`: the changes of those tables, in stream order,
  written in the transaction of the batch (and checkpoint) they came in (`engine.lifecycle`);
- `rabbitmq_held`: tables of the RabbitMQ transport held behind a dead letter, and
  the per-stream checkpoints of replays (`<task>#replay:<schema>.<table>`)
  (created on first use by that transport).

Migrations: tables are created with IF NOT EXISTS and a table added in a later
version is created when `ensure_state_tables` finds one missing; a column added
later is added there too (ADD COLUMN IF NOT EXISTS).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import sql

from trempy_nb.errors import Fenced
from trempy_nb.writer.fence import Fence, lost_message, must_claim

STATE_SCHEMA = "trempy"
CHECKPOINTS = "checkpoints"
#: The state tables every run needs (`ensure_state_tables` creates them when one is missing);
#: `fences` is created with them, and by the first takeover on a target made before fencing
STATE_TABLES = (CHECKPOINTS, "load_state", "source_shapes", "table_lifecycle", "held_changes")

_S = sql.Identifier(STATE_SCHEMA)


# -- DDL and migrations -------------------------------------------------------------------------


# the fencing epoch of each lease (`writer.fence`); a row of its own, not a checkpoint column:
# a checkpoint row means "resume", and a takeover must store its epoch before any checkpoint
_FENCES_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {}.fences (task text PRIMARY KEY, epoch bigint NOT NULL,"
    " updated_at timestamptz NOT NULL DEFAULT now())"
).format(_S)


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
        _FENCES_DDL,
        # per-table lifecycle (`engine.lifecycle`): which tables are held, and their held changes
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.table_lifecycle (task text, schema_name text, table_name text,"
            " state text NOT NULL, request_id bigint, updated_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (task, schema_name, table_name))"
        ).format(_S),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.held_changes (id bigserial PRIMARY KEY, task text NOT NULL,"
            " schema_name text NOT NULL, table_name text NOT NULL, end_lsn bigint NOT NULL, frame bytea NOT NULL,"
            " truncated_at jsonb, held_at timestamptz NOT NULL DEFAULT now())"
        ).format(_S),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS held_changes_table ON {}.held_changes (task, schema_name, table_name, id)"
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
    if must_claim(fence, key, int(row[0]) if row else None):
        claim_fence(conn, key, fence.epoch)


def recheck_fence(fence: Fence | None, task: str) -> None:
    """Right before a commit: the lease must still be valid (the epoch row is locked since the check)."""
    if fence is not None and not fence.valid():
        raise Fenced(lost_message(_key(fence, task), None, fence.epoch))


@contextlib.contextmanager
def fenced(conn: psycopg.Connection, fence: Fence | None, task: str) -> Iterator[None]:
    """On an autocommit connection: the block's writes in one transaction that checks the fence
    first (no fence: as before, each statement on its own)."""
    if fence is None:
        yield
        return
    with conn.transaction():
        check_fence(conn, fence, task)
        yield


def claim_fence(conn: psycopg.Connection, key: str, epoch: int) -> None:
    """Store `epoch` for `key` unless the target already holds a newer one (then `Fenced`)."""
    if conn.execute(_FENCE_SET, (key, int(epoch))).fetchone() is None:
        raise Fenced(lost_message(key, read_fence(conn, key), int(epoch)))


def _fences_exist(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{STATE_SCHEMA}.fences",)).fetchone()
    return bool(row and row[0])


def read_fence(conn: psycopg.Connection, key: str) -> int | None:
    """The stored epoch of a fence key (None: never fenced)."""
    if not _fences_exist(conn):
        return None
    row = conn.execute(_FENCE_GET, (key,)).fetchone()
    return int(row[0]) if row else None


def claim_target(conn: psycopg.Connection, key: str, epoch: int) -> None:
    """Takeover: store the new epoch on the target before anything else, in a transaction of its own
    (committed here); from then on every write of an older epoch is refused."""
    ensure_state_tables(conn)
    if not _fences_exist(conn):
        conn.execute(_FENCES_DDL)
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
# the same, unless the apply holds the row (its transaction locks it FOR UPDATE): then no row
# (SKIP LOCKED, not NOWAIT: no ERROR in the target's log for every busy try)
_SLOT_LSN_SET_NOWAIT = sql.SQL(
    "UPDATE {0}.checkpoints SET slot_lsn = GREATEST(COALESCE(slot_lsn, 0), %s) WHERE task = %s"
    " AND task IN (SELECT task FROM {0}.checkpoints WHERE task = %s FOR NO KEY UPDATE SKIP LOCKED)"
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


def record_slot_lsn(conn: psycopg.Connection, task: str, lsn: int, *, fence: Fence | None = None,
                    wait: bool = True) -> bool:
    """The slot is about to be confirmed up to `lsn` (never moves back). With a fence, in a
    transaction of its own that checks it (the connection is in autocommit).

    `wait=False`: False, nothing written, when the row is locked, i.e. a batch is being applied
    (its transaction holds the row until it commits), or missing: the caller confirms later
    instead of waiting out that whole apply. True once recorded."""
    stmt, args = (_SLOT_LSN_SET, (int(lsn), task)) if wait else (_SLOT_LSN_SET_NOWAIT, (int(lsn), task, task))
    if fence is None:
        return conn.execute(stmt, args).rowcount > 0 or wait
    with conn.transaction():
        check_fence(conn, fence, task)
        return conn.execute(stmt, args).rowcount > 0 or wait


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


def forget_task(conn: psycopg.Connection, task: str,
                tables: Iterable[str] = ("load_state", "source_shapes", "table_lifecycle", "held_changes")) -> None:
    """start_mode reload: the task's load state, recorded shapes, held tables and held changes go (its
    checkpoint is reset apart)."""
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


# -- per-table lifecycle: held tables and their held changes (`engine.lifecycle`) ---------------------

_LC_SET = sql.SQL(
    "INSERT INTO {}.table_lifecycle (task, schema_name, table_name, state, request_id) VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (task, schema_name, table_name) DO UPDATE SET state = EXCLUDED.state,"
    " request_id = EXCLUDED.request_id, updated_at = now()"
).format(_S)
_LC_GET = sql.SQL("SELECT schema_name, table_name, state FROM {}.table_lifecycle WHERE task = %s").format(_S)
_LC_DEL = sql.SQL("DELETE FROM {}.table_lifecycle WHERE task = %s AND schema_name = %s AND table_name = %s").format(_S)
_HOLD_ADD = sql.SQL(
    "INSERT INTO {}.held_changes (task, schema_name, table_name, end_lsn, frame, truncated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
).format(_S)
_HOLD_GET = sql.SQL(
    "SELECT id, end_lsn, frame, truncated_at FROM {}.held_changes WHERE task = %s AND schema_name = %s"
    " AND table_name = %s AND id > %s ORDER BY id LIMIT %s"
).format(_S)
_HOLD_COUNT = sql.SQL(
    "SELECT schema_name, table_name, count(*) FROM {}.held_changes WHERE task = %s GROUP BY 1, 2"
).format(_S)
_HOLD_DEL = sql.SQL(
    "DELETE FROM {}.held_changes WHERE task = %s AND schema_name = %s AND table_name = %s"
).format(_S)

#: one held part: (id, end_lsn of its batch, Arrow IPC bytes of the source frame, truncates as JSON)
HeldPart = tuple[int, int, bytes, str | None]


def set_table_held(conn: psycopg.Connection, task: str, key: tuple[str, str], held_as: str,
                   request_id: int | None = None) -> None:
    """Mark a table held (paused, loading, resyncing): its changes go to `held_changes` from now on."""
    conn.execute(_LC_SET, (task, key[0], key[1], held_as, request_id))


def held_tables(conn: psycopg.Connection, task: str) -> dict[tuple[str, str], str]:
    """The task's held tables and why (state)."""
    if not state_tables_exist(conn):
        return {}
    ensure_state_tables(conn)
    return {(r[0], r[1]): str(r[2]) for r in conn.execute(_LC_GET, (task,)).fetchall()}


def release_table(conn: psycopg.Connection, task: str, key: tuple[str, str]) -> None:
    """The table streams again: its held changes (all applied) and its mark go, with its replay checkpoint."""
    conn.execute(_HOLD_DEL, (task, *key))
    conn.execute(_LC_DEL, (task, *key))
    conn.execute(checkpoint_delete_sql(), (held_stream(task, key),))


def hold_changes(conn: psycopg.Connection, task: str, key: tuple[str, str], end_lsn: int, frame: bytes,
                 truncated_at: str | None) -> None:
    """Keep one batch's changes of a held table (call inside the batch's transaction)."""
    conn.execute(_HOLD_ADD, (task, key[0], key[1], int(end_lsn), frame, truncated_at))


def read_held_changes(conn: psycopg.Connection, task: str, key: tuple[str, str], after_id: int = 0,
                      limit: int = 200) -> list[HeldPart]:
    """The next held parts of a table after `after_id`, in stream order."""
    return [(int(r[0]), int(r[1]), bytes(r[2]), None if r[3] is None else json.dumps(r[3]))
            for r in conn.execute(_HOLD_GET, (task, key[0], key[1], int(after_id), int(limit))).fetchall()]


def held_counts(conn: psycopg.Connection, task: str) -> dict[tuple[str, str], int]:
    """Held parts per table (the dashboard, tests)."""
    if not state_tables_exist(conn):
        return {}
    return {(r[0], r[1]): int(r[2]) for r in conn.execute(_HOLD_COUNT, (task,)).fetchall()}


def held_stream(task: str, key: tuple[str, str]) -> str:
    """The checkpoint row of a held table's replay (`<task>#held:<schema>.<table>`): the replay of its held
    changes is exactly-once like any batch."""
    return f"{task}#held:{key[0]}.{key[1]}"


def loaded_lsn(conn: psycopg.Connection, task: str) -> dict[tuple[str, str], int]:
    """The snapshot LSN each table was (re)loaded at: its changes committed at or before it are in the load."""
    if not state_tables_exist(conn):
        return {}
    rows = conn.execute(sql.SQL(
        "SELECT schema_name, table_name, snapshot_lsn FROM {}.load_state WHERE task = %s AND status = 'done'"
        " AND snapshot_lsn IS NOT NULL").format(_S), (task,)).fetchall()
    return {(r[0], r[1]): int(r[2]) for r in rows}
