"""Stream mode, the main path: START_REPLICATION on a replication connection, pgoutput.

Why a stream and not `pg_logical_slot_peek_binary_changes`: every peek (and
every `pg_replication_slot_advance`) starts decoding again at the slot's
`restart_lsn`, which only moves at running-xacts records (every 15 s or so):
with a backlog written quickly, each call re-reads hundreds of MB of WAL and
the source's CPU, not the data, bounds the rate. A walsender decodes once,
continuously, and a standby status update moves the slot at no decoding cost.

psycopg 3 has no replication API, but its libpq wrapper (`conn.pgconn`) has
everything the COPY BOTH sub-protocol needs: the command goes out with the
simple query protocol, then XLogData and keepalive messages come in with
`get_copy_data` and status updates go out with `put_copy_data`. The bytes of
those messages are `walproto.py`'s business, the waiting `pgwait.py`'s.

`WalStream` is the session; `StreamWindows` turns what it delivers into
windows of whole units for the reader (a `WindowSource`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import psycopg
from psycopg import pq, sql

from trempy_nb import pgwait
from trempy_nb.capture import walproto
from trempy_nb.capture.inbox import Inbox
from trempy_nb.capture.slotconn import SlotConnection
from trempy_nb.capture.snapshot import replication_connection
from trempy_nb.changes import int_to_lsn
from trempy_nb.errors import TransientError, TrempyError

if TYPE_CHECKING:
    from trempy_nb.capture import tuples as tp
    from trempy_nb.capture.msgwindow import MessageWindow

__all__ = ["WalStream", "StreamWindows", "FEEDBACK_EVERY_S", "STREAM_WAIT_S", "STREAM_STALL_S"]

_XLOG, _XLOG_HEADER = walproto.TAG_XLOG, walproto.XLOG_HEADER  # see walproto.xlog_payload
FEEDBACK_EVERY_S = 10.0  # well under the default wal_sender_timeout (60 s)
#: how long a fetch waits for a first message when nothing is pending
STREAM_WAIT_S = 0.05
#: a transaction whose commit has not come after this long is a broken stream
STREAM_STALL_S = 300.0
#: while waiting for a catch-up bound, a new heartbeat at most this often
BEACON_EVERY_S = 5.0


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
                if data[0] == _XLOG:  # once per change: the test and slice inline, no call
                    return memoryview(data)[_XLOG_HEADER:]
                ka = walproto.keepalive(data)
                if ka is not None:
                    self.server_end = max(self.server_end, ka.wal_end)
                    if ka.reply:
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
            pgwait.receive(pg, left)

    def status(self, flushed: int | None = None, *, reply: bool = False) -> None:
        """Send a standby status update: everything before `flushed` may be released.

        `reply` asks for a keepalive right away: it comes after every message the
        server sent before it, so its WAL end (`server_end`) is what has been sent."""
        if flushed is not None:
            self.flushed = max(self.flushed, flushed)
        msg = walproto.standby_status(self.flushed, datetime.now(timezone.utc), reply=reply)
        if self.pg.put_copy_data(msg) != 1:
            raise TransientError("cannot send a status update on the replication stream")
        pgwait.flush(self.pg)
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
                        pgwait.receive(self.pg, 0.1)
                while self.pg.get_result() is not None:
                    pass
        except (psycopg.Error, OSError):
            pass
        finally:
            self.conn.close()


class StreamWindows:
    """A `WindowSource` over a `WalStream`, opened on first use and reopened after an error.

    A stream never resends: what it delivered but no window took yet stays in
    the inbox (a transaction still arriving, units past a catch-up bound), and
    after an error the new session simply starts again at the slot's confirmed
    position. The slot moves by status updates: no decoding on the server.
    """

    resends = False

    def __init__(self, link: SlotConnection) -> None:
        self._link = link
        self._wal: WalStream | None = None
        self._inbox = Inbox()
        self._beacon_for: int | None = None  # the catch-up bound a heartbeat was written for
        self.blocked_at: int | None = None  # the bound the last fetch stopped at

    def _stream(self) -> WalStream:
        if self._wal is None:
            link = self._link
            link.check()
            self._wal = WalStream(
                link.uri, link.slot, link.publication, application_name=link.application_name
            )
        return self._wal

    def _drop(self) -> None:
        """Close the stream; what it delivered but no window took is simply received again."""
        wal, self._wal = self._wal, None
        self._inbox = Inbox()
        if wal is not None:
            wal.close()

    def close(self) -> None:
        self._drop()

    def advance(self, lsn: int) -> None:
        try:
            self._stream().status(lsn)  # a status update: no decoding on the server
        except psycopg.Error:
            self._drop()
            raise

    def prefetch(self, timeout: float, limit: int) -> bool:
        """Receive what arrives within `timeout` (up to `limit` messages held); also keeps the
        walsender from timing out. False if nothing was received."""
        if self._wal is None:
            return False
        got = False
        try:
            deadline = time.monotonic() + timeout
            while len(self._inbox) < limit:
                msg = self._wal.read(max(0.0, deadline - time.monotonic()))
                if msg is None:
                    break
                self._inbox.add(msg)
                got = True
            if time.monotonic() - self._wal.last_status > FEEDBACK_EVERY_S:
                self._wal.status()
        except psycopg.Error:
            self._drop()  # the next fetch reconnects (or reports why it cannot)
        return got

    def _beacon(self, upto_lsn: int) -> None:
        """A message past the catch-up bound: once it arrives, everything before the bound has."""
        self._link.heartbeat(flush=True)
        self._beacon_for = upto_lsn

    def fetch(self, upto_lsn: int | None, nchanges: int) -> tp.Window | MessageWindow:
        """Whole units: at least `nchanges` messages if they come without waiting, only units
        before `upto_lsn`; what is left stays for the next call."""
        inbox = self._inbox
        try:
            wal = self._stream()
            ok_end, blocked, seen, pinged = 0, False, 0, time.monotonic()
            while True:
                for end, lsn in inbox.units[seen:]:
                    if upto_lsn is not None and lsn >= upto_lsn:
                        if inbox.lone_message(end, ok_end):
                            # the first unit past the bound is a lone message (our beacon): a
                            # no-op taken too, so the slot moves past it and the next run does
                            # not decode again the WAL in between (other databases' in a cluster)
                            ok_end = end
                        blocked = True
                        break
                    ok_end = end
                seen = len(inbox.units)
                if blocked or (ok_end and ok_end >= nchanges):
                    break
                if upto_lsn is not None and not inbox.units and self._beacon_for != upto_lsn:
                    # catching up: the beacon goes out at once, WAL flushed (`_beacon` below)
                    self._beacon(upto_lsn)
                    pinged = time.monotonic()
                if inbox.units:
                    timeout = 0.0  # something whole is here: take what comes without waiting
                elif inbox.in_txn:
                    timeout = 1.0  # a transaction is arriving: wait for its commit
                else:
                    timeout = STREAM_WAIT_S
                msg = wal.read(timeout)
                if msg is not None:
                    inbox.add(msg)
                    continue
                if inbox.in_txn and not inbox.units:
                    if time.monotonic() - inbox.txn_since > STREAM_STALL_S:
                        raise TransientError("the replication stream stalled inside a transaction")
                    continue
                if upto_lsn is not None and not inbox.units:
                    # quiet is not "caught up": the walsender may still be decoding towards
                    # upto_lsn. A message written now lies past it, and the stream delivers
                    # it after every transaction that committed before it: read until a unit
                    # at or past upto_lsn arrives (then everything before it is here).
                    if time.monotonic() - pinged > BEACON_EVERY_S:
                        self._beacon(upto_lsn)
                        pinged = time.monotonic()
                    continue
                break
        except psycopg.Error as exc:
            self._drop()
            err = self._link.translate(exc)
            if isinstance(err, TrempyError):
                raise err from None
            raise
        self.blocked_at = upto_lsn if blocked else None
        return inbox.take(ok_end)
