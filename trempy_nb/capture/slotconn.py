"""The capture's ordinary (autocommit) connection to the source, and what it is used for.

One connection per reader serves every SQL call capture makes besides the
replication stream itself: the slot check before the first read, peeks
(previews, and peek mode), slot advances in peek mode, heartbeats, the
primary key of a relation, and the question "why did that call fail?" that
turns a psycopg error into `SlotLost` or a retryable `TransientError`.
"""

from __future__ import annotations

import psycopg

from trempy_nb.capture.slot import advance_slot, emit_heartbeat, slot_status
from trempy_nb.catalog import describe_table
from trempy_nb.changes import int_to_lsn
from trempy_nb.db import connect
from trempy_nb.errors import SlotLost, TerminalError, TransientError, TrempyError

__all__ = ["SlotConnection"]

_PEEK_SQL = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s,"
    " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')"
)


class SlotConnection:
    """An autocommit connection (reopened when closed) bound to one slot and publication."""

    def __init__(self, uri: str, slot: str, publication: str, application_name: str) -> None:
        self.uri, self.slot, self.publication = uri, slot, publication
        self.application_name = application_name
        self._conn: psycopg.Connection | None = None
        self._checked = False
        self._pub_option = '"' + publication.replace('"', '""') + '"'

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.uri, autocommit=True, application_name=self.application_name)
            self._checked = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def check(self) -> None:
        """Once per connection: the slot exists, is not lost, and decodes with pgoutput."""
        if self._checked:
            return
        status = slot_status(self.conn, self.slot)
        if status is None:
            raise SlotLost(f"replication slot {self.slot} does not exist on the source")
        if status.lost:
            raise SlotLost(
                f"replication slot {self.slot} was invalidated (WAL removed, wal_status lost)"
            )
        if status.plugin != "pgoutput":
            raise TerminalError(f"replication slot {self.slot} uses {status.plugin}, not pgoutput")
        self._checked = True

    def translate(self, exc: psycopg.Error) -> Exception:
        """Turn a failed slot call into SlotLost when the slot is gone or invalidated."""
        if isinstance(exc, psycopg.errors.UndefinedObject):
            return SlotLost(f"replication slot {self.slot} does not exist on the source")
        try:
            status = slot_status(self.conn, self.slot)
        except psycopg.Error:
            return exc
        if status is None:
            return SlotLost(f"replication slot {self.slot} does not exist on the source")
        if status.lost:
            return SlotLost(f"replication slot {self.slot} was invalidated (wal_status lost)")
        if isinstance(exc, psycopg.errors.ObjectInUse):
            return TransientError(f"replication slot {self.slot} is busy in another session: {exc}")
        return exc

    def peek(self, upto_lsn: int | None, nchanges: int) -> list[bytes]:
        """The raw pgoutput messages from the slot's confirmed position on; consumes nothing.

        `nchanges` is PostgreSQL's soft `upto_nchanges`: it stops after the
        transaction (or message) during which the count is reached."""
        self.check()
        upto = int_to_lsn(upto_lsn) if upto_lsn is not None else None
        try:
            with self.conn.cursor(binary=True) as cur:
                cur.execute(_PEEK_SQL, (self.slot, upto, nchanges, self._pub_option))
                return [r[0] for r in cur.fetchall()]
        except psycopg.Error as exc:
            err = self.translate(exc)
            if isinstance(err, TrempyError):
                raise err from None
            raise

    def advance(self, lsn: int) -> None:
        """Move the slot's confirmed position to `lsn` (peek mode: decodes WAL up to it)."""
        advance_slot(self.conn, self.slot, lsn)

    def heartbeat(self, *, flush: bool = False) -> None:
        """A non-transactional message in the source's WAL (see `slot.emit_heartbeat`)."""
        emit_heartbeat(self.conn, flush=flush)

    def primary_key(self, namespace: str, name: str) -> tuple[str, ...]:
        """The table's primary key columns, or () when it has none or the lookup fails."""
        try:
            return describe_table(self.conn, namespace or "pg_catalog", name).primary_key
        except (TrempyError, psycopg.Error):
            return ()
