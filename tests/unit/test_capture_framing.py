"""Capture's pure layers on real captured bytes, no database: WAL frames, the stream inbox,
the structural pass, row framing, the confirm ledger, and the reader over a replayed stream.

tests/unit/data/stream_capture.json holds the CopyData frames of one START_REPLICATION
session (make_stream_capture.py): two transactions on s and u, a heartbeat, then s gains a
column (a new Relation mid-stream), a key change, and a delete on u.
"""

from __future__ import annotations

import json
import socket
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from trempy_nb import pgwait
from trempy_nb.capture import tuples as tp
from trempy_nb.capture import walproto
from trempy_nb.capture.batching import pick
from trempy_nb.capture.inbox import Inbox
from trempy_nb.capture.msgwindow import MessageWindow
from trempy_nb.capture.peek import PeekWindows
from trempy_nb.capture.pgoutput import Begin, Commit, LogicalMessage, Relation, decode
from trempy_nb.capture.positions import Consumed, Ledger
from trempy_nb.capture.reader import ChangeReader
from trempy_nb.capture.rowframes import batch_of
from trempy_nb.capture.source import ChangeSource, WindowSource
from trempy_nb.capture.stream import StreamWindows
from trempy_nb.changes import LSN, OP, SEQ

DATA = json.loads((Path(__file__).parent / "data" / "stream_capture.json").read_text())
FRAMES = [bytes.fromhex(f) for f in DATA["frames"]]
PAYLOADS = [bytes(p) for f in FRAMES if (p := walproto.xlog_payload(f)) is not None]
MSGS = [decode(p) for p in PAYLOADS]
COMMITS = [m for m in MSGS if isinstance(m, Commit)]
HEARTBEAT = next(m for m in MSGS if isinstance(m, LogicalMessage))


def _pk(rel: Relation) -> tuple[int, ...]:
    """What the catalog says: both tables have their first column as primary key."""
    return (0,)


# -- walproto -------------------------------------------------------------------------------------


def test_frames_are_xlogdata_or_keepalives() -> None:
    assert len(PAYLOADS) == 22 and len(COMMITS) == 5
    kinds = "".join(chr(f[0]) for f in FRAMES)
    assert kinds == "k" + "w" * 22 + "k"
    for f in FRAMES:
        if f[0] == ord("w"):
            assert walproto.keepalive(f) is None
            h = walproto.xlog_header(f)
            assert h.data_start <= h.wal_end and h.clock > 0
        else:
            assert walproto.xlog_payload(f) is None
    # the keepalive asked for after the last commit reports the WAL end the stream has sent
    last = walproto.keepalive(FRAMES[-1])
    assert last is not None and not last.reply and last.wal_end == COMMITS[-1].end_lsn


def test_xlog_payload_is_a_view_and_checks_its_header() -> None:
    frame = FRAMES[1]
    view = walproto.xlog_payload(frame)
    assert isinstance(view, memoryview) and view.obj is frame  # no copy on the hot path
    assert isinstance(decode(bytes(view)), Begin)
    with pytest.raises(ValueError):
        walproto.xlog_payload(frame[:10])
    with pytest.raises(ValueError):
        walproto.keepalive(FRAMES[0][:5])


def test_standby_status_update_bytes() -> None:
    now = walproto.PG_EPOCH + timedelta(seconds=3, microseconds=7)
    msg = walproto.standby_status(0x1_0000_00FF, now, reply=True)
    assert len(msg) == 34 and msg[:1] == b"r"
    written, flushed, applied, clock, reply = struct.unpack("!QQQqB", msg[1:])
    assert written == flushed == applied == 0x1_0000_00FF
    assert clock == 3_000_007 and reply == 1
    assert walproto.standby_status(5, now)[-1] == 0
    assert walproto.pg_clock(datetime(2000, 1, 2, tzinfo=timezone.utc)) == 86_400 * 10**6


# -- inbox ----------------------------------------------------------------------------------------


def test_inbox_notes_whole_units_and_keeps_the_rest() -> None:
    box = Inbox()
    for p in PAYLOADS[:14]:  # through the heartbeat, then the Begin and Relation of txn 3
        box.add(p)
    assert box.in_txn and box.txn_lsn == COMMITS[2].commit_lsn
    assert box.units == [(6, COMMITS[0].commit_lsn), (11, COMMITS[1].commit_lsn), (12, HEARTBEAT.lsn)]
    win = box.take(11)  # two whole transactions
    assert len(win) == 11 and [win.message(i) for i in range(11)] == PAYLOADS[:11]
    assert len(box) == 3 and box.units == [(1, HEARTBEAT.lsn)]  # renumbered
    for p in PAYLOADS[14:]:
        box.add(p)
    assert not box.in_txn
    assert [lsn for _, lsn in box.units] == [HEARTBEAT.lsn] + [c.commit_lsn for c in COMMITS[2:]]
    assert len(box.take(0)) == 0 and len(box) == 11  # nothing whole taken: all stays
    rest = box.take(box.units[-1][0])
    assert [rest.message(i) for i in range(len(rest))] == PAYLOADS[11:]
    assert len(box) == 0 and box.units == []


def test_a_window_without_rows_needs_no_numpy() -> None:
    """Heartbeats alone (what an idle stream delivers) make a `MessageWindow`, whose structure
    is what a `tuples.Window` of the same bytes would give; a row makes a `tuples.Window`."""
    box = Inbox()
    box.add(PAYLOADS[11])  # the heartbeat
    assert box.units == [(1, HEARTBEAT.lsn)]
    light = box.take(1)
    assert isinstance(light, MessageWindow) and len(light) == 1 and light.offs == [0, len(PAYLOADS[11])]
    assert light.structure == tp.Window([PAYLOADS[11]]).structure == [(0, HEARTBEAT)]
    picked = pick(light, {}, budget=100)
    assert not picked.selection.txns and picked.progressed  # consumed as a no-op
    for p in PAYLOADS[:6]:  # a transaction with rows
        box.add(p)
    assert isinstance(box.take(6), tp.Window)
    assert isinstance(box.take(0), MessageWindow)  # nothing whole yet


# -- batching + rowframes -------------------------------------------------------------------------


def test_a_new_table_shape_ends_the_batch_and_the_pass_resumes() -> None:
    win = tp.Window(PAYLOADS)
    first = pick(win, {}, budget=10_000)
    assert [t.lsn for t in first.selection.txns] == [c.commit_lsn for c in COMMITS[:2]]
    assert not first.reached_end and not first.at_upto and first.progressed
    # the heartbeat after them was passed over as a no-op; the slot may go past it
    assert [(c.position, c.returned) for c in first.consumed] == [
        (COMMITS[0].commit_lsn, True),
        (COMMITS[1].commit_lsn, True),
        (HEARTBEAT.lsn, False),
    ]
    assert first.consumed[0].advance_to == COMMITS[0].end_lsn
    batch, rels = batch_of(win, first.selection, _pk)
    assert (batch.first_lsn, batch.end_lsn, batch.n_transactions) == (
        COMMITS[0].commit_lsn,
        COMMITS[1].commit_lsn,
        2,
    )
    assert batch.source_bytes == sum(map(len, PAYLOADS[:11]))
    s, u = (t.frame for t in batch.tables)
    assert [t.key for t in batch.tables] == [("public", "s"), ("public", "u")]
    assert s.select("id", "v", OP).rows() == [("1", "a", "I"), ("2", "b", "I"), ("3", "c", "I"), ("2", "B", "U")]
    assert u.select("k", "n", OP).rows() == [("1", "10", "I")]
    assert rels[("public", "s")].column_names == ("id", "v")

    start, at = first.resume
    second = pick(win, at, start=start, through=first.consumed[-1].advance_to, budget=10_000)
    assert [t.lsn for t in second.selection.txns] == [c.commit_lsn for c in COMMITS[2:]]
    assert second.reached_end
    batch2, rels2 = batch_of(win, second.selection, _pk)
    s2 = batch2.tables[0].frame
    assert rels2[("public", "s")].column_names == ("id", "v", "w")
    # the key change is a delete of the old key, then the new row, in consecutive positions
    assert s2.select("id", "w", OP).rows() == [("4", "40", "I"), ("4", None, "D"), ("5", "40", "I")]
    seq = s2[SEQ].to_list()
    assert seq == sorted(seq) and seq[2] == seq[1] + 1
    assert s2[LSN].to_list() == [COMMITS[2].commit_lsn] + [COMMITS[3].commit_lsn] * 2
    assert batch2.tables[1].frame.select("k", OP).rows() == [("1", "D")]


def test_budget_upto_and_through_bound_the_pass() -> None:
    win = tp.Window(PAYLOADS)
    one = pick(win, {}, budget=1)  # soft: one whole transaction, never less
    assert len(one.selection.txns) == 1 and not one.reached_end
    upto = pick(win, {}, budget=10_000, upto_lsn=COMMITS[1].commit_lsn)
    assert [t.lsn for t in upto.selection.txns] == [COMMITS[0].commit_lsn] and upto.at_upto
    # consumed before: skipped, yet its Relation is remembered for the rows that follow
    later = pick(win, {}, budget=10_000, through=COMMITS[0].end_lsn)
    assert later.selection.txns[0].lsn == COMMITS[1].commit_lsn
    assert later.selection.start_rels[MSGS[1].oid].name == "s"  # type: ignore[union-attr]


# -- the confirm ledger ---------------------------------------------------------------------------


def test_ledger_moves_the_slot_over_confirmed_units_and_the_noops_behind_them() -> None:
    led = Ledger(start_after_lsn=99)
    assert led.through == 100
    led.note([Consumed(200, 210, 3, True), Consumed(220, 220, 1, False), Consumed(300, 310, 4, True)])
    assert led.through == 310 and led.pending == 2 and led.rows == 8
    assert led.skip_noops() is None  # the no-op sits behind unconfirmed data
    assert led.confirm(200) == 220  # the transaction, then the heartbeat behind it
    assert led.pending == 1 and led.rows == 4
    assert led.confirm(150) == 151  # not returned by this reader: inside that commit record
    assert led.confirm(300) == 310 and led.pending == 0
    led.note([Consumed(400, 400, 1, False)])
    assert led.skip_noops() == 400


# -- the reader over a replayed stream ------------------------------------------------------------


class ReplayStream:
    """A `WindowSource` that never resends: the captured session, every message already here."""

    resends = False

    def __init__(self, payloads: list[bytes]) -> None:
        self.box = Inbox()
        for p in payloads:
            self.box.add(p)
        self.blocked_at: int | None = None
        self.advanced: list[int] = []

    def fetch(self, upto_lsn: int | None, nchanges: int) -> tp.Window:
        end, blocked = 0, False
        for e, lsn in self.box.units:
            if upto_lsn is not None and lsn >= upto_lsn:
                blocked = True
                break
            end = e
            if end >= nchanges:
                break
        self.blocked_at = upto_lsn if blocked else None
        return self.box.take(end)

    def advance(self, lsn: int) -> None:
        self.advanced.append(lsn)

    def prefetch(self, timeout: float, limit: int) -> bool:
        return False

    def close(self) -> None:
        pass


def _reader(windows: WindowSource, max_changes: int = 10_000) -> ChangeReader:
    reader = ChangeReader("postgresql://unused", "slot", "pub", max_changes, windows=windows)
    reader._key_indexes = _pk  # type: ignore[method-assign]
    return reader


def test_reader_on_a_stream_stops_at_the_catch_up_bound_and_keeps_what_lies_beyond() -> None:
    stream = ReplayStream(PAYLOADS)
    reader = _reader(stream)
    source: ChangeSource = reader  # the reader is the typed source runners and transports use
    bound = COMMITS[3].commit_lsn
    first = source.read_batch(upto_lsn=bound)
    assert first is not None and first.end_lsn == COMMITS[1].commit_lsn  # the new shape ends it
    assert reader.has_buffered(bound)  # the rest of the window is served without the server
    second = source.read_batch(upto_lsn=bound)
    assert second is not None and (second.first_lsn, second.end_lsn) == (
        COMMITS[2].commit_lsn,
        COMMITS[2].commit_lsn,
    )
    assert source.read_batch(upto_lsn=bound) is None  # caught up: a unit past the bound is here
    assert reader.relations[("public", "s")].column_names == ("id", "v", "w")
    source.confirm(second.end_lsn)
    assert stream.advanced == [COMMITS[2].end_lsn]
    rest = source.read_batch()  # what lay beyond the bound was kept, not lost
    assert rest is not None and rest.first_lsn == COMMITS[3].commit_lsn
    assert rest.end_lsn == COMMITS[4].commit_lsn and reader.pending_confirm == 2


def test_reader_in_peek_mode_on_the_same_bytes_skips_what_it_returned() -> None:
    advanced: list[int] = []
    peek = PeekWindows(lambda upto, n: PAYLOADS, advanced.append)
    reader = _reader(peek, max_changes=3)  # every transaction has at least 3 messages
    seen = []
    while (b := reader.read_batch()) is not None:
        seen.append(b)
    assert [(b.first_lsn, b.end_lsn) for b in seen] == [(c.commit_lsn, c.commit_lsn) for c in COMMITS]
    assert advanced == []
    reader.confirm(seen[1].end_lsn)
    assert advanced == [HEARTBEAT.lsn]  # the heartbeat behind the confirmed batch goes too


def test_both_window_sources_fit_the_protocol() -> None:
    def fits(w: WindowSource) -> bool:
        return isinstance(w.resends, bool)

    reader = ChangeReader("postgresql://unused", "slot", "pub", stream=True)
    assert isinstance(reader._windows, StreamWindows) and fits(reader._windows)
    assert fits(PeekWindows(lambda u, n: [], lambda lsn: None))
    reader.close()  # nothing was opened: closing is a no-op


# -- pgwait ---------------------------------------------------------------------------------------


class _Conn:
    """The two libpq calls pgwait makes, on one end of a socket pair."""

    def __init__(self, sock: socket.socket, unflushed: int = 0) -> None:
        self.sock, self.unflushed, self.consumed = sock, unflushed, b""

    @property
    def socket(self) -> int:
        return self.sock.fileno()

    def consume_input(self) -> None:
        self.consumed += self.sock.recv(4096)

    def flush(self) -> int:
        self.unflushed = max(0, self.unflushed - 1)
        return 1 if self.unflushed else 0


def test_pgwait_waits_for_input_and_for_room() -> None:
    a, b = socket.socketpair()
    with a, b:
        conn = _Conn(a, unflushed=3)
        assert pgwait.wait(conn, None, timeout=0.01) == (False, False)  # type: ignore[arg-type]
        assert not pgwait.receive(conn, 0.01)  # type: ignore[arg-type]
        b.sendall(b"data")
        assert pgwait.wait(conn, conn, timeout=1.0) == (True, True)  # type: ignore[arg-type]
        assert pgwait.receive(conn, 1.0) and conn.consumed == b"data"  # type: ignore[arg-type]
        pgwait.flush(conn)  # type: ignore[arg-type]
        assert conn.unflushed == 0
        b.close()
        assert pgwait.wait(conn, None, timeout=1.0)[0]  # type: ignore[arg-type]  # hang-up is ready
