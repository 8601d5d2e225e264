"""The rows of selected transactions as one Polars frame per table: the vectorised pass.

After `batching.pick` chose whole transactions, their Insert/Update/Delete
messages are framed per relation *shape* (a Relation message mid-batch starts
a new segment), `FRAME_CHUNK_ROWS` rows at a time so the numpy scratch arrays
stay bounded. Values are never decoded one by one: `tuples.walk` finds every
value's bytes column by column and Polars slices them out as strings.

What the writer relies on (see `changes.py` for the meta columns):
- an update that changes the key becomes 'D' (old key) then 'I' (new row),
  with consecutive `_trempy_seq`; `_trempy_seq` is 2 x the message index (+1
  for the insert half), so it increases in commit order and a TRUNCATE
  (`truncated_at`) sits between what it follows and what follows it;
- an unchanged TOASTed value takes the old row's value under REPLICA
  IDENTITY FULL; otherwise it is null and its column is named in
  `_trempy_unchanged` (only DEFAULT/INDEX tables ever carry it).

Pure apart from `key_indexes`, the caller's answer to "which columns identify
a row of this relation" (the primary key, from the catalog).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import polars as pl

from trempy_nb.capture import tuples as tp
from trempy_nb.capture.batching import Selection
from trempy_nb.capture.pgoutput import DecodeError, Relation
from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED, ChangeBatch, TableChanges
from trempy_nb.errors import TerminalError

__all__ = ["FRAME_CHUNK_ROWS", "KeyIndexes", "batch_of", "table_changes"]

#: Rows framed at a time (the numpy scratch arrays are a few times columns x rows x 8 bytes)
FRAME_CHUNK_ROWS = 1 << 16

#: positions of a relation's identifying columns (primary key, else replica identity)
KeyIndexes = Callable[[Relation], tuple[int, ...]]


def batch_of(
    win: tp.Window, sel: Selection, key_indexes: KeyIndexes
) -> tuple[ChangeBatch, dict[tuple[str, str], Relation]]:
    """The batch of a non-empty selection, and the relation each of its tables was framed with."""
    relations: dict[tuple[str, str], Relation] = {}
    batch = ChangeBatch(
        first_lsn=sel.txns[0].lsn,
        end_lsn=sel.txns[-1].lsn,
        tables=table_changes(win, sel, key_indexes, relations),
        n_transactions=len(sel.txns),
        source_bytes=sel.source_bytes,
    )
    return batch, relations


def table_changes(
    win: tp.Window,
    sel: Selection,
    key_indexes: KeyIndexes,
    relations: dict[tuple[str, str], Relation],
) -> list[TableChanges]:
    """Frames per table for the selected transactions, in order of first appearance.

    `relations` receives the latest relation of each table."""
    a = int(np.searchsorted(win.row_idx, sel.lo))
    z = int(np.searchsorted(win.row_idx, sel.hi))
    ridx, roid = win.row_idx[a:z], win.row_oid[a:z]
    begins = np.array([t.begin for t in sel.txns], np.int64)
    lsns = np.array([t.lsn for t in sel.txns], np.int64)
    stamps = np.array([t.ts_us for t in sel.txns], np.int64)
    # (first message index, oid) of every relation with rows or truncates
    first: dict[int, int] = {}
    if len(ridx):
        oids, at = np.unique(roid, return_index=True)
        first = {int(o): int(ridx[i]) for o, i in zip(oids, at, strict=True)}
    for idx, oids_t, _ in sel.truncates:
        for oid in oids_t:
            first[oid] = min(first.get(oid, idx), idx)
    parts: dict[tuple[str, str], list[pl.DataFrame]] = {}
    truncated: dict[tuple[str, str], list[tuple[int, int, datetime]]] = {}
    for oid in sorted(first, key=first.__getitem__):
        rows_o = ridx[roid == oid]
        events = sel.rel_events.get(oid, [])
        shapes = [sel.start_rels.get(oid)] + [r for _, r in events]
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
                    _segment_frame(
                        win, rel, rows[c : c + FRAME_CHUNK_ROWS], begins, lsns, stamps, key_indexes
                    )
                )
            relations[key] = rel
        for idx, oids_t, txn in sel.truncates:
            if oid not in oids_t:
                continue
            rel = sel.shape_at(oid, idx + 1)
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
        # (seq, lsn, commit time): changes.py annotates only (seq, lsn), apply.py reads both
        out.append(TableChanges(key[0], key[1], frame, truncated.get(key, [])))  # type: ignore[arg-type]
    return out


def _segment_frame(
    win: tp.Window,
    rel: Relation,
    rows: np.ndarray,
    begins: np.ndarray,
    lsns: np.ndarray,
    stamps: np.ndarray,
    key_indexes: KeyIndexes,
) -> pl.DataFrame:
    """The changes of one relation shape: rows are message indices of I/U/D messages."""
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

    upd_old = is_u & with_old
    key_changed = np.zeros(n, bool)
    if upd_old.any():  # only then is the key needed (`key_indexes` may ask the catalog)
        key_changed = _key_changes(
            win, key_indexes(rel), rel, rows, upd_old, marker, old, new, where_old, where_new
        )
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
        for row, names_left in unchanged.items():
            col[row] = names_left
        meta.append(pl.Series(UNCHANGED, col, dtype=META_SCHEMA[UNCHANGED]))
    else:
        meta.append(pl.Series(UNCHANGED, [None] * m, dtype=META_SCHEMA[UNCHANGED]))
    return pl.DataFrame([*data, *meta])


def _key_changes(
    win: tp.Window,
    idx: tuple[int, ...],
    rel: Relation,
    rows: np.ndarray,
    upd_old: np.ndarray,
    marker: np.ndarray,
    old: tp.Tuples,
    new: tp.Tuples,
    where_old: np.ndarray,
    where_new: np.ndarray,
) -> np.ndarray:
    """Which updates (that carry an old tuple) changed the row's key (`idx`: its columns)."""
    changed = np.zeros(len(rows), bool)
    cand = np.flatnonzero(upd_old)
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
