"""The change reader: peek the slot, decode pgoutput, frame whole transactions.

Reading uses `pg_logical_slot_peek_binary_changes`, which never consumes: the
slot only moves when `confirm()` is called after the target (or the broker)
has durably taken the batch, so a crash replays instead of losing changes.
Because a peek always starts again at the slot's confirmed position, the
reader remembers what it has already returned and skips it.

Bookkeeping of positions (all ints, see `changes.lsn_to_int`):
- a transaction is identified by its commit LSN (start of the commit record:
  the `_trempy_lsn` meta column, `ChangeBatch.end_lsn`) and is consumed through
  its end LSN; the slot must be advanced to the *end* LSN to skip it, because
  decoding replays every commit whose record starts at or after the slot's
  confirmed position;
- a non-transactional message (heartbeat) carries the end of its record.

Batch contract (see `changes.py`): `first_lsn`/`end_lsn` are the commit LSNs
of the first and last transaction in the batch. The bound (`max_changes`) is
soft, like PostgreSQL's own `upto_nchanges`: a transaction is never split, so
one 20k-row transaction is one 20k-row batch.

Peeks are few and large: each one decodes the slot's WAL again from its
`restart_lsn` (often far behind), so its fixed cost is paid per peek, not per
change. One peek fetches a *window* of about `window_changes` rows, which is
framed into batches of `max_changes` without asking the server again; the
next peek comes when the window is used up. Framing is vectorised
(`capture.tuples`): values are sliced out of the peek buffer as string views.

For the writer: an update that changes the key arrives as 'D' (old key) then
'I' (new row) with consecutive `_trempy_seq`. Under REPLICA IDENTITY DEFAULT an
unchanged TOASTed column of such an 'I' is null and listed in
`_trempy_unchanged`; its value is the one of the row just deleted. Under
REPLICA IDENTITY FULL unchanged values are filled from the old row, so only
DEFAULT/INDEX tables ever carry `_trempy_unchanged`.
"""

from __future__ import annotations

import gc
import struct
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl
import psycopg

from trempy_nb.capture import tuples as tp
from trempy_nb.capture.pgoutput import (
    Begin,
    Commit,
    DecodeError,
    LogicalMessage,
    Relation,
    Truncate,
)
from trempy_nb.capture.slot import advance_slot, emit_heartbeat, slot_status
from trempy_nb.capture.stream import FEEDBACK_EVERY_S, WalStream
from trempy_nb.catalog import describe_table
from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED, ChangeBatch, TableChanges
from trempy_nb.errors import SlotLost, TerminalError, TransientError, TrempyError

__all__ = ["ChangeReader"]

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_Q = struct.Struct("!Q")
#: Stream mode: how long a read waits for a first message when nothing is pending
STREAM_WAIT_S = 0.05
#: Stream mode: a transaction whose commit has not come after this long is a broken stream
STREAM_STALL_S = 300.0

#: Rows framed at a time (the numpy scratch arrays are a few times columns x rows x 8 bytes)
FRAME_CHUNK_ROWS = 1 << 16

#: Aim for peek windows of about this many bytes (wide rows get fewer rows per window)
WINDOW_BYTES = 64 << 20

_PEEK_SQL = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s,"
    " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')"
)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building a batch.

    Decoding allocates hundreds of thousands of tuples and strings that are
    all alive; each generation-0 pass would rescan them for nothing. Measured:
    about +45% changes/s. Nothing here creates cycles, and an application that
    disabled GC itself keeps it disabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _epoch_us(ts: datetime) -> int:
    d = ts - _UNIX_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


@dataclass
class _Consumed:
    """A run of peek rows the reader has passed over but the slot has not yet skipped."""

    position: int  # commit LSN of a transaction, or the LSN of a non-transactional message
    advance_to: int  # where the slot must be advanced to skip it
    rows: int  # peek rows it occupies (counts toward upto_nchanges)
    returned: bool  # handed out in a batch (needs confirm) vs a no-op (heartbeat, empty txn)


@dataclass
class _Cached:
    """The window of the last peek, served batch by batch until it is used up."""

    upto: int | None
    win: tp.Window
    nchanges: int  # upto_nchanges the peek asked for
    resume: tuple[int, dict[int, Relation]] | None = None  # (structure index, relations there)
    exhausted: bool = False


@dataclass
class _Txn:
    begin: int  # message index of its Begin
    lsn: int
    ts_us: int
    ts: datetime


@dataclass
class _Scan:
    """What the structural pass selected for a batch (message indices are window positions)."""

    txns: list[_Txn] = field(default_factory=list)
    lo: int = 0  # first message of the batch
    hi: int = 0  # its last Commit
    start_rels: dict[int, Relation] = field(default_factory=dict)
    rel_events: dict[int, list[tuple[int, Relation]]] = field(default_factory=dict)
    truncates: list[tuple[int, tuple[int, ...], _Txn]] = field(default_factory=list)


@dataclass
class _Collected:
    batch: ChangeBatch | None
    consumed: list[_Consumed]
    relations: dict[tuple[str, str], Relation]
    rows_seen: int
    hit_limit: bool
    progressed: bool
    reached_end: bool = True  # every complete unit of the window was taken or passed over
    at_upto: bool = False  # stopped at a unit at or past the upto_lsn bound
    resume: tuple[int, dict[int, Relation]] | None = None


class ChangeReader:
    """Reads whole transactions from a pgoutput slot as `ChangeBatch`es.

    `read_batch()` returns the next unseen transactions (bounded by about
    `max_changes` peek rows, never fewer than one whole transaction);
    `confirm(lsn)` advances the slot once the batch ending at `lsn` is durable.
    `relations` holds the latest Relation per (schema, table) as of the last
    returned batch, so the applier can add a column or stop on SchemaChanged.
    """

    def __init__(
        self,
        uri: str,
        slot: str,
        publication: str,
        max_changes: int = 10000,
        *,
        start_after_lsn: int | None = None,
        application_name: str | None = None,
        window_changes: int | None = None,
        stream: bool = False,
    ) -> None:
        if max_changes < 1:
            raise ValueError("max_changes must be >= 1")
        #: peek rows fetched at once (bounded: a backlog is never decoded whole before a batch)
        self.window_changes = max(window_changes or 5 * max_changes, max_changes)
        self._win: _Cached | None = None
        self._rels_by_oid: dict[int, Relation] = {}
        self._avg_row_bytes = 0.0  # of the last peek: sizes the next window
        # stream mode: a walsender session instead of peeks (see capture/stream.py)
        self.stream = stream
        self._wal: WalStream | None = None
        # received messages not yet handed to a window: one buffer + where each message ends
        self._pbuf = bytearray()
        self._pends: list[int] = []
        self._units: list[tuple[int, int]] = []  # (messages through, lsn) of complete units
        self._in_txn = False
        self._txn_lsn = 0
        self._txn_since = 0.0
        self._beacon_for: int | None = None  # the catch-up bound a heartbeat was written for
        self._blocked_at: int | None = None  # the bound the last stream read stopped at
        self.uri = uri
        self.slot = slot
        self.publication = publication
        self.max_changes = max_changes
        self.application_name = (application_name or f"trempy_nb capture {slot}")[:63]
        self.relations: dict[tuple[str, str], Relation] = {}
        # consumed-through position: commits starting before it and messages ending at or
        # before it were already returned (or skipped as no-ops) by this reader
        self._through = (start_after_lsn + 1) if start_after_lsn is not None else 0
        self._consumed: deque[_Consumed] = deque()
        self._keys: dict[int, tuple[tuple[Any, ...], tuple[int, ...]]] = {}
        self._conn: psycopg.Connection | None = None
        self._checked = False
        self._pub_option = '"' + publication.replace('"', '""') + '"'

    # -- connection -------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            from trempy_nb.db import connect

            self._conn = connect(self.uri, autocommit=True, application_name=self.application_name)
            self._checked = False
        return self._conn

    def close(self) -> None:
        self._drop_stream()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ChangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_slot(self) -> None:
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

    # -- public API ------------------------------------------------------------------------

    def read_batch(self, upto_lsn: int | None = None) -> ChangeBatch | None:
        """The next whole transactions not yet returned, or None if there are none
        (with `upto_lsn`: none that committed before it)."""
        while True:
            batch, at_upto = self._read_once(upto_lsn)
            if batch is not None or not self.stream or upto_lsn is None or at_upto:
                return batch
            # stream mode: a window of no-ops (heartbeats) is not the end; the end is a unit at
            # or past upto_lsn in hand, which the stream delivers after all that came before

    def _read_once(self, upto_lsn: int | None) -> tuple[ChangeBatch | None, bool]:
        limit = self.window_changes
        if self._avg_row_bytes:
            limit = max(self.max_changes, min(limit, int(WINDOW_BYTES / self._avg_row_bytes)))
        while True:
            got = self._collect(upto_lsn, limit, self.max_changes)
            if got.progressed or not got.hit_limit or self.stream:
                break  # (a stream has nothing further to look at: it never resends)
            limit *= 2  # all rows were already-seen ones: look further
        if self._win is not None:
            self._win.resume = got.resume
            self._win.exhausted = got.reached_end
            if got.reached_end:
                self._win = None  # used up: its buffer need not live while the batch is applied
        if got.resume is not None:
            # every Relation seen so far, returned or not: a stream sends each one once per
            # session, so one seen in a skipped or no-op transaction is needed later
            self._rels_by_oid = got.resume[1]
        self._consumed.extend(got.consumed)
        if got.consumed:
            last = got.consumed[-1]
            self._through = max(self._through, last.advance_to)
        if got.batch is not None:
            self.relations.update(got.relations)
        else:
            self._advance_leading_noops()
        at_upto = got.at_upto or (upto_lsn is not None and self._blocked_at == upto_lsn)
        return got.batch, at_upto

    def peek_changes(self, limit: int = 100) -> ChangeBatch | None:
        """Up to about `limit` pending changes for a preview; changes no reader state."""
        return self._collect(None, limit, limit, cache=False).batch

    def has_buffered(self, upto_lsn: int | None = None) -> bool:
        """Whether the next `read_batch(upto_lsn)` is served from the last peek (no server call)."""
        c = self._win
        return c is not None and not c.exhausted and (self.stream or c.upto == upto_lsn)

    def confirm(self, lsn: int) -> None:
        """The batch whose last commit LSN is `lsn` is durable on the target: advance the slot."""
        target = None
        while self._consumed and self._consumed[0].position <= lsn:
            target = self._consumed.popleft().advance_to
        if target is None:
            # not something this reader returned (e.g. a checkpoint from before a restart):
            # commit_lsn + 1 lies inside that commit record, which is enough to skip it
            target = lsn + 1
        while self._consumed and not self._consumed[0].returned:
            target = self._consumed.popleft().advance_to
        self._through = max(self._through, target)
        self._advance(target)

    def prefetch(self, timeout: float) -> bool:
        """Stream mode, while the consumer is busy: receive what arrives within `timeout`
        (up to a window's worth), so the next batch is one big batch, not many small ones.
        Also keeps the walsender from timing out. False if nothing was received."""
        if self._wal is None:
            return False
        got = False
        try:
            deadline = time.monotonic() + timeout
            while len(self._pends) < self.window_changes:
                msg = self._wal.read(max(0.0, deadline - time.monotonic()))
                if msg is None:
                    break
                self._receive(msg)
                got = True
            if time.monotonic() - self._wal.last_status > FEEDBACK_EVERY_S:
                self._wal.status()
        except psycopg.Error:
            self._drop_stream()  # the next read reconnects (or reports why it cannot)
        return got

    @property
    def pending_confirm(self) -> int:
        """How many returned transactions are not yet confirmed."""
        return sum(1 for c in self._consumed if c.returned)

    # -- internals -------------------------------------------------------------------------

    def _advance_leading_noops(self) -> None:
        target = None
        while self._consumed and not self._consumed[0].returned:
            target = self._consumed.popleft().advance_to
        if target is not None:
            self._advance(target)

    def _advance(self, lsn: int) -> None:
        try:
            if self.stream:
                self._wal_stream().status(lsn)  # a status update: no decoding on the server
            else:
                advance_slot(self.conn, self.slot, lsn)
        except psycopg.Error as exc:
            if self.stream:
                self._drop_stream()
            raise self._translate(exc) from None

    # -- stream mode ---------------------------------------------------------------------------

    def _wal_stream(self) -> WalStream:
        if self._wal is None:
            if not self._checked:
                self._check_slot()
            self._wal = WalStream(
                self.uri, self.slot, self.publication, application_name=self.application_name
            )
        return self._wal

    def _drop_stream(self) -> None:
        """Close the stream; what it delivered but no window took is simply received again."""
        wal, self._wal = self._wal, None
        self._pbuf, self._pends, self._units, self._in_txn = bytearray(), [], [], False
        if wal is not None:
            wal.close()

    def _receive(self, msg: bytes | memoryview) -> None:
        """Append a streamed message; note where whole units (transactions, messages) end."""
        self._pbuf += msg
        self._pends.append(len(self._pbuf))
        tag = msg[0]
        if tag == 66:  # 'B'
            self._in_txn = True
            self._txn_lsn = _Q.unpack_from(msg, 1)[0]
            self._txn_since = time.monotonic()
        elif tag == 67:  # 'C'
            self._in_txn = False
            self._units.append((len(self._pends), _Q.unpack_from(msg, 2)[0]))
        elif tag == 77 and not self._in_txn and not msg[1] & 1:  # non-transactional 'M'
            self._units.append((len(self._pends), _Q.unpack_from(msg, 2)[0]))

    def _stream_rows(self, upto_lsn: int | None, nchanges: int) -> tp.Window:
        """Whole units from the stream: at least `nchanges` rows if they come without waiting,
        only units before `upto_lsn`; what is left stays for the next call."""
        try:
            wal = self._wal_stream()
            ok_end, blocked, seen, pinged = 0, False, 0, time.monotonic()
            while True:
                for end, lsn in self._units[seen:]:
                    if upto_lsn is not None and lsn >= upto_lsn:
                        if end - 1 == ok_end and self._pbuf[self._pends[end - 2] if end > 1 else 0] == 77:
                            # the first unit past the bound is a lone message (our beacon): a no-op
                            # taken too, so the slot moves past it and the next run does not decode
                            # again the WAL in between (other databases' in a shared cluster)
                            ok_end = end
                        blocked = True
                        break
                    ok_end = end
                seen = len(self._units)
                if blocked or (ok_end and ok_end >= nchanges):
                    break
                if self._units:
                    timeout = 0.0  # something whole is here: take what comes without waiting
                elif self._in_txn:
                    timeout = 1.0  # a transaction is arriving: wait for its commit
                else:
                    timeout = STREAM_WAIT_S
                msg = wal.read(timeout)
                if msg is not None:
                    self._receive(msg)
                    continue
                if self._in_txn and not self._units:
                    if time.monotonic() - self._txn_since > STREAM_STALL_S:
                        raise TransientError("the replication stream stalled inside a transaction")
                    continue
                if upto_lsn is not None and not self._units:
                    # quiet is not "caught up": the walsender may still be decoding towards
                    # upto_lsn. A message written now lies past it, and the stream delivers
                    # it after every transaction that committed before it: read until a unit
                    # at or past upto_lsn arrives (then everything before it is here).
                    if self._beacon_for != upto_lsn or time.monotonic() - pinged > 5.0:
                        emit_heartbeat(self.conn)
                        self._beacon_for, pinged = upto_lsn, time.monotonic()
                    continue
                break
        except psycopg.Error as exc:
            self._drop_stream()
            err = self._translate(exc)
            if isinstance(err, TrempyError):
                raise err from None
            raise
        self._blocked_at = upto_lsn if blocked else None
        nbytes = self._pends[ok_end - 1] if ok_end else 0
        buf, self._pbuf = self._pbuf, bytearray(memoryview(self._pbuf)[nbytes:])  # the rest
        del buf[nbytes:]  # the window keeps the received buffer itself: no copy of it
        win = tp.Window.from_buffer(buf, self._pends[:ok_end])
        self._pends = [e - nbytes for e in self._pends[ok_end:]]
        self._units = [(end - ok_end, lsn) for end, lsn in self._units if end > ok_end]
        return win

    def _translate(self, exc: psycopg.Error) -> Exception:
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

    def _peek(self, upto_lsn: int | None, nchanges: int) -> list[bytes]:
        if not self._checked:
            self._check_slot()
        from trempy_nb.changes import int_to_lsn

        upto = int_to_lsn(upto_lsn) if upto_lsn is not None else None
        try:
            with self.conn.cursor(binary=True) as cur:
                cur.execute(_PEEK_SQL, (self.slot, upto, nchanges, self._pub_option))
                return [r[0] for r in cur.fetchall()]
        except psycopg.Error as exc:
            err = self._translate(exc)
            if isinstance(err, TrempyError):
                raise err from None
            raise

    def _key_indexes(self, rel: Relation) -> tuple[int, ...]:
        """Positions of the row's identifying columns: the primary key, else the replica identity."""
        cached = self._keys.get(rel.oid)
        sig = (rel.namespace, rel.name, rel.shape)
        if cached is not None and cached[0] == sig:
            return cached[1]
        names = rel.column_names
        pk: tuple[str, ...] = ()
        try:
            info = describe_table(self.conn, rel.namespace or "pg_catalog", rel.name)
            pk = info.primary_key
        except (TrempyError, psycopg.Error):
            pk = ()
        if pk and all(c in names for c in pk):
            idx = tuple(names.index(c) for c in pk)
        else:
            idx = tuple(i for i, c in enumerate(rel.columns) if c.is_key)
        self._keys[rel.oid] = (sig, idx)
        return idx

    def _collect(
        self, upto_lsn: int | None, window: int, budget: int, *, cache: bool = True
    ) -> _Collected:
        """Frame the next batch from the cached window, or from a new peek when it is used up."""
        c = self._win
        with _gc_paused():
            if cache and c is not None and not c.exhausted and (self.stream or c.upto == upto_lsn):
                got = self._frame(c.win, c.nchanges, budget, c.resume, upto_lsn)
                if got.progressed or self.stream:
                    # a stream never sends a unit twice: what the window holds beyond
                    # `upto_lsn` stays there until a later read wants it
                    return got
            if self.stream and cache:
                nchanges = window  # a stream never sends a unit twice
                win = self._stream_rows(upto_lsn, nchanges)
            else:
                nchanges = sum(x.rows for x in self._consumed) + window
                win = tp.Window(self._peek(upto_lsn, nchanges))
            if cache:
                self._win = _Cached(upto_lsn, win, nchanges)
                if len(win):
                    self._avg_row_bytes = win.nbytes / len(win)
            return self._frame(win, nchanges, budget, None, upto_lsn)

    def _frame(
        self,
        win: tp.Window,
        nchanges: int,
        budget: int,
        resume: tuple[int, dict[int, Relation]] | None,
        upto_lsn: int | None = None,
    ) -> _Collected:
        """Pick the next transactions not yet returned (structural pass), then frame their rows."""
        through = self._through
        if resume is not None:
            start, rels0 = resume
            rels = dict(rels0)
        else:
            start = 0
            rels = dict(self._rels_by_oid)
            for rel in self.relations.values():
                rels.setdefault(rel.oid, rel)
        struct = win.structure
        n_struct = len(struct)
        scan = _Scan()
        consumed: list[_Consumed] = []
        new_changes = source_bytes = 0
        progressed = False
        reached_end, at_upto = True, False
        offs = win.offs
        k = start
        while k < n_struct:
            idx, m = struct[k]
            tm = type(m)
            if tm is LogicalMessage and not m.transactional:  # type: ignore[union-attr]
                if upto_lsn is not None and m.lsn >= upto_lsn:  # type: ignore[union-attr]
                    reached_end, at_upto = False, True
                    break
                if m.lsn > through:  # type: ignore[union-attr]
                    consumed.append(_Consumed(m.lsn, m.lsn, 1, False))  # type: ignore[union-attr]
                    through = m.lsn  # type: ignore[union-attr]
                    progressed = True
                k += 1
                continue
            if tm is Relation:  # outside a transaction (not sent by pgoutput, but harmless)
                rels[m.oid] = m  # type: ignore[union-attr]
                k += 1
                continue
            if tm is not Begin:
                k += 1
                continue
            t = k + 1
            while t < n_struct and type(struct[t][1]) is not Commit:
                t += 1
            if t >= n_struct:
                break  # incomplete transaction at the end of the peek (should not happen)
            cidx, commit = struct[t]
            assert isinstance(commit, Commit) and isinstance(m, Begin)
            if m.final_lsn != commit.commit_lsn:
                raise TerminalError(
                    f"pgoutput Begin/Commit LSNs differ ({m.final_lsn} vs {commit.commit_lsn})"
                )
            if upto_lsn is not None and commit.commit_lsn >= upto_lsn:
                reached_end, at_upto = False, True  # only what committed before upto_lsn
                break
            body = struct[k + 1 : t]
            nrows = cidx - idx + 1
            if commit.commit_lsn < through:  # already returned or skipped
                for _, b in body:
                    if type(b) is Relation:
                        rels[b.oid] = b
                k = t + 1
                continue
            has_changes = nrows - 2 - len(body) > 0 or any(type(b) is Truncate for _, b in body)
            if not has_changes:
                for _, b in body:
                    if type(b) is Relation:
                        rels[b.oid] = b
                consumed.append(_Consumed(commit.commit_lsn, commit.end_lsn, nrows, False))
                through = commit.end_lsn
                progressed = True
                k = t + 1
                continue
            if scan.txns and (
                new_changes >= budget or self._shape_conflict(win, scan, rels, body, idx)
            ):
                reached_end = False  # one shape per table per batch; or the budget is spent
                break
            if not scan.txns:
                scan.lo = idx
                scan.start_rels = dict(rels)
            txn = _Txn(idx, commit.commit_lsn, _epoch_us(commit.commit_ts), commit.commit_ts)
            for bidx, b in body:
                if type(b) is Relation:
                    rels[b.oid] = b
                    scan.rel_events.setdefault(b.oid, []).append((bidx, b))
                elif type(b) is Truncate:
                    scan.truncates.append((bidx, b.oids, txn))
            scan.txns.append(txn)
            scan.hi = cidx
            new_changes += nrows
            source_bytes += int(offs[cidx + 1] - offs[idx])
            consumed.append(_Consumed(commit.commit_lsn, commit.end_lsn, nrows, True))
            through = commit.end_lsn
            progressed = True
            k = t + 1

        batch = None
        relations: dict[tuple[str, str], Relation] = {}
        if scan.txns:
            batch = ChangeBatch(
                first_lsn=scan.txns[0].lsn,
                end_lsn=scan.txns[-1].lsn,
                tables=self._tables(win, scan, relations),
                n_transactions=len(scan.txns),
                source_bytes=source_bytes,
            )
        return _Collected(
            batch=batch,
            consumed=consumed,
            relations=relations,
            rows_seen=len(win),
            hit_limit=len(win) >= nchanges,
            progressed=progressed,
            reached_end=reached_end,
            at_upto=at_upto,
            resume=(k, rels),
        )

    @staticmethod
    def _shape_at(scan: _Scan, oid: int, pos: int) -> Relation | None:
        """The relation in effect for `oid` at message `pos` of the batch."""
        rel = scan.start_rels.get(oid)
        for idx, r in scan.rel_events.get(oid, []):
            if idx < pos:
                rel = r
        return rel

    def _shape_conflict(
        self,
        win: tp.Window,
        scan: _Scan,
        rels: dict[int, Relation],
        body: list[tuple[int, Any]],
        begin: int,
    ) -> bool:
        """A Relation in this transaction gives a table of the batch a new shape."""
        for _, b in body:
            if type(b) is not Relation:
                continue
            a = int(np.searchsorted(win.row_idx, scan.lo))
            z = int(np.searchsorted(win.row_idx, begin))
            rows = win.row_idx[a:z][win.row_oid[a:z] == b.oid]
            used = [int(rows[-1])] if len(rows) else []
            used += [idx for idx, oids, _ in scan.truncates if b.oid in oids]
            if not used:
                continue
            prev = self._shape_at(scan, b.oid, max(used))
            if prev is None or (prev.namespace, prev.name, prev.shape) != (
                b.namespace,
                b.name,
                b.shape,
            ):
                return True
        return False

    def _tables(
        self, win: tp.Window, scan: _Scan, relations: dict[tuple[str, str], Relation]
    ) -> list[TableChanges]:
        """Frames per table for the selected transactions, in order of first appearance."""
        a = int(np.searchsorted(win.row_idx, scan.lo))
        z = int(np.searchsorted(win.row_idx, scan.hi))
        ridx, roid = win.row_idx[a:z], win.row_oid[a:z]
        begins = np.array([t.begin for t in scan.txns], np.int64)
        lsns = np.array([t.lsn for t in scan.txns], np.int64)
        stamps = np.array([t.ts_us for t in scan.txns], np.int64)
        # (first message index, oid) of every relation with rows or truncates
        first: dict[int, int] = {}
        if len(ridx):
            oids, at = np.unique(roid, return_index=True)
            first = {int(o): int(ridx[i]) for o, i in zip(oids, at, strict=True)}
        for idx, oids_t, _ in scan.truncates:
            for oid in oids_t:
                first[oid] = min(first.get(oid, idx), idx)
        parts: dict[tuple[str, str], list[pl.DataFrame]] = {}
        truncated: dict[tuple[str, str], list[tuple[int, int, datetime]]] = {}
        for oid in sorted(first, key=first.__getitem__):
            rows_o = ridx[roid == oid]
            events = scan.rel_events.get(oid, [])
            shapes = [scan.start_rels.get(oid)] + [r for _, r in events]
            seg_of_row = np.searchsorted(np.array([i for i, _ in events], np.int64), rows_o)
            for seg in range(len(shapes)):
                rows = rows_o[seg_of_row == seg]
                rel = shapes[seg]
                if not len(rows):
                    continue
                if rel is None:
                    raise TerminalError(
                        f"change for relation oid {oid} arrived before its Relation message"
                    )
                key = (rel.namespace, rel.name)
                for c in range(0, len(rows), FRAME_CHUNK_ROWS):  # bounded scratch arrays
                    parts.setdefault(key, []).append(
                        self._segment_frame(
                            win, rel, rows[c : c + FRAME_CHUNK_ROWS], begins, lsns, stamps
                        )
                    )
                relations[key] = rel
            for idx, oids_t, txn in scan.truncates:
                if oid not in oids_t:
                    continue
                rel = self._shape_at(scan, oid, idx + 1)
                if rel is None:
                    raise TerminalError(
                        f"change for relation oid {oid} arrived before its Relation message"
                    )
                key = (rel.namespace, rel.name)
                if key not in parts:
                    parts[key] = [_empty_frame(rel.column_names)]
                relations.setdefault(key, rel)
                truncated.setdefault(key, []).append((2 * idx, txn.lsn, txn.ts))
        out = []
        for key, frames in parts.items():
            frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal", rechunk=False)
            frame = frame.with_columns(pl.col(SEQ).set_sorted())  # the writer's sort is then free
            out.append(TableChanges(key[0], key[1], frame, truncated.get(key, [])))
        return out

    def _segment_frame(
        self,
        win: tp.Window,
        rel: Relation,
        rows: np.ndarray,
        begins: np.ndarray,
        lsns: np.ndarray,
        stamps: np.ndarray,
    ) -> pl.DataFrame:
        """The changes of one relation shape: rows are message indices of I/U/D messages.

        An update that changes the key becomes 'D' (old key) then 'I' (new row). An
        unchanged TOASTed value is taken from the old row under REPLICA IDENTITY FULL,
        else it is null and named in UNCHANGED. `_trempy_seq` is 2 x the message index
        (+1 for the insert half of a key change): increasing in commit order.
        """
        n = len(rows)
        ncols = len(rel.columns)
        names = rel.column_names
        arr = win.arr
        mstart, mend = win.offs[rows], win.offs[rows + 1]
        if (mend - mstart < 7).any():
            raise DecodeError(f"truncated pgoutput change of {rel.namespace}.{rel.name}")
        tags = win.tags[rows]
        marker = arr[mstart + 5]
        is_i, is_u, is_d = tags == tp.TAG_I, tags == tp.TAG_U, tags == tp.TAG_D
        with_old = (marker == tp.M_KEY) | (marker == tp.M_OLD)
        ok = (is_i & (marker == tp.M_NEW)) | (is_u & ((marker == tp.M_NEW) | with_old))
        ok |= is_d & with_old
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise DecodeError(
                f"{chr(tags[bad])} message: unexpected tuple marker {chr(marker[bad])!r}"
            )
        has_old = is_d | (is_u & with_old)
        old_rows = np.flatnonzero(has_old)
        new_rows = np.flatnonzero(~is_d)
        old = tp.walk(win, mstart[old_rows] + 6, mend[old_rows], ncols)
        where_old = np.full(n, -1, np.int64)
        where_old[old_rows] = np.arange(len(old_rows))
        where_new = np.full(n, -1, np.int64)
        where_new[new_rows] = np.arange(len(new_rows))
        new_pos = mstart[new_rows] + 6
        after_old = has_old[new_rows]
        if after_old.any():
            oe = old.end[where_old[new_rows[after_old]]]
            if (oe >= mend[new_rows[after_old]]).any() or (arr[oe] != tp.M_NEW).any():
                raise DecodeError("update: expected 'N' after the old tuple")
            new_pos[after_old] = oe + 1
        new = tp.walk(win, new_pos, mend[new_rows], ncols)

        key_changed = self._key_changes(win, rel, rows, is_u & with_old, marker, old, new,
                                        where_old, where_new)
        # output rows: one per change, two for a key change (old key deleted, new row inserted)
        reps = 1 + key_changed.astype(np.int64)
        src = np.repeat(np.arange(n), reps)
        second = np.zeros(len(src), bool)
        second[(np.cumsum(reps) - 1)[key_changed]] = True
        use_old = is_d[src] | (key_changed[src] & ~second)
        op = np.where(use_old, 2, np.where(is_u[src] & ~second, 1, 0))
        oi, ni = where_old[src], where_new[src]
        kinds = _pad(old.kinds)[:, oi]
        starts = _pad(old.starts)[:, oi]
        lens = _pad(old.lens)[:, oi]
        nk = _pad(new.kinds)[:, ni]
        fresh = ~use_old
        kinds[:, fresh] = nk[:, fresh]
        starts[:, fresh] = _pad(new.starts)[:, ni][:, fresh]
        lens[:, fresh] = _pad(new.lens)[:, ni][:, fresh]
        # unchanged TOAST in a new row: the old row's value under FULL, else null + UNCHANGED
        toast = fresh & (kinds == tp.K_UNCHANGED)
        unchanged: dict[int, list[str]] = {}
        if toast.any():
            kinds_old = _pad(old.kinds)[:, oi]
            from_old = toast & (marker[src] == tp.M_OLD) & (kinds_old != tp.K_UNCHANGED)
            kinds = np.where(from_old, kinds_old, kinds)
            starts = np.where(from_old, _pad(old.starts)[:, oi], starts)
            lens = np.where(from_old, _pad(old.lens)[:, oi], lens)
            left = toast & ~from_old
            for r in np.flatnonzero(left.any(axis=0)):
                unchanged[int(r)] = [names[c] for c in np.flatnonzero(left[:, r])]
        valid = (kinds == tp.K_TEXT) | (kinds == tp.K_BINARY)
        msg = rows[src]
        data = tp.text_columns(win, msg, names, starts, lens, valid)
        t = np.searchsorted(begins, msg, side="right") - 1
        m = len(src)
        meta = [
            pl.Series(OP, op.astype(np.uint8)).replace_strict(
                {0: "I", 1: "U", 2: "D"}, return_dtype=pl.String
            ),
            pl.Series(LSN, lsns[t], dtype=pl.Int64),
            pl.Series(TS, stamps[t], dtype=pl.Int64).cast(META_SCHEMA[TS]),
            pl.Series(SEQ, 2 * msg + second, dtype=pl.Int64),
        ]
        if unchanged:
            col: list[list[str] | None] = [None] * m
            for r, v in unchanged.items():
                col[r] = v
            meta.append(pl.Series(UNCHANGED, col, dtype=META_SCHEMA[UNCHANGED]))
        else:
            meta.append(pl.Series(UNCHANGED, [None] * m, dtype=META_SCHEMA[UNCHANGED]))
        return pl.DataFrame([*data, *meta])

    def _key_changes(
        self,
        win: tp.Window,
        rel: Relation,
        rows: np.ndarray,
        upd_old: np.ndarray,
        marker: np.ndarray,
        old: tp.Tuples,
        new: tp.Tuples,
        where_old: np.ndarray,
        where_new: np.ndarray,
    ) -> np.ndarray:
        """Which updates (that carry an old tuple) changed the row's key."""
        changed = np.zeros(len(rows), bool)
        cand = np.flatnonzero(upd_old)
        if not len(cand):
            return changed
        idx = self._key_indexes(rel)
        if not all(rel.columns[k].is_key for k in idx):
            # the old tuple holds the identity, not the key: we cannot see the key, be safe
            changed[cand[marker[cand] == tp.M_KEY]] = True
            cand = cand[marker[cand] == tp.M_OLD]
        oi, ni = where_old[cand], where_new[cand]
        for k in idx:
            ok_, nk = old.kinds[k, oi], new.kinds[k, ni]
            o_val = (ok_ == tp.K_TEXT) | (ok_ == tp.K_BINARY)
            n_val = (nk == tp.K_TEXT) | (nk == tp.K_BINARY)
            eq = tp.equal_values(
                win, rows[cand], old.starts[k, oi], old.lens[k, oi],
                new.starts[k, ni], new.lens[k, ni],
            )
            same = (o_val & n_val & eq) | (~o_val & ~n_val & (ok_ == nk))
            changed[cand] |= (nk != tp.K_UNCHANGED) & ~same
        return changed


def _pad(a: np.ndarray) -> np.ndarray:
    """`a` with one extra (zero) column, so that index -1 (row has no such tuple) is harmless."""
    return np.concatenate([a, np.zeros((a.shape[0], 1), a.dtype)], axis=1)


def _empty_frame(names: tuple[str, ...]) -> pl.DataFrame:
    return pl.DataFrame(
        [pl.Series(n, [], dtype=pl.String) for n in names]
        + [pl.Series(c, [], dtype=d) for c, d in META_SCHEMA.items()]
    )
