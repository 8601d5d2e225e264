"""The pgoutput decoder on real captured bytes, a hypothesis round trip, and framing without a server.

tests/unit/data/pgoutput_capture.json comes from make_pgoutput_capture.py
(PostgreSQL 15, proto_version 1); regenerate it with that script.
"""

from __future__ import annotations

import json
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trempy_nb.capture import pgoutput as po
from trempy_nb.capture.pgoutput import UNCHANGED_TOAST, DecodeError, decode, decode_many
from trempy_nb.changes import LSN, OP, SEQ, TS, UNCHANGED

DATA = json.loads((Path(__file__).parent / "data" / "pgoutput_capture.json").read_text())
RAW = [bytes.fromhex(m["hex"]) for m in DATA["messages"]]
BIG = DATA["big"]
NAME = DATA["unicode_name"]


@pytest.fixture(scope="module")
def msgs() -> list[po.Message]:
    return [decode(b) for b in RAW]


def test_message_sequence(msgs: list[po.Message]) -> None:
    kinds = "".join(RAW[i][:1].decode() for i in range(len(RAW)))
    assert kinds == "BYRIICBUCBUCBDCBRIIUDCBMICMBYRRTCBORIC"
    assert [type(m).__name__ for m in msgs][:6] == [
        "Begin",
        "Type",
        "Relation",
        "Insert",
        "Insert",
        "Commit",
    ]


def test_begin_commit_pairs(msgs: list[po.Message]) -> None:
    begins = [m for m in msgs if isinstance(m, po.Begin)]
    commits = [m for m in msgs if isinstance(m, po.Commit)]
    assert len(begins) == len(commits) == 8
    for b, c in zip(begins, commits, strict=True):
        assert b.final_lsn == c.commit_lsn
        assert c.end_lsn > c.commit_lsn
        assert b.commit_ts == c.commit_ts
        assert b.commit_ts.tzinfo is not None and b.commit_ts.utcoffset() == timedelta(0)
        assert c.flags == 0
    assert [c.commit_lsn for c in commits] == sorted(c.commit_lsn for c in commits)
    assert len({b.xid for b in begins}) == 8


def test_relation_and_type(msgs: list[po.Message]) -> None:
    typ = msgs[1]
    rel = msgs[2]
    assert isinstance(typ, po.Type) and (typ.namespace, typ.name) == ("public", "mood")
    assert isinstance(rel, po.Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "t", "d")
    assert rel.column_names == ("id", "name", "note", "big", "amount", "m", "at")
    assert rel.key_names == ("id",)
    by_name = {c.name: c for c in rel.columns}
    assert by_name["id"].type_oid == 23
    assert by_name["name"].type_oid == 25 and by_name["name"].type_modifier == -1
    assert by_name["amount"].type_oid == 1700
    assert by_name["amount"].type_modifier == ((12 << 16) | 2) + 4  # numeric(12,2)
    assert by_name["m"].type_oid == typ.oid
    assert by_name["at"].type_oid == 1184
    full = next(m for m in msgs if isinstance(m, po.Relation) and m.name == "tf")
    assert full.replica_identity == "f"
    assert all(c.is_key for c in full.columns)  # FULL flags every column as identity


def test_insert_values_nulls_unicode_toast(msgs: list[po.Message]) -> None:
    ins = msgs[3]
    assert isinstance(ins, po.Insert)
    assert ins.new == ("1", NAME, None, BIG, "12.50", "ok", "2024-01-02 03:04:05.123456+00")
    assert len(ins.new[3]) == 5000
    assert msgs[4] == po.Insert(ins.oid, ("2", "plain", "x", None, None, None, None))


def test_update_unchanged_toast(msgs: list[po.Message]) -> None:
    upd = msgs[7]
    assert isinstance(upd, po.Update)
    assert upd.old is None and upd.old_kind is None
    assert upd.new[:3] == ("1", "renamed", None)
    assert upd.new[3] is UNCHANGED_TOAST
    assert upd.new[4:] == ("12.50", "ok", "2024-01-02 03:04:05.123456+00")


def test_update_key_change_and_delete_key(msgs: list[po.Message]) -> None:
    upd = msgs[10]
    assert isinstance(upd, po.Update)
    assert upd.old_kind == "K"
    assert upd.old == ("2", None, None, None, None, None, None)
    assert upd.new == ("10", "plain", "x", None, None, None, None)
    dele = msgs[13]
    assert dele == po.Delete(upd.oid, ("10", None, None, None, None, None, None), "K")


def test_replica_identity_full(msgs: list[po.Message]) -> None:
    upd = msgs[19]
    dele = msgs[20]
    assert isinstance(upd, po.Update) and upd.old_kind == "O"
    assert (upd.old, upd.new) == (("1", "a"), ("1", "b"))
    assert isinstance(dele, po.Delete) and dele.old_kind == "O" and dele.old == ("2", None)


def test_messages(msgs: list[po.Message]) -> None:
    tx = msgs[23]
    assert tx == po.LogicalMessage(True, tx.lsn, "app", b"hello")
    hb = msgs[26]
    assert isinstance(hb, po.LogicalMessage)
    assert (hb.transactional, hb.prefix, hb.content) == (False, "trempy_heartbeat", b"")
    commit_before = msgs[25]
    assert isinstance(commit_before, po.Commit) and hb.lsn > commit_before.end_lsn


def test_truncate(msgs: list[po.Message]) -> None:
    tr = msgs[31]
    assert isinstance(tr, po.Truncate)
    assert tr.restart_identity and not tr.cascade
    t_oid = msgs[2].oid  # type: ignore[union-attr]
    tf_oid = msgs[30].oid  # type: ignore[union-attr]
    assert set(tr.oids) == {t_oid, tf_oid}


def test_origin(msgs: list[po.Message]) -> None:
    begin, origin = msgs[33], msgs[34]
    assert isinstance(begin, po.Begin)
    assert begin.commit_ts == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert origin == po.Origin(0xABCDEF, "upstream")


def test_decode_many_matches_decode(msgs: list[po.Message]) -> None:
    assert decode_many(RAW) == msgs
    assert decode_many(iter(RAW)) == msgs


@pytest.mark.parametrize(
    "raw",
    [b"", b"Z\x00", b"I\x00\x00", b"B\x00\x01", RAW[3][:40], b"I\x00\x00\x00\x01X\x00\x00"],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)
    with pytest.raises(DecodeError):
        decode_many([RAW[0], raw])


def test_unknown_value_kind() -> None:
    raw = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"x"
    with pytest.raises(DecodeError, match="tuple value kind"):
        decode(raw)


# -- a tiny encoder, and the round trip --------------------------------------------------------


def _ts(dt: datetime) -> int:
    return (dt - po.PG_EPOCH) // timedelta(microseconds=1)


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _tup(values: tuple[po.TupleValue, ...]) -> bytes:
    out = [struct.pack("!H", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v is UNCHANGED_TOAST:
            out.append(b"u")
        else:
            assert isinstance(v, str)
            raw = v.encode()
            out.append(b"t" + struct.pack("!I", len(raw)) + raw)
    return b"".join(out)


def encode(m: po.Message) -> bytes:
    if isinstance(m, po.Begin):
        return b"B" + struct.pack("!QqI", m.final_lsn, _ts(m.commit_ts), m.xid)
    if isinstance(m, po.Commit):
        return b"C" + struct.pack("!BQQq", m.flags, m.commit_lsn, m.end_lsn, _ts(m.commit_ts))
    if isinstance(m, po.Origin):
        return b"O" + struct.pack("!Q", m.lsn) + _s(m.name)
    if isinstance(m, po.Type):
        return b"Y" + struct.pack("!I", m.oid) + _s(m.namespace) + _s(m.name)
    if isinstance(m, po.Relation):
        cols = b"".join(
            bytes([int(c.is_key)]) + _s(c.name) + struct.pack("!Ii", c.type_oid, c.type_modifier)
            for c in m.columns
        )
        return (
            b"R"
            + struct.pack("!I", m.oid)
            + _s(m.namespace)
            + _s(m.name)
            + m.replica_identity.encode()
            + struct.pack("!H", len(m.columns))
            + cols
        )
    if isinstance(m, po.Insert):
        return b"I" + struct.pack("!I", m.oid) + b"N" + _tup(m.new)
    if isinstance(m, po.Update):
        old = b"" if m.old is None else (m.old_kind or "").encode() + _tup(m.old)
        return b"U" + struct.pack("!I", m.oid) + old + b"N" + _tup(m.new)
    if isinstance(m, po.Delete):
        return b"D" + struct.pack("!I", m.oid) + m.old_kind.encode() + _tup(m.old)
    if isinstance(m, po.Truncate):
        return b"T" + struct.pack(f"!IB{len(m.oids)}I", len(m.oids), m.options, *m.oids)
    if isinstance(m, po.LogicalMessage):
        return (
            b"M"
            + struct.pack("!BQ", int(m.transactional), m.lsn)
            + _s(m.prefix)
            + struct.pack("!I", len(m.content))
            + m.content
        )
    raise AssertionError(m)


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20)
stamps = st.integers(-(2**50), 2**50).map(po.pg_ts_to_datetime)
values = st.one_of(
    st.none(), st.just(UNCHANGED_TOAST), st.text(st.characters(blacklist_categories=("Cs",)))
)
tuples = st.lists(values, max_size=8).map(tuple)
columns = st.builds(po.RelationColumn, st.booleans(), names, u32, st.integers(-(2**31), 2**31 - 1))

messages = st.one_of(
    st.builds(po.Begin, u64, stamps, u32),
    st.builds(po.Commit, st.just(0), u64, u64, stamps),
    st.builds(po.Origin, u64, names),
    st.builds(po.Type, u32, names, names),
    st.builds(
        po.Relation,
        u32,
        names,
        names,
        st.sampled_from("dnfi"),
        st.lists(columns, max_size=6).map(tuple),
    ),
    st.builds(po.Insert, u32, tuples),
    st.builds(po.Update, u32, st.none(), st.none(), tuples),
    st.builds(po.Update, u32, tuples, st.sampled_from(["K", "O"]), tuples),
    st.builds(po.Delete, u32, tuples, st.sampled_from(["K", "O"])),
    st.builds(po.Truncate, st.integers(0, 3), st.lists(u32, max_size=5).map(tuple)),
    st.builds(po.LogicalMessage, st.booleans(), u64, names, st.binary(max_size=50)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, min_size=1, max_size=10))
def test_round_trip(ms: list[po.Message]) -> None:
    raws = [encode(m) for m in ms]
    assert [decode(r) for r in raws] == ms
    assert decode_many(raws) == ms


def test_encoder_matches_server_bytes(msgs: list[po.Message]) -> None:
    assert [encode(m) for m in msgs] == RAW


# -- framing of the captured stream, without a server -------------------------------------------


def _pg_cut(n: int) -> int:
    """How many rows a peek with upto_nchanges=n returns: the limit is checked only after a
    whole transaction (or a non-transactional message) has been emitted."""
    for i, raw in enumerate(RAW, 1):
        if i >= n and (raw[:1] == b"C" or (raw[:1] == b"M" and not raw[1] & 1)):
            return i
    return len(RAW)


class _FakeReader:
    """A ChangeReader whose peek returns the captured bytes (no connection is opened)."""

    @staticmethod
    def make(max_changes: int = 10000):  # type: ignore[no-untyped-def]
        from trempy_nb.capture.reader import ChangeReader

        reader = ChangeReader("postgresql://unused", "slot", "pub", max_changes)
        advanced: list[int] = []
        reader._peek = lambda upto, n: RAW[: _pg_cut(n)]  # type: ignore[method-assign]
        # what the catalog says: t has primary key (id); tf has none (all FULL identity columns)
        reader._key_indexes = lambda rel: (  # type: ignore[method-assign]
            (0,) if rel.name == "t" else tuple(i for i, c in enumerate(rel.columns) if c.is_key)
        )
        reader._advance = advanced.append  # type: ignore[method-assign]
        return reader, advanced


def test_framing_of_captured_stream(msgs: list[po.Message]) -> None:
    reader, advanced = _FakeReader.make()
    batch = reader.read_batch()
    assert batch is not None
    commits = [m for m in msgs if isinstance(m, po.Commit)]
    assert batch.n_transactions == 8
    assert batch.first_lsn == commits[0].commit_lsn and batch.end_lsn == commits[-1].commit_lsn
    assert batch.source_bytes == sum(len(r) for r in RAW) - len(RAW[26])  # minus the heartbeat
    tables = {t.key: t for t in batch.tables}
    t = tables[("public", "t")].frame
    assert t.columns[:7] == ["id", "name", "note", "big", "amount", "m", "at"]
    assert t.schema[TS] == pl.Datetime("us", "UTC")
    assert t[OP].to_list() == ["I", "I", "U", "D", "I", "D"]
    assert t["id"].to_list() == ["1", "2", "1", "2", "10", "10"]
    assert t["big"].to_list() == [BIG, None, None, None, None, None]
    assert t["name"].to_list() == [NAME, "plain", "renamed", None, "plain", None]
    assert t[UNCHANGED].to_list() == [None, None, ["big"], None, None, None]
    assert t[LSN].to_list() == [commits[i].commit_lsn for i in (0, 0, 1, 2, 2, 3)]
    assert t[TS].to_list() == [commits[i].commit_ts for i in (0, 0, 1, 2, 2, 3)]
    tf = tables[("public", "tf")]
    # REPLICA IDENTITY FULL without a primary key: every column is the key, so the update is D+I
    assert tf.frame[OP].to_list() == ["I", "I", "D", "I", "D", "I", "I"]
    assert tf.frame["v"].to_list() == ["a", None, "a", "b", None, "c", "from upstream"]
    # _trempy_seq orders a batch's changes in commit order: unique and increasing per table, the
    # insert half of a key change right after its delete half, a TRUNCATE between what it follows
    # and what follows it (one TRUNCATE message for both tables: one position)
    for f in (t, tf.frame):
        assert f[SEQ].to_list() == sorted(f[SEQ].to_list()) and f[SEQ].n_unique() == f.height
    ((trunc_seq, lsn, ts),) = tables[("public", "t")].truncated_at
    assert (lsn, ts) == (commits[6].commit_lsn, commits[6].commit_ts)
    assert tf.truncated_at == [(trunc_seq, lsn, ts)]
    assert all(s < trunc_seq for s in t[SEQ].to_list())
    for s, at in zip(tf.frame[SEQ].to_list(), tf.frame[LSN].to_list(), strict=True):
        assert (s > trunc_seq) == (at > lsn)
    tf_seq = tf.frame[SEQ].to_list()
    assert tf_seq[3] == tf_seq[2] + 1  # the update's D+I halves
    assert reader.relations[("public", "t")].column_names[0] == "id"
    # nothing is new on the next peek; the heartbeat was consumed as a no-op
    assert reader.read_batch() is None
    assert advanced == []  # the heartbeat sits behind unconfirmed data: no advance yet
    reader.confirm(batch.end_lsn)
    assert advanced == [commits[-1].end_lsn]
    assert reader.pending_confirm == 0


def test_framing_is_bounded_and_resumes() -> None:
    reader, advanced = _FakeReader.make(max_changes=6)
    seen = []
    while (b := reader.read_batch()) is not None:
        seen.append(b)
    assert [b.n_transactions for b in seen] == [1, 2, 2, 2, 1]
    assert all(a.end_lsn < b.first_lsn for a, b in zip(seen, seen[1:], strict=False))
    assert reader.pending_confirm == 8
    reader.confirm(seen[2].end_lsn)
    assert reader.pending_confirm == 3
    assert advanced[-1] > seen[2].end_lsn


def test_peek_changes_leaves_state() -> None:
    reader, _ = _FakeReader.make()
    first = reader.peek_changes(6)
    assert first is not None and first.n_transactions == 1
    assert reader.read_batch() is not None
    assert reader.pending_confirm == 8


def test_decode_many_skips_rows_of_transactions_before_skip_before(msgs: list[po.Message]) -> None:
    commits = [m for m in msgs if isinstance(m, po.Commit)]
    cut = commits[3].commit_lsn + 1  # the first four transactions were already returned
    got = decode_many(RAW, skip_before=cut)
    assert len(got) == len(msgs)
    in_skipped = False
    for full, fast in zip(msgs, got, strict=True):
        if isinstance(full, po.Begin):
            in_skipped = full.final_lsn < cut
        if in_skipped and isinstance(full, (po.Insert, po.Update, po.Delete)):
            assert fast is None
        else:
            assert fast == full  # Begin, Commit, Relation, messages and later rows are decoded
        if isinstance(full, po.Commit):
            in_skipped = False
    assert any(x is None for x in got)
    assert decode_many(RAW, skip_before=0) == msgs
