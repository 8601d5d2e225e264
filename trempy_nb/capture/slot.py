"""The task's replication slot and publication on the source: create, check, advance, drop.

Pass autocommit connections: slot functions refuse to run in a transaction
that has written, and a long transaction would hold back the source's xmin.

The slot is the durable queue of the change stream; everything here is a thin
SQL wrapper so the reader and the runner never format identifiers themselves
(every name goes through `psycopg.sql.Identifier` or a bound parameter).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from trempy_nb.catalog import describe_table
from trempy_nb.changes import int_to_lsn, lsn_to_int
from trempy_nb.errors import AlreadyRunning, SlotLost, TerminalError, ValidationFailed

HEARTBEAT_PREFIX = "trempy_heartbeat"
OUR_APP_PREFIX = "trempy"  # application_name prefix of every connection we open

__all__ = [
    "HEARTBEAT_PREFIX",
    "SlotStatus",
    "slot_name",
    "publication_name",
    "check_prerequisites",
    "ensure_publication",
    "add_publication_table",
    "create_slot",
    "drop_task_objects",
    "slot_status",
    "advance_slot",
    "emit_heartbeat",
]


def slot_name(task: str) -> str:
    """The slot a task owns (docs/settings.md: `trempy_<task_name>`)."""
    return f"trempy_{task}"


def publication_name(task: str) -> str:
    """The publication a task owns; same name as its slot so one look finds both."""
    return f"trempy_{task}"


@dataclass(frozen=True)
class SlotStatus:
    """What the dashboard and the lag checks need to know about a slot (LSNs as ints)."""

    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None  # reserved, extended, unreserved, lost
    safe_wal_size: int | None
    retained_bytes: int | None  # pg_current_wal_lsn() - restart_lsn

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


def _lsn(value: str | None) -> int | None:
    return lsn_to_int(value) if value else None


def check_prerequisites(conn: psycopg.Connection, tables: Iterable[tuple[str, str]]) -> None:
    """Refuse, before creating anything, a source that cannot stream these tables' changes."""
    problems: list[str] = []
    wal_level = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if not wal_level or wal_level[0] != "logical":
        level = wal_level[0] if wal_level else "?"
        problems.append(
            f"wal_level is {level!r}, CDC needs 'logical' (ALTER SYSTEM SET wal_level = logical; then restart)"
        )
    role = conn.execute(
        "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if role is None or not role[1]:
        user = role[0] if role else "current user"
        problems.append(
            f"role {user} lacks the REPLICATION privilege (ALTER ROLE {user} REPLICATION)"
        )
    for schema, table in tables:
        info = describe_table(conn, schema, table)  # raises ValidationFailed if missing
        if info.replica_identity == "n":
            problems.append(
                f"table {info.qualified} has REPLICA IDENTITY NOTHING: its updates and deletes "
                "cannot be captured (set REPLICA IDENTITY DEFAULT with a primary key, or FULL)"
            )
        elif info.replica_identity == "d" and not info.primary_key:
            problems.append(
                f"table {info.qualified} has no primary key and REPLICA IDENTITY DEFAULT: add a "
                "primary key, or ALTER TABLE ... REPLICA IDENTITY FULL / USING INDEX"
            )
        elif info.replica_identity == "i" and not info.identity_columns:
            problems.append(f"table {info.qualified}: its replica identity index is missing")
    if problems:
        raise ValidationFailed("source not ready for CDC: " + "; ".join(problems))


def _table_list(tables: Sequence[tuple[str, str]]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)


def ensure_publication(
    conn: psycopg.Connection, name: str, tables: Sequence[tuple[str, str]]
) -> None:
    """Create the publication, or make its table set exactly `tables` (idempotent).

    publish_via_partition_root makes a partitioned table's changes arrive under
    the root's name, which is the name the task uses.
    """
    wanted = {(s, t) for s, t in tables}
    pub = sql.Identifier(name)
    opts = sql.SQL(
        "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
    )
    with conn.transaction():
        row = conn.execute(
            "SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,)
        ).fetchone()
        if row is not None and row[0]:
            # FOR ALL TABLES cannot be narrowed; it is ours by name, so recreate it
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(pub))
            row = None
        if row is None:
            if wanted:
                conn.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
                        pub, _table_list(sorted(wanted)), opts
                    )
                )
            else:
                conn.execute(sql.SQL("CREATE PUBLICATION {} WITH ({})").format(pub, opts))
            return
        same = conn.execute(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate AND pubviaroot"
            " FROM pg_publication WHERE pubname = %s",
            (name,),
        ).fetchone()
        if not (same and same[0]):  # only the owner may ALTER: do not when nothing changes
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET ({})").format(pub, opts))
        current = {
            (s, t)
            for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (name,),
            ).fetchall()
        }
        if current == wanted:
            return
        if wanted:
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
                    pub, _table_list(sorted(wanted))
                )
            )
        else:
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                    pub, _table_list(sorted(current))
                )
            )


def add_publication_table(conn: psycopg.Connection, name: str, key: tuple[str, str]) -> bool:
    """Add one table to the task's publication (a running task's add-table); False when it was in.

    Commits at once (autocommit): pgoutput streams the table's changes from this point of the WAL on,
    as it reads publication membership from the catalog as of each change."""
    row = conn.execute(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        (name, key[0], key[1]),
    ).fetchone()
    if row is not None:
        return False
    conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), sql.Identifier(*key)))
    return True


def create_slot(conn: psycopg.Connection, name: str) -> int:
    """Create a pgoutput logical slot; returns its consistent point (first LSN it will stream).

    Without a snapshot: use `snapshot.create_slot_with_snapshot` when a full load
    must hand over to the stream.
    """
    try:
        row = conn.execute(
            "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (name,)
        ).fetchone()
    except psycopg.errors.DuplicateObject:
        raise AlreadyRunning(f"replication slot {name} already exists") from None
    assert row is not None
    return lsn_to_int(row[0])


def slot_status(conn: psycopg.Connection, name: str) -> SlotStatus | None:
    """The slot's positions and WAL health, or None if it does not exist."""
    row = conn.execute(
        """
        SELECT slot_name::text, plugin::text, database::text, active, active_pid,
               restart_lsn::text, confirmed_flush_lsn::text, wal_status, safe_wal_size,
               CASE WHEN restart_lsn IS NOT NULL
                    THEN (pg_current_wal_lsn() - restart_lsn)::bigint END
        FROM pg_replication_slots WHERE slot_name = %s
        """,
        (name,),
    ).fetchone()
    if row is None:
        return None
    return SlotStatus(
        name=row[0],
        plugin=row[1],
        database=row[2],
        active=bool(row[3]),
        active_pid=row[4],
        restart_lsn=_lsn(row[5]),
        confirmed_flush_lsn=_lsn(row[6]),
        wal_status=row[7],
        safe_wal_size=int(row[8]) if row[8] is not None else None,
        retained_bytes=int(row[9]) if row[9] is not None else None,
    )


def advance_slot(conn: psycopg.Connection, name: str, lsn: int, *, retries: int = 50) -> int:
    """Move the slot's confirmed position forward to `lsn` (never backwards); returns it.

    A slot busy in another backend (a peek in progress) is retried briefly:
    the caller has already committed the target, so giving up is worse than waiting.
    """
    for attempt in range(retries + 1):
        status = slot_status(conn, name)
        if status is None:
            raise SlotLost(f"replication slot {name} does not exist")
        if status.lost:
            raise SlotLost(f"replication slot {name} was invalidated (wal_status lost)")
        current = status.confirmed_flush_lsn or 0
        if lsn <= current:
            return current
        try:
            row = conn.execute(
                "SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)",
                (name, int_to_lsn(lsn)),
            ).fetchone()
        except psycopg.errors.ObjectInUse:
            if not conn.autocommit:
                conn.rollback()
            if attempt == retries:
                raise
            time.sleep(0.1)
            continue
        if not conn.autocommit:
            conn.commit()
        return lsn_to_int(row[0]) if row and row[0] else lsn
    raise AssertionError("unreachable")  # pragma: no cover


def emit_heartbeat(conn: psycopg.Connection, *, flush: bool = False) -> int:
    """Write a non-transactional message into this database's WAL; returns its LSN.

    An idle captured database next to a busy one produces no output for its
    slot, so the slot could never advance and would pin the busy one's WAL;
    the reader advances past a heartbeat once nothing before it is outstanding.
    `flush`: commit a transaction with an xid right after it, which flushes the WAL
    at once, so the walsender sends the message now rather than when the WAL
    writer next runs (a catch-up run waits for exactly this message).
    """
    query = "SELECT pg_logical_emit_message(false, %s, '')::text"
    if flush:
        query += ", txid_current()"  # an xid: its commit record is flushed, the message with it
    with conn.transaction() if conn.autocommit else contextlib.nullcontext():
        if flush:
            conn.execute("SET LOCAL synchronous_commit = on")
        row = conn.execute(query, (HEARTBEAT_PREFIX,)).fetchone()
    assert row is not None
    if not conn.autocommit:
        conn.commit()
    return lsn_to_int(row[0])


def drop_task_objects(conn: psycopg.Connection, task: str, *, timeout: float = 10.0) -> None:
    """Drop the task's slot and publication if they exist (idempotent).

    A slot held by one of our own (possibly stale) backends is freed by
    terminating that backend; a slot held by anything else is left alone.
    """
    name = slot_name(task)
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            """
            SELECT s.active, s.active_pid, a.application_name
            FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
            WHERE s.slot_name = %s
            """,
            (name,),
        ).fetchone()
        if row is None:
            break
        active, pid, app = row
        if not active or pid is None:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                break
            except psycopg.errors.UndefinedObject:
                if not conn.autocommit:
                    conn.rollback()
                break
            except psycopg.errors.ObjectInUse:
                if not conn.autocommit:
                    conn.rollback()
        elif (app or "").startswith(OUR_APP_PREFIX):
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        else:
            raise TerminalError(
                f"replication slot {name} is in use by process {pid} ({app or 'unknown'}); "
                "stop that consumer first"
            )
        if time.monotonic() > deadline:
            raise TerminalError(f"replication slot {name} stayed active; could not drop it")
        time.sleep(0.1)
    # A publication made for the task by the tables' owner (least privilege: the task's role
    # cannot own it) is left alone; ensure_publication reuses it.
    owned = conn.execute(
        "SELECT pg_has_role(current_user, pubowner, 'USAGE') FROM pg_publication WHERE pubname = %s",
        (publication_name(task),),
    ).fetchone()
    if owned is not None and owned[0]:
        conn.execute(
            sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication_name(task)))
        )
    if not conn.autocommit:
        conn.commit()
