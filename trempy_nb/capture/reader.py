"""The change reader: whole source transactions from a pgoutput slot, as `ChangeBatch`es.

`ChangeReader` is the one `ChangeSource` (`source.py`). Its main path is stream
mode (`stream=True`, what every runner uses): a walsender session
(`stream.StreamWindows`) delivers each pgoutput message once, continuously,
and a standby status update moves the slot. Peek mode (the default, for
previews and tests) reads with `pg_logical_slot_peek_binary_changes`
(`peek.PeekWindows`), which never consumes. Either way the slot moves only
when `confirm()` is called after the target (or the broker) has durably
taken the batch, so a crash replays instead of losing changes.

A read, step by step:
1. a *window* of raw messages holding whole units comes from the window
   source: what the stream delivered, or one peek of about `window_changes`
   rows (fewer for wide rows: about `WINDOW_BYTES`). Windows are few and
   large (a peek decodes the slot's WAL again from `restart_lsn`, a fixed
   cost per peek) and are served batch by batch until used up;
2. `batching.pick` chooses the next whole transactions (about `max_changes`
   messages, never part of one; a new table shape ends the batch);
3. `rowframes.batch_of` frames their rows into one Polars frame per table;
4. `positions.Ledger` remembers what was handed out, so `confirm(lsn)` knows
   where the slot may go and a peek skips what it returned before.

What stays here is what joins those steps: the window cache, the relation
cache (`relations`: the latest Relation per table as of the last batch, so the
applier can add a column or stop on SchemaChanged), the primary-key lookups,
and the two rules where a source that resends (peek) and one that does not
(stream) differ.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from trempy_nb.capture.batching import Picked, Resume, pick
from trempy_nb.capture.msgwindow import MessageWindow
from trempy_nb.capture.peek import PeekWindows
from trempy_nb.capture.pgoutput import Relation
from trempy_nb.capture.positions import Ledger
from trempy_nb.capture.slotconn import SlotConnection
from trempy_nb.capture.source import WindowSource
from trempy_nb.capture.stream import STREAM_STALL_S, STREAM_WAIT_S, StreamWindows
from trempy_nb.changes import ChangeBatch
from trempy_nb.lazyattrs import lazy_module

if TYPE_CHECKING:
    from trempy_nb.capture import rowframes
    from trempy_nb.capture import tuples as tp
else:  # numpy, pyarrow: loaded with the first row (an idle run gets only `MessageWindow`s)
    rowframes = lazy_module("trempy_nb.capture.rowframes")
    tp = lazy_module("trempy_nb.capture.tuples")

# ChangeReader, and the tuning constants that lived here before the split (re-exported)
__all__ = [
    "ChangeReader",
    "STREAM_STALL_S",
    "STREAM_WAIT_S",
    "WINDOW_BYTES",
]

#: Aim for windows of about this many bytes (wide rows get fewer rows per window)
WINDOW_BYTES = 64 << 20


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


@dataclass
class _Cached:
    """The last window, served batch by batch until it is used up."""

    upto: int | None
    win: tp.Window | MessageWindow
    nchanges: int  # messages the fetch asked for
    resume: Resume | None = None
    exhausted: bool = False


@dataclass
class _Read:
    """One framing pass over a window."""

    batch: ChangeBatch | None
    picked: Picked
    relations: dict[tuple[str, str], Relation]  # of the batch's tables
    hit_limit: bool  # the window is as long as the fetch allowed: there may be more


class ChangeReader:
    """Reads whole transactions from a pgoutput slot as `ChangeBatch`es (a `ChangeSource`).

    `read_batch()` returns the next unseen transactions (bounded by about
    `max_changes` messages, never fewer than one whole transaction);
    `confirm(lsn)` advances the slot once the batch ending at `lsn` is durable.
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
        windows: WindowSource | None = None,
    ) -> None:
        if max_changes < 1:
            raise ValueError("max_changes must be >= 1")
        self.uri, self.slot, self.publication = uri, slot, publication
        self.max_changes = max_changes
        #: messages fetched at once (bounded: a backlog is never decoded whole before a batch)
        self.window_changes = max(window_changes or 5 * max_changes, max_changes)
        self.application_name = (application_name or f"trempy_nb capture {slot}")[:63]
        self.stream = stream
        self.relations: dict[tuple[str, str], Relation] = {}
        self._link = SlotConnection(uri, slot, publication, self.application_name)
        #: where raw messages come from (`windows`: another source, e.g. captured bytes in a test)
        self._windows: WindowSource = windows if windows is not None else (
            StreamWindows(self._link)
            if stream
            # through `self._peek`, looked up at each call: a test serves captured bytes there
            else PeekWindows(lambda upto, n: self._peek(upto, n), self._link.advance)
        )
        self._ledger = Ledger(start_after_lsn)
        self._win: _Cached | None = None
        self._rels_by_oid: dict[int, Relation] = {}  # every Relation seen, taken or not
        self._avg_row_bytes = 0.0  # of the last window: sizes the next one
        self._keys: dict[int, tuple[tuple[object, ...], tuple[int, ...]]] = {}

    # -- connection -------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection:
        """The reader's ordinary connection to the source (opened on first use)."""
        return self._link.conn

    def close(self) -> None:
        self._windows.close()
        self._link.close()

    def __enter__(self) -> ChangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ChangeSource ------------------------------------------------------------------------

    def read_batch(self, upto_lsn: int | None = None) -> ChangeBatch | None:
        """The next whole transactions not yet returned, or None if there are none
        (with `upto_lsn`: none that committed before it)."""
        while True:
            batch, at_upto = self._read_once(upto_lsn)
            if batch is not None or self._windows.resends or upto_lsn is None or at_upto:
                return batch
            # a stream's window of no-ops (heartbeats) is not the end; the end is a unit at
            # or past upto_lsn in hand, which the stream delivers after all that came before

    def confirm(self, lsn: int) -> None:
        """The batch whose last commit LSN is `lsn` is durable on the target: advance the slot."""
        self._advance(self._ledger.confirm(lsn))

    def has_buffered(self, upto_lsn: int | None = None) -> bool:
        """Whether the next `read_batch(upto_lsn)` is served from the last window (no server call)."""
        c = self._win
        return c is not None and not c.exhausted and self._serves(c, upto_lsn)

    def prefetch(self, timeout: float) -> bool:
        """Stream mode, while the consumer is busy: receive what arrives within `timeout`
        (up to a window's worth), so the next batch is one big batch, not many small ones.
        Also keeps the walsender from timing out. False if nothing was received."""
        return self._windows.prefetch(timeout, self.window_changes)

    # -- more -------------------------------------------------------------------------------

    def peek_changes(self, limit: int = 100) -> ChangeBatch | None:
        """Up to about `limit` pending changes for a preview (always a peek); changes no state."""
        return self._collect(None, limit, limit, cache=False).batch

    @property
    def pending_confirm(self) -> int:
        """How many returned transactions are not yet confirmed."""
        return self._ledger.pending

    # -- the reader's seams to the server (a test replaces them to run on captured bytes) ----

    def _peek(self, upto_lsn: int | None, nchanges: int) -> list[bytes]:
        return self._link.peek(upto_lsn, nchanges)

    def _advance(self, lsn: int) -> None:
        """Let the slot release everything before `lsn` (cdc records it first, by overriding)."""
        try:
            self._windows.advance(lsn)
        except psycopg.Error as exc:
            raise self._link.translate(exc) from None

    def _key_indexes(self, rel: Relation) -> tuple[int, ...]:
        """Positions of the row's identifying columns: the primary key, else the replica identity."""
        cached = self._keys.get(rel.oid)
        sig = (rel.namespace, rel.name, rel.shape)
        if cached is not None and cached[0] == sig:
            return cached[1]
        names = rel.column_names
        pk = self._link.primary_key(rel.namespace, rel.name)
        if pk and all(c in names for c in pk):
            idx = tuple(names.index(c) for c in pk)
        else:
            idx = tuple(i for i, c in enumerate(rel.columns) if c.is_key)
        self._keys[rel.oid] = (sig, idx)
        return idx

    # -- internals -------------------------------------------------------------------------

    def _serves(self, c: _Cached, upto_lsn: int | None) -> bool:
        """A peek window answers the bound it was fetched for; a stream window any later read
        (it holds no unit past the bound, and what lies beyond stays in the stream's inbox)."""
        return not self._windows.resends or c.upto == upto_lsn

    def _read_once(self, upto_lsn: int | None) -> tuple[ChangeBatch | None, bool]:
        limit = self.window_changes
        if self._avg_row_bytes:
            limit = max(self.max_changes, min(limit, int(WINDOW_BYTES / self._avg_row_bytes)))
        while True:
            got = self._collect(upto_lsn, limit, self.max_changes)
            if got.picked.progressed or not got.hit_limit or not self._windows.resends:
                break  # (a stream has nothing further to look at: it never resends)
            limit *= 2  # a peek of only already-seen units: look further
        picked = got.picked
        if self._win is not None:
            self._win.resume = picked.resume
            self._win.exhausted = picked.reached_end
            if picked.reached_end:
                self._win = None  # used up: its buffer need not live while the batch is applied
        # every Relation seen so far, returned or not: a stream sends each one once per
        # session, so one seen in a skipped or no-op transaction is needed later
        self._rels_by_oid = picked.resume[1]
        self._ledger.note(picked.consumed)
        if got.batch is not None:
            self.relations.update(got.relations)
        else:
            target = self._ledger.skip_noops()
            if target is not None:
                self._advance(target)
        at_upto = picked.at_upto or (
            upto_lsn is not None and self._windows.blocked_at == upto_lsn
        )
        return got.batch, at_upto

    def _collect(
        self, upto_lsn: int | None, window: int, budget: int, *, cache: bool = True
    ) -> _Read:
        """Frame the next batch from the cached window, or from a new window when it is used up."""
        c = self._win
        resends = self._windows.resends
        with _gc_paused():
            if not cache:  # a preview: always a peek, whatever the mode, and nothing is kept
                nchanges = self._ledger.rows + window
                preview = tp.Window(self._peek(upto_lsn, nchanges))
                return self._frame(preview, nchanges, budget, None, upto_lsn)
            if c is not None and not c.exhausted and self._serves(c, upto_lsn):
                got = self._frame(c.win, c.nchanges, budget, c.resume, upto_lsn)
                if got.picked.progressed or not resends:
                    # a stream never sends a unit twice: what the window holds beyond
                    # `upto_lsn` stays there until a later read wants it
                    return got
            # a peek starts again at the slot's confirmed position: what is held comes first
            nchanges = self._ledger.rows + window if resends else window
            win = self._windows.fetch(upto_lsn, nchanges)
            self._win = _Cached(upto_lsn, win, nchanges)
            if len(win):
                self._avg_row_bytes = win.nbytes / len(win)
            return self._frame(win, nchanges, budget, None, upto_lsn)

    def _frame(
        self,
        win: tp.Window | MessageWindow,
        nchanges: int,
        budget: int,
        resume: Resume | None,
        upto_lsn: int | None,
    ) -> _Read:
        """Pick the next transactions not yet returned (structural pass), then frame their rows."""
        if resume is not None:
            start, rels = resume
        else:
            start, rels = 0, dict(self._rels_by_oid)
            for rel in self.relations.values():
                rels.setdefault(rel.oid, rel)
        picked = pick(
            win, rels, start=start, through=self._ledger.through, budget=budget, upto_lsn=upto_lsn
        )
        batch: ChangeBatch | None = None
        relations: dict[tuple[str, str], Relation] = {}
        if picked.selection.txns and not isinstance(win, MessageWindow):  # (a MessageWindow has no row)
            batch, relations = rowframes.batch_of(win, picked.selection, self._key_indexes)
        return _Read(batch, picked, relations, hit_limit=len(win) >= nchanges)
