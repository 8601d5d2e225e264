"""Fencing and eviction on a MariaDB target: `writer.state`'s fence functions (same meaning) and the
session registry that stands in for PostgreSQL's application_name.

MariaDB shows no application name (and performance_schema, where connection
attributes would be, is off by default), so every task connection records itself
in `trempy_sessions` (id and client host:port, as the processlist shows them) when
it opens; eviction KILLs the live ones of a task. A registration whose id and host
no longer match a live session is ignored and forgotten.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pymysql

from trempy_nb.errors import Fenced
from trempy_nb.writer.fence import Fence, lost_message, must_claim
from trempy_nb.writer.mariadb.ddl import FENCES, SESSIONS, ensure_state_tables, sessions_table_sql
from trempy_nb.writer.mariadb.names import database_of, execute, qualified


def _db(conn: Any, database: str | None) -> str:
    return database or database_of(conn)


# -- fencing (`writer.fence`) -------------------------------------------------------------------


def check_fence(conn: Any, fence: Fence | None, task: str, *, database: str | None = None) -> None:
    """Inside the caller's write transaction: lock the fence row, refuse (`Fenced`) a newer stored epoch
    or an expired lease, store the epoch (`writer.state.check_fence`). No fence: nothing."""
    if fence is None:
        return
    key = fence.key or task
    table = qualified(_db(conn, database), FENCES)
    with conn.cursor() as cur:
        execute(cur, f"SELECT epoch FROM {table} WHERE task = %s FOR UPDATE", (key,))
        row = cur.fetchone()
    if must_claim(fence, key, int(row[0]) if row else None):
        _claim(conn, table, key, fence.epoch)


@contextlib.contextmanager
def fenced(conn: Any, fence: Fence | None, task: str, *, database: str | None = None) -> Iterator[None]:
    """On an autocommit connection: the block's writes in one transaction that checks the fence
    first (no fence: as before)."""
    if fence is None:
        yield
        return
    conn.begin()
    try:
        check_fence(conn, fence, task, database=database)
        yield
        conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise


def _claim(conn: Any, table: str, key: str, epoch: int) -> None:
    with conn.cursor() as cur:
        execute(cur, f"INSERT INTO {table} (task, epoch, updated_at) VALUES (%s, %s, UTC_TIMESTAMP(6))"
                " ON DUPLICATE KEY UPDATE updated_at = IF(epoch <= VALUES(epoch), VALUES(updated_at), updated_at),"
                " epoch = GREATEST(epoch, VALUES(epoch))", (key, int(epoch)))
        execute(cur, f"SELECT epoch FROM {table} WHERE task = %s FOR UPDATE", (key,))
        row = cur.fetchone()
    stored = int(row[0]) if row else None
    if stored is not None and stored > epoch:
        raise Fenced(lost_message(key, stored, int(epoch)))


def claim_target(conn: Any, key: str, epoch: int, *, database: str | None = None) -> None:
    """Takeover: store the new epoch before anything else (committed here; `Fenced` if newer is stored)."""
    db = _db(conn, database)
    ensure_state_tables(conn, db)
    conn.commit()
    try:
        conn.begin()
        _claim(conn, qualified(db, FENCES), key, epoch)
        conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise


def read_fence(conn: Any, key: str, *, database: str | None = None) -> int | None:
    with conn.cursor() as cur:
        try:
            execute(cur, f"SELECT epoch FROM {qualified(_db(conn, database), FENCES)} WHERE task = %s", (key,))
        except pymysql.err.ProgrammingError:  # no state tables yet
            return None
        row = cur.fetchone()
    return int(row[0]) if row else None


# -- the session registry (eviction: MariaDB has no application_name) ----------------------------

_NO_TABLE = 1146


def register_session(conn: Any, app: str, *, database: str | None = None) -> None:
    """Record this connection (id, client host:port) under its application name; commits.
    Best effort: a user that may not write the registry (the run's validation says what it lacks)
    still connects, its sessions only cannot be evicted."""
    try:
        _register(conn, app, _db(conn, database))
    except pymysql.err.MySQLError:
        with contextlib.suppress(Exception):
            conn.rollback()


def _register(conn: Any, app: str, db: str) -> None:
    stmt = (f"INSERT INTO {qualified(db, SESSIONS)} (connection_id, host, app, updated_at)"
            " SELECT ID, HOST, %s, UTC_TIMESTAMP(6) FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
            " ON DUPLICATE KEY UPDATE host = VALUES(host), app = VALUES(app), updated_at = VALUES(updated_at)")
    with conn.cursor() as cur:
        try:
            execute(cur, stmt, (app,))
        except pymysql.err.ProgrammingError as exc:
            if not exc.args or exc.args[0] != _NO_TABLE:
                raise
            execute(cur, sessions_table_sql(db))
            execute(cur, stmt, (app,))
    conn.commit()


def terminate_named(conn: Any, like: str, *, unlike: str | None = None, keep: Iterable[int] = (),
                    database: str | None = None, wait_s: float = 5.0) -> list[int]:
    """KILL the live registered sessions whose application name matches `like` (and not `unlike`),
    other than this one and `keep`; wait (bounded) until they are gone; forget dead registrations."""
    table = qualified(_db(conn, database), SESSIONS)
    keep_ids = {int(k) for k in keep}
    with conn.cursor() as cur:
        try:
            execute(cur, f"SELECT s.connection_id FROM {table} s JOIN information_schema.PROCESSLIST p"
                    " ON p.ID = s.connection_id AND p.HOST = s.host WHERE s.app LIKE %s"
                    " AND (%s IS NULL OR s.app NOT LIKE %s) AND s.connection_id <> CONNECTION_ID()",
                    (like, unlike, unlike))
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == _NO_TABLE:
                return []
            raise
        ids = [int(r[0]) for r in cur.fetchall() if int(r[0]) not in keep_ids]
        for cid in ids:
            with contextlib.suppress(pymysql.err.MySQLError):  # gone meanwhile
                execute(cur, f"KILL CONNECTION {int(cid)}")
        deadline = time.monotonic() + wait_s
        while ids and time.monotonic() < deadline:
            execute(cur, "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ("
                    + ", ".join(str(int(i)) for i in ids) + ")")
            row = cur.fetchone()
            if not row or not row[0]:
                break
            time.sleep(0.05)
        execute(cur, f"DELETE s FROM {table} s LEFT JOIN information_schema.PROCESSLIST p"
                " ON p.ID = s.connection_id AND p.HOST = s.host WHERE p.ID IS NULL")
    conn.commit()
    return ids
