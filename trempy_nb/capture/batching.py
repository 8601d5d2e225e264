"""Pick the next whole transactions of a window for one batch: the structural pass.

Only the few structural messages are looked at (Begin, Commit, Relation,
Truncate, logical messages, decoded once per window by `tuples.Window`); the
row messages are counted, not read. The pass decides, with no I/O:

- which transactions go into the batch: never a part of one, at least one,
  then more while the `budget` of messages lasts (soft, like PostgreSQL's own
  `upto_nchanges`: a 20k-row transaction is one 20k-row batch), only those that
  committed before `upto_lsn`, and none that would give a table of the batch a
  second shape (a Relation message that changes its columns ends the batch);
- which units are passed over as no-ops (heartbeats, transactions with no
  published change) or were consumed before (`through`, see `positions.py`);
- the relation cache as of each message (`Selection.shape_at`), so the rows
  are framed with the columns they were written with;
- where the next pass over the same window resumes.

`rowframes.py` then turns the selection's rows into per-table frames.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from trempy_nb.capture.msgwindow import MessageWindow
from trempy_nb.capture.pgoutput import Begin, Commit, LogicalMessage, Message, Relation, Truncate
from trempy_nb.capture.positions import Consumed
from trempy_nb.errors import TerminalError

if TYPE_CHECKING:  # no numpy here: an idle run's windows (`MessageWindow`) never load it
    from trempy_nb.capture import tuples as tp

__all__ = ["Txn", "Selection", "Picked", "Resume", "pick"]

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: where a pass over a window resumes: structure index, and the relations in effect there (by oid)
Resume = tuple[int, dict[int, Relation]]


@dataclass
class Txn:
    """A transaction taken into the batch."""

    begin: int  # message index of its Begin
    lsn: int  # commit LSN
    ts_us: int  # commit time, microseconds since the Unix epoch
    ts: datetime


@dataclass
class Selection:
    """What the structural pass selected for a batch (message indices are window positions)."""

    txns: list[Txn] = field(default_factory=list)
    lo: int = 0  # first message of the batch
    hi: int = 0  # its last Commit
    start_rels: dict[int, Relation] = field(default_factory=dict)  # in effect at `lo`
    rel_events: dict[int, list[tuple[int, Relation]]] = field(default_factory=dict)
    truncates: list[tuple[int, tuple[int, ...], Txn]] = field(default_factory=list)
    source_bytes: int = 0  # bytes of the selected messages

    def shape_at(self, oid: int, pos: int) -> Relation | None:
        """The relation in effect for `oid` at message `pos` of the batch."""
        rel = self.start_rels.get(oid)
        for idx, r in self.rel_events.get(oid, []):
            if idx < pos:
                rel = r
        return rel


@dataclass
class Picked:
    """The outcome of one structural pass."""

    selection: Selection
    consumed: list[Consumed]  # units passed over, in order: the selected ones and the no-ops
    progressed: bool  # something new was taken or passed over
    reached_end: bool  # every complete unit of the window was taken or passed over
    at_upto: bool  # stopped at a unit at or past the upto_lsn bound
    resume: Resume


def epoch_us(ts: datetime) -> int:
    d = ts - _UNIX_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def pick(
    win: tp.Window | MessageWindow,
    rels: dict[int, Relation],
    *,
    start: int = 0,
    through: int = 0,
    budget: int,
    upto_lsn: int | None = None,
) -> Picked:
    """The next transactions of `win` from structure index `start` not consumed before `through`.

    `rels`: the relations in effect at `start` (not modified).
    """
    rels = dict(rels)
    struct = win.structure
    n_struct = len(struct)
    sel = Selection()
    consumed: list[Consumed] = []
    new_changes = 0
    progressed = False
    reached_end, at_upto = True, False
    offs = win.offs
    k = start
    while k < n_struct:
        idx, m = struct[k]
        if isinstance(m, LogicalMessage) and not m.transactional:
            if upto_lsn is not None and m.lsn >= upto_lsn:
                reached_end, at_upto = False, True
                break
            if m.lsn > through:
                consumed.append(Consumed(m.lsn, m.lsn, 1, False))
                through = m.lsn
                progressed = True
            k += 1
            continue
        if isinstance(m, Relation):  # outside a transaction (not sent by pgoutput, but harmless)
            rels[m.oid] = m
            k += 1
            continue
        if not isinstance(m, Begin):
            k += 1
            continue
        t = k + 1
        while t < n_struct and type(struct[t][1]) is not Commit:
            t += 1
        if t >= n_struct:
            break  # incomplete transaction at the end of the window (should not happen)
        cidx, commit = struct[t]
        assert isinstance(commit, Commit)
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
            _note_relations(body, rels)
            k = t + 1
            continue
        has_changes = nrows - 2 - len(body) > 0 or any(type(b) is Truncate for _, b in body)
        if not has_changes:
            _note_relations(body, rels)
            consumed.append(Consumed(commit.commit_lsn, commit.end_lsn, nrows, False))
            through = commit.end_lsn
            progressed = True
            k = t + 1
            continue
        if sel.txns and (new_changes >= budget or _shape_conflict(win, sel, body, idx)):
            reached_end = False  # one shape per table per batch; or the budget is spent
            break
        if not sel.txns:
            sel.lo = idx
            sel.start_rels = dict(rels)
        txn = Txn(idx, commit.commit_lsn, epoch_us(commit.commit_ts), commit.commit_ts)
        for bidx, b in body:
            if isinstance(b, Relation):
                rels[b.oid] = b
                sel.rel_events.setdefault(b.oid, []).append((bidx, b))
            elif isinstance(b, Truncate):
                sel.truncates.append((bidx, b.oids, txn))
        sel.txns.append(txn)
        sel.hi = cidx
        new_changes += nrows
        sel.source_bytes += int(offs[cidx + 1] - offs[idx])
        consumed.append(Consumed(commit.commit_lsn, commit.end_lsn, nrows, True))
        through = commit.end_lsn
        progressed = True
        k = t + 1
    return Picked(sel, consumed, progressed, reached_end, at_upto, (k, rels))


def _note_relations(body: list[tuple[int, Message]], rels: dict[int, Relation]) -> None:
    """A transaction passed over still brings its Relation messages (a stream sends each once)."""
    for _, b in body:
        if isinstance(b, Relation):
            rels[b.oid] = b


def _shape_conflict(
    win: tp.Window | MessageWindow, sel: Selection, body: list[tuple[int, Message]], begin: int
) -> bool:
    """A Relation in this transaction gives a table of the batch a new shape."""
    if isinstance(win, MessageWindow):
        return False  # no row in the window: no batch to conflict with
    for _, b in body:
        if not isinstance(b, Relation):
            continue
        a = bisect_left(win.row_idx, sel.lo)
        z = bisect_left(win.row_idx, begin)
        rows = win.row_idx[a:z][win.row_oid[a:z] == b.oid]
        used = [int(rows[-1])] if len(rows) else []
        used += [idx for idx, oids, _ in sel.truncates if b.oid in oids]
        if not used:
            continue
        prev = sel.shape_at(b.oid, max(used))
        if prev is None or (prev.namespace, prev.name, prev.shape) != (
            b.namespace,
            b.name,
            b.shape,
        ):
            return True
    return False
