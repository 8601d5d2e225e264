"""The logical replication stream: START_REPLICATION on a replication connection, pgoutput.

Why a stream and not `pg_logical_slot_peek_binary_changes`: every peek (and
every `pg_replication_slot_advance`) starts decoding again at the slot's
`restart_lsn`, which only moves at running-xacts records (every 15 s or so):
with a backlog written quickly, each call re-reads hundreds of MB of WAL and
the source's CPU, not the data, bounds the rate. A walsender decodes once,
continuously, and a standby status update moves the slot at no decoding cost.

psycopg 3 has no replication API, but its libpq wrapper (`conn.pgconn`) has
everything the COPY BOTH sub-protocol needs: the command goes out with the
simple query protocol, then XLogData ('w') and keepalive ('k') messages come
in with `get_copy_data` and status updates ('r') go out with `put_copy_data`.
"""

from __future__ import annotations

import select
import struct
import time
from datetime import datetime, timezone

import psycopg
from psycopg import pq, sql

from trempy_nb.capture.snapshot import replication_connection
from trempy_nb.changes import int_to_lsn
from trempy_nb.errors import TransientError

__all__ = ["WalStream"]

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_STATUS = struct.Struct("!cQQQqB")  # 'r', written, flushed, applied, clock (us since 2000), reply
_KEEPALIVE = struct.Struct("!QqB")  # server WAL end, clock, reply requested
_XLOG_HEADER = 25  # 'w', data start, WAL end, clock
FEEDBACK_EVERY_S = 10.0  # well under the default wal_sender_timeout (60 s)


def _quote(value: str) -> str:
    """A string literal for the replication command grammar (no bind parameters there)."""
    return "'" + value.replace("'", "''") + "'"


class WalStream:
    """One START_REPLICATION session on `slot`: pgoutput messages in, the flushed position out."""

    def __init__(
        self,
        uri: str,
        slot: str,
        publication: str,
        *,
        start_lsn: int = 0,
        application_name: str | None = None,
    ) -> None:
        self.conn = replication_connection(uri, application_name or f"trempy_nb stream {slot}")
        self.pg = self.conn.pgconn
        self.flushed = 0
        self.server_end = 0
        self.last_status = 0.0
        pub = '"' + publication.replace('"', '""') + '"'
        cmd = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {},"
            " messages 'true')"
        ).format(sql.Identifier(slot), sql.SQL(int_to_lsn(start_lsn)), sql.SQL(_quote(pub)))
        try:
            self.pg.send_query(cmd.as_bytes(self.conn))
            res = self.pg.get_result()
            if res is None or res.status != pq.ExecStatus.COPY_BOTH:
                raise self._error(res)
        except BaseException:
            self.conn.close()
            raise

    def _error(self, res: pq.abc.PGresult | None = None) -> psycopg.Error:
        """The server's error as the psycopg exception class of its SQLSTATE."""
        if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
            state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            text = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
            cls = psycopg.errors.lookup(state) if state else psycopg.OperationalError
            return cls(text or "replication stream failed")
        text = self.pg.error_message.decode(errors="replace").strip()
        return psycopg.OperationalError(text or "the replication stream ended")

    def read(self, timeout: float) -> memoryview | None:
        """The next pgoutput message, or None if none arrived within `timeout` seconds.

        Keepalives are answered here (and a status update goes out every
        FEEDBACK_EVERY_S), so a slow consumer is not cut off by wal_sender_timeout.
        """
        deadline = time.monotonic() + timeout
        pg = self.pg
        while True:
            n, data = pg.get_copy_data(1)
            if n > 0:
                tag = data[0]
                if tag == 119:  # 'w'
                    return memoryview(data)[_XLOG_HEADER:]
                if tag == 107:  # 'k'
                    end, _clock, reply = _KEEPALIVE.unpack_from(data, 1)
                    self.server_end = max(self.server_end, end)
                    if reply:
                        self.status()
                continue
            if n < 0:
                res = pg.get_result()
                raise self._error(res)
            if time.monotonic() - self.last_status > FEEDBACK_EVERY_S:
                self.status()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([pg.socket], [], [], left)
            pg.consume_input()

    def status(self, flushed: int | None = None, *, reply: bool = False) -> None:
        """Send a standby status update: everything before `flushed` may be released.

        `reply` asks for a keepalive right away: it comes after every message the
        server sent before it, so its WAL end (`server_end`) is what has been sent."""
        if flushed is not None:
            self.flushed = max(self.flushed, flushed)
        now = datetime.now(timezone.utc) - _PG_EPOCH
        clock = (now.days * 86_400 + now.seconds) * 1_000_000 + now.microseconds
        f = self.flushed
        if self.pg.put_copy_data(_STATUS.pack(b"r", f, f, f, clock, int(reply))) != 1:
            raise TransientError("cannot send a status update on the replication stream")
        while self.pg.flush() == 1:
            select.select([], [self.pg.socket], [], 1.0)
        self.last_status = time.monotonic()

    def close(self) -> None:
        """End the stream politely (the server applies the last status update first), then disconnect."""
        try:
            if self.pg.status == pq.ConnStatus.OK:
                self.status()
                self.pg.put_copy_end()
                self.pg.flush()
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    n, _ = self.pg.get_copy_data(1)
                    if n == -1:
                        break
                    if n == 0:
                        select.select([self.pg.socket], [], [], 0.1)
                        self.pg.consume_input()
                while self.pg.get_result() is not None:
                    pass
        except (psycopg.Error, OSError):
            pass
        finally:
            self.conn.close()
