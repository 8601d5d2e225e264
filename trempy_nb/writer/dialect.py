"""The target dialect: every target I/O the CDC engine does, for PostgreSQL or MariaDB/MySQL.

The engine (session, applier) never asks which database the target is: the run
picks one `TargetDialect` from the target URI (`engine.runner.target_dialect`:
`POSTGRES` here, `MARIADB` in `writer.mariadb.dialect`) and calls its functions.
Each is the dialect's own writer function with the same meaning (and, for the
state functions, the same arguments) as `writer.state` / `writer.ddl` /
`writer.apply`; PostgreSQL's are those functions themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from trempy_nb.catalog import ColumnInfo
from trempy_nb.db import connect as pg_connect
from trempy_nb.writer import sessions, state
from trempy_nb.writer.apply import ApplyResult, apply_batch
from trempy_nb.writer.ddl import TargetSpec, add_column, ensure_target
from trempy_nb.writer.fence import Fence

Shape = list[tuple[str, str]]


@dataclass(frozen=True)
class TargetDialect:
    """A target database's side of a CDC run (connections are the dialect's driver's)."""

    name: str
    #: (uri, *, autocommit, application_name) -> an open connection
    connect: Callable[..., Any]
    #: False once the connection is closed or broken (reconnect)
    usable: Callable[[Any], bool]
    #: errors of the driver (a failed query); `lost_errors`: a lost connection (reconnect once)
    errors: tuple[type[BaseException], ...]
    lost_errors: tuple[type[BaseException], ...]
    #: raises ValidationFailed (one line) unless the target can take a CDC run's writes
    validate: Callable[[Any], None]
    #: (conn, task, tables, end_lsn, *, error_handling, on_row_error, fence=None) -> ApplyResult
    apply_batch: Callable[..., ApplyResult]
    ensure_state_tables: Callable[[Any], None]
    #: (conn, spec, *, create, add_missing) -> whatever the dialect reports
    ensure_target: Callable[..., object]
    add_column: Callable[[Any, TargetSpec, ColumnInfo], None]
    read_checkpoint: Callable[[Any, str], int | None]
    write_checkpoint: Callable[[Any, str, int], None]
    reset_checkpoint: Callable[[Any, str], None]
    #: (conn, task, lsn, *, fence=None, wait=True) -> recorded (False: wait=False and the row is busy)
    record_slot_lsn: Callable[..., bool]
    read_slot_lsn: Callable[[Any, str], int]
    record_shapes: Callable[[Any, str, dict[tuple[str, str], Shape]], None]
    read_shapes: Callable[[Any, str], dict[tuple[str, str], Shape]]
    loaded_tables: Callable[[Any, str], set[tuple[str, str]]]
    forget_task: Callable[[Any, str], None]
    #: the RabbitMQ transport's state on the target: tables held behind a dead letter
    #: ((since_lsn, held_upto, replay_failed) per source table) and replays' stream checkpoints
    ensure_held_table: Callable[[Any], None]
    read_held: Callable[[Any, str], dict[tuple[str, str], state.Held]]
    write_held: Callable[[Any, str, tuple[str, str], state.Held], None]
    delete_held: Callable[..., None]  # (conn, task, key=None)
    delete_stream_checkpoints: Callable[[Any, str], None]
    #: (conn, key, epoch): takeover, store the new epoch (commits; `Fenced` if a newer one is stored)
    claim_target: Callable[[Any, str, int], None]
    #: (conn, key) -> the stored epoch, or None
    read_fence: Callable[[Any, str], int | None]
    #: (conn, fence, task): in the caller's transaction, lock + check + store the epoch (None: nothing)
    check_fence: Callable[[Any, Fence | None, str], None]
    #: the server's process/connection id of a connection (eviction spares the evictor's own)
    backend_id: Callable[[Any], int]
    #: (conn, like, *, unlike, keep) -> ids terminated: the task's other sessions on the target
    evict: Callable[..., list[int]]
    #: (conn, seconds): how long this session waits for a row lock before failing
    lock_timeout: Callable[[Any, float], None]
    #: (conn, fence, task): a transaction on an autocommit connection whose writes are fenced
    #: (checked first, committed at the end; no fence: no transaction of its own)
    fenced: Callable[[Any, Fence | None, str], AbstractContextManager[None]]


def _pg_connect(uri: str, *, autocommit: bool = False, application_name: str = "trempy_nb") -> psycopg.Connection:
    return pg_connect(uri, autocommit=autocommit, application_name=application_name)


def _pg_usable(conn: psycopg.Connection) -> bool:
    return not conn.closed and not conn.broken


def _pg_validate(conn: psycopg.Connection) -> None:
    """Nothing more to check: a PostgreSQL target is checked where its tables are created."""


def _pg_read_checkpoint(conn: psycopg.Connection, task: str) -> int | None:
    return state.read_checkpoint(conn, task)


def _pg_backend_id(conn: psycopg.Connection) -> int:
    return int(conn.info.backend_pid)


def _pg_lock_timeout(conn: psycopg.Connection, seconds: float) -> None:
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(seconds * 1000)}ms")))
    conn.commit()


def _pg_ensure_target(conn: psycopg.Connection, spec: TargetSpec, *, create: bool = True,
                      add_missing: bool = False) -> object:
    return ensure_target(conn, spec, create=create, add_missing=add_missing)


def _pg_forget_task(conn: psycopg.Connection, task: str) -> None:
    state.forget_task(conn, task)


POSTGRES = TargetDialect(
    name="postgresql",
    connect=_pg_connect,
    usable=_pg_usable,
    errors=(psycopg.Error,),
    lost_errors=(psycopg.OperationalError,),
    validate=_pg_validate,
    apply_batch=apply_batch,
    ensure_state_tables=state.ensure_state_tables,
    ensure_target=_pg_ensure_target,
    add_column=add_column,
    read_checkpoint=_pg_read_checkpoint,
    write_checkpoint=state.write_checkpoint,
    reset_checkpoint=state.reset_checkpoint,
    record_slot_lsn=state.record_slot_lsn,
    read_slot_lsn=state.read_slot_lsn,
    record_shapes=state.record_shapes,
    read_shapes=state.read_shapes,
    loaded_tables=state.loaded_tables,
    forget_task=_pg_forget_task,
    ensure_held_table=state.ensure_held_table,
    read_held=state.read_held,
    write_held=state.write_held,
    delete_held=state.delete_held,
    delete_stream_checkpoints=state.delete_stream_checkpoints,
    claim_target=state.claim_target,
    read_fence=state.read_fence,
    check_fence=state.check_fence,
    backend_id=_pg_backend_id,
    evict=sessions.terminate_named,
    lock_timeout=_pg_lock_timeout,
    fenced=state.fenced,
)
