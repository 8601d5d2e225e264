"""The MariaDB/MySQL `TargetDialect` (see `writer.dialect`): this package's functions, bound to the
database the target URI names (the connection's), where the task's state tables live."""

from __future__ import annotations

from typing import Any

import pymysql

from trempy_nb.db import APP_PREFIX
from trempy_nb.writer.dialect import TargetDialect
from trempy_nb.writer.mariadb import capabilities, ddl, fencing, held, state
from trempy_nb.writer.mariadb import uri as maria_uri
from trempy_nb.writer.mariadb.apply import (
    apply_batch,
    database_of,
    read_checkpoint,
    reset_checkpoint,
    write_checkpoint,
)


def _connect(uri: str, *, autocommit: bool = False, application_name: str = "trempy_nb") -> Any:
    """`application_name` has no MariaDB counterpart: a task's connection (`trempy_nb:<task>:...`)
    records itself in the session registry instead, where eviction finds it."""
    conn = maria_uri.connect(uri)
    if application_name.startswith(f"{APP_PREFIX}:"):
        fencing.register_session(conn, application_name)
    if autocommit:
        conn.autocommit(True)
    return conn


def _backend_id(conn: Any) -> int:
    return int(conn.thread_id())


def _lock_timeout(conn: Any, seconds: float) -> None:
    with conn.cursor() as cur:
        cur.execute("SET SESSION innodb_lock_wait_timeout = %s", (max(1, int(seconds)),))
    conn.commit()


def _usable(conn: Any) -> bool:
    return bool(conn.open)


def _validate(conn: Any) -> None:
    """Server version, InnoDB, local_infile (the apply stages through LOAD DATA), privileges."""
    capabilities.validate(conn, database_of(conn))
    conn.commit()


def _ensure_state_tables(conn: Any) -> None:
    ddl.ensure_state_tables(conn, database_of(conn))


def _ensure_target(conn: Any, spec: ddl.TargetSpec, *, create: bool = True, add_missing: bool = False) -> object:
    return ddl.ensure_target(conn, spec, create=create, add_missing=add_missing)


def _forget_task(conn: Any, task: str) -> None:
    state.forget_task(conn, task)


MARIADB = TargetDialect(
    name="mariadb",
    connect=_connect,
    usable=_usable,
    errors=(pymysql.err.MySQLError,),
    lost_errors=(pymysql.err.OperationalError, pymysql.err.InterfaceError),
    validate=_validate,
    apply_batch=apply_batch,
    ensure_state_tables=_ensure_state_tables,
    ensure_target=_ensure_target,
    add_column=ddl.add_column,
    read_checkpoint=read_checkpoint,
    write_checkpoint=write_checkpoint,
    reset_checkpoint=reset_checkpoint,
    record_slot_lsn=state.record_slot_lsn,
    read_slot_lsn=state.read_slot_lsn,
    record_shapes=state.record_shapes,
    read_shapes=state.read_shapes,
    loaded_tables=state.loaded_tables,
    forget_task=_forget_task,
    ensure_held_table=held.ensure_held_table,
    read_held=held.read_held,
    write_held=held.write_held,
    delete_held=held.delete_held,
    delete_stream_checkpoints=held.delete_stream_checkpoints,
    claim_target=fencing.claim_target,
    read_fence=fencing.read_fence,
    check_fence=fencing.check_fence,
    backend_id=_backend_id,
    evict=fencing.terminate_named,
    lock_timeout=_lock_timeout,
    fenced=fencing.fenced,
)
