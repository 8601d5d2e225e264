"""Consistent hand-over from the full load to the change stream.

The slot must be created together with a snapshot that sees exactly the
transactions committed before the slot's consistent point: the full load reads
that snapshot, the stream delivers everything after it, and no row is lost or
applied twice.

Only the replication protocol command
`CREATE_REPLICATION_SLOT name LOGICAL pgoutput (SNAPSHOT 'export')` gives that
guarantee. `pg_create_logical_replication_slot()` followed by (or preceded by)
`pg_export_snapshot()` in a REPEATABLE READ transaction does not: the exported
snapshot is taken at a different moment than the slot's consistent point, so
transactions committing in between would be missed or duplicated.

psycopg 3 runs that command on a `replication=database` connection: it sends
parameterless statements with the simple query protocol, which is all a
walsender accepts, and the connection must be in autocommit (the command may
not run inside a transaction block). The exported snapshot stays importable
until the walsender runs its next command or disconnects, so the context
manager keeps the connection idle and open until exit; any number of parallel
readers can `SET TRANSACTION SNAPSHOT` it meanwhile (`snapshot_transaction`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from trempy_nb.changes import lsn_to_int
from trempy_nb.db import SESSION_OPTIONS, refusal_sqlstate
from trempy_nb.errors import AlreadyRunning, ConnectionFailed, TerminalError
from trempy_nb.redact import mask

__all__ = ["create_slot_with_snapshot", "snapshot_transaction"]


def replication_connection(uri: str, application_name: str) -> psycopg.Connection:
    """An autocommit `replication=database` connection (walsender commands); the error is masked."""
    try:
        return psycopg.connect(
            uri,
            autocommit=True,
            replication="database",
            options=SESSION_OPTIONS,
            application_name=application_name[:63],
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        msg = mask(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectionFailed(
            f"cannot open a replication connection to {mask(uri)}: {msg}", exc.sqlstate or refusal_sqlstate(str(exc))
        ) from None


@contextmanager
def create_slot_with_snapshot(uri: str, slot: str, application_name: str | None = None, *,
                              temporary: bool = False) -> Iterator[tuple[int, str]]:
    """Create pgoutput slot `slot` and yield (consistent_point_lsn, snapshot_name).

    The snapshot is valid only inside the `with` block; the slot outlives it, unless `temporary`:
    then it goes with the connection at exit (a per-table load in step with a running stream only
    needs its consistent point and snapshot, `engine.lifecycle`).
    """
    conn = replication_connection(uri, application_name or f"trempy_nb snapshot {slot}")
    kind = sql.SQL("TEMPORARY LOGICAL") if temporary else sql.SQL("LOGICAL")
    try:
        try:
            cur = conn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} {} pgoutput (SNAPSHOT 'export')").format(
                    sql.Identifier(slot), kind
                )
            )
        except psycopg.errors.DuplicateObject:
            raise AlreadyRunning(
                f"replication slot {slot} already exists (start_mode reload drops it; continue resumes it)"
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise TerminalError(f"cannot create replication slot {slot}: {exc}".strip()) from None
        row = cur.fetchone()
        if row is None:  # pragma: no cover - the server always answers one row
            raise TerminalError(f"CREATE_REPLICATION_SLOT {slot} returned nothing")
        _name, consistent_point, snapshot_name, _plugin = row
        yield lsn_to_int(consistent_point), snapshot_name
    finally:
        conn.close()


@contextmanager
def snapshot_transaction(
    conn: psycopg.Connection, snapshot_name: str
) -> Iterator[psycopg.Connection]:
    """A REPEATABLE READ READ ONLY transaction on `conn` that sees the exported snapshot.

    SET TRANSACTION SNAPSHOT must be the first statement of the transaction,
    and it takes no bind parameters, hence the quoted literal.
    """
    if conn.autocommit:
        raise TerminalError("snapshot_transaction needs a connection with autocommit off")
    saved = conn.isolation_level, conn.read_only
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            yield conn
    finally:
        conn.isolation_level, conn.read_only = saved
