"""Capture against a real PostgreSQL 15 (wal_level=logical): slot, publication, snapshot, reader.

Every test that creates a slot drops it in a fixture finalizer, so no slot
outlives its test. Source writes use synchronous_commit=on: the throwaway
cluster runs with it off, and logical decoding only sees flushed WAL.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import polars as pl
import psycopg
import pytest
from psycopg import sql

from trempy_nb.capture import (
    ChangeReader,
    check_prerequisites,
    create_slot,
    create_slot_with_snapshot,
    drop_task_objects,
    emit_heartbeat,
    ensure_publication,
    publication_name,
    slot_name,
    slot_status,
    snapshot_transaction,
)
from trempy_nb.changes import LSN, OP, SEQ, TS, UNCHANGED, ChangeBatch, lsn_to_int
from trempy_nb.embedded import Cluster
from trempy_nb.errors import SlotLost, ValidationFailed


def _connect(uri: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(
        uri, autocommit=autocommit, options="-c TimeZone=UTC -c synchronous_commit=on"
    )


@pytest.fixture
def src(source_uri: str) -> Iterator[psycopg.Connection]:
    with _connect(source_uri) as conn:
        yield conn


@pytest.fixture
def task(source_uri: str) -> Iterator[str]:
    """A task name whose slot and publication are always dropped at the end of the test."""
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    with psycopg.connect(source_uri, autocommit=True) as conn:
        drop_task_objects(conn, name)
        assert slot_status(conn, slot_name(name)) is None


Setup = Callable[..., ChangeReader]


@pytest.fixture
def capture(source_uri: str, src: psycopg.Connection, task: str) -> Iterator[Setup]:
    """capture(tables, max_changes=...) -> a ChangeReader on a fresh publication + slot."""
    readers: list[ChangeReader] = []

    def setup(
        tables: list[tuple[str, str]], max_changes: int = 10000, stream: bool = False
    ) -> ChangeReader:
        if stream:  # a second reader on the same slot, streaming (the slot exists already)
            reader = ChangeReader(
                source_uri, slot_name(task), publication_name(task), max_changes, stream=True
            )
            readers.append(reader)
            return reader
        ensure_publication(src, publication_name(task), tables)
        create_slot(src, slot_name(task))
        reader = ChangeReader(source_uri, slot_name(task), publication_name(task), max_changes)
        readers.append(reader)
        return reader

    yield setup
    for r in readers:
        r.close()


def read_all(reader: ChangeReader, confirm: bool = True) -> list[ChangeBatch]:
    out = []
    while (b := reader.read_batch()) is not None:
        out.append(b)
        if confirm:
            reader.confirm(b.end_lsn)
    return out


def frame(batch: ChangeBatch, table: str, schema: str = "public") -> pl.DataFrame:
    return next(t.frame for t in batch.tables if t.key == (schema, table))


# -- slot.py ----------------------------------------------------------------------------------


def test_check_prerequisites(source_uri: str, src: psycopg.Connection, pg_cluster: Cluster) -> None:
    src.execute("CREATE TABLE ok (id int PRIMARY KEY, v text)")
    src.execute("CREATE TABLE nopk (id int, v text)")
    src.execute("CREATE TABLE full_nopk (id int, v text)")
    src.execute("ALTER TABLE full_nopk REPLICA IDENTITY FULL")
    src.execute("CREATE TABLE nothing (id int PRIMARY KEY)")
    src.execute("ALTER TABLE nothing REPLICA IDENTITY NOTHING")
    check_prerequisites(src, [("public", "ok"), ("public", "full_nopk")])
    with pytest.raises(ValidationFailed, match="public.nopk has no primary key"):
        check_prerequisites(src, [("public", "ok"), ("public", "nopk")])
    with pytest.raises(ValidationFailed, match="REPLICA IDENTITY NOTHING"):
        check_prerequisites(src, [("public", "nothing")])
    with pytest.raises(ValidationFailed, match="does not exist"):
        check_prerequisites(src, [("public", "missing")])
    role = "r" + uuid.uuid4().hex[:8]
    src.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
    try:
        with psycopg.connect(pg_cluster.uri(source_uri.rsplit("/", 1)[1], role, "pw")) as c:
            with pytest.raises(ValidationFailed, match="REPLICATION privilege"):
                check_prerequisites(c, [])
    finally:
        src.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_ensure_publication_matches_table_set(src: psycopg.Connection, task: str) -> None:
    for t in ("a", "b", "c"):
        src.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(t)))
    src.execute('CREATE SCHEMA "Odd Schema"')
    src.execute('CREATE TABLE "Odd Schema"."We""ird" (id int PRIMARY KEY)')
    pub = publication_name(task)

    def tables() -> set[tuple[str, str]]:
        rows = src.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,)
        ).fetchall()
        return {(s, t) for s, t in rows}

    ensure_publication(src, pub, [("public", "a"), ("public", "b")])
    assert tables() == {("public", "a"), ("public", "b")}
    ensure_publication(src, pub, [("public", "b"), ("public", "c"), ("Odd Schema", 'We"ird')])
    assert tables() == {("public", "b"), ("public", "c"), ("Odd Schema", 'We"ird')}
    ensure_publication(src, pub, [("public", "b"), ("public", "c"), ("Odd Schema", 'We"ird')])
    ensure_publication(src, pub, [])
    assert tables() == set()
    row = src.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_publication"
        " WHERE pubname = %s",
        (pub,),
    ).fetchone()
    assert row == (True, True, True, True, True)


def test_slot_status_and_drop_is_idempotent(
    source_uri: str, src: psycopg.Connection, task: str
) -> None:
    assert slot_status(src, slot_name(task)) is None
    ensure_publication(src, publication_name(task), [])
    lsn = create_slot(src, slot_name(task))
    st = slot_status(src, slot_name(task))
    assert st is not None
    assert (st.plugin, st.active, st.wal_status) == ("pgoutput", False, "reserved")
    assert st.confirmed_flush_lsn == lsn
    assert st.retained_bytes is not None and st.retained_bytes >= 0
    drop_task_objects(src, task)
    drop_task_objects(src, task)
    assert slot_status(src, slot_name(task)) is None
    assert src.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)


def test_drop_terminates_our_own_holder(
    source_uri: str, src: psycopg.Connection, task: str
) -> None:
    holder = psycopg.connect(source_uri, autocommit=True, application_name="trempy_nb stale runner")
    src.execute("CREATE TABLE t (id int PRIMARY KEY)")
    ensure_publication(src, publication_name(task), [("public", "t")])
    create_slot(src, slot_name(task))
    # a long-running peek keeps the slot active in that backend
    src.execute("INSERT INTO t SELECT g FROM generate_series(1, 300000) g")
    done = threading.Event()

    def peek() -> None:
        try:
            while not done.is_set():
                holder.execute(
                    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
                    " 'proto_version', '1', 'publication_names', %s)",
                    (slot_name(task), publication_name(task)),
                )
        except psycopg.Error:
            pass

    th = threading.Thread(target=peek, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while not (s := slot_status(src, slot_name(task))) or not s.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    drop_task_objects(src, task)
    done.set()
    th.join(10)
    assert slot_status(src, slot_name(task)) is None
    holder.close()


# -- snapshot.py ------------------------------------------------------------------------------


def test_snapshot_handoff_no_loss_no_duplicate(
    source_uri: str, src: psycopg.Connection, task: str
) -> None:
    src.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    src.execute("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 500) g")
    ensure_publication(src, publication_name(task), [("public", "t")])
    stop = threading.Event()
    next_id = [1000]

    def writer() -> None:  # commits all through slot creation
        with _connect(source_uri) as w:
            while not stop.is_set():
                w.execute("INSERT INTO t VALUES (%s, 'during')", (next_id[0],))
                next_id[0] += 1

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    time.sleep(0.2)
    with create_slot_with_snapshot(source_uri, slot_name(task)) as (point, snap):
        assert isinstance(snap, str) and point > 0
        time.sleep(0.2)
        stop.set()
        th.join(10)
        src.execute("INSERT INTO t VALUES (-1, 'after')")
        # two parallel readers import the same snapshot
        with _connect(source_uri, False) as r1, _connect(source_uri, False) as r2:
            with snapshot_transaction(r1, snap), snapshot_transaction(r2, snap):
                a = {r[0] for r in r1.execute("SELECT id FROM t WHERE id % 2 = 0")}
                b = {r[0] for r in r2.execute("SELECT id FROM t WHERE id % 2 <> 0")}
                iso = r1.execute("SHOW transaction_isolation").fetchone()
        assert iso == ("repeatable read",)
    snapshot_ids = a | b
    st = slot_status(src, slot_name(task))
    assert st is not None and st.confirmed_flush_lsn == point
    reader = ChangeReader(source_uri, slot_name(task), publication_name(task))
    with reader:
        stream_ids: list[int] = []
        for batch in read_all(reader):
            stream_ids += [int(x) for x in frame(batch, "t")["id"]]
    all_ids = {r[0] for r in src.execute("SELECT id FROM t")}
    assert set(range(1, 501)) <= snapshot_ids
    assert -1 in stream_ids and -1 not in snapshot_ids
    assert len(stream_ids) == len(set(stream_ids))
    assert snapshot_ids & set(stream_ids) == set()
    assert snapshot_ids | set(stream_ids) == all_ids
    assert len(all_ids) > 510  # the writer really did commit around the slot's creation


def test_snapshot_slot_exists(source_uri: str, src: psycopg.Connection, task: str) -> None:
    from trempy_nb.errors import AlreadyRunning

    create_slot(src, slot_name(task))
    with pytest.raises(AlreadyRunning):
        with create_slot_with_snapshot(source_uri, slot_name(task)):
            pass


# -- reader.py --------------------------------------------------------------------------------


def test_every_op_and_confirm(src: psycopg.Connection, capture: Setup, task: str) -> None:
    src.execute("CREATE TABLE emp (id int PRIMARY KEY, name text, salary numeric(10,2), born date)")
    reader = capture([("public", "emp")])
    assert reader.read_batch() is None
    with src.transaction():
        src.execute(
            "INSERT INTO emp VALUES (1, 'Ann', 5000.5, '1980-02-03'), (2, 'Bö 🐘', NULL, NULL)"
        )
    src.execute("UPDATE emp SET salary = 6000 WHERE id = 1")
    src.execute("DELETE FROM emp WHERE id = 2")
    batch = reader.read_batch()
    assert batch is not None and batch.n_transactions == 3 and batch.n_changes == 4
    f = frame(batch, "emp")
    assert f.columns == ["id", "name", "salary", "born", OP, LSN, TS, SEQ, UNCHANGED]
    assert f.schema[LSN] == pl.Int64 and f.schema[TS] == pl.Datetime("us", "UTC")
    assert f[OP].to_list() == ["I", "I", "U", "D"]
    assert f["id"].to_list() == ["1", "2", "1", "2"]
    assert f["name"].to_list() == ["Ann", "Bö 🐘", "Ann", None]
    assert f["salary"].to_list() == ["5000.50", None, "6000.00", None]
    assert f["born"].to_list() == ["1980-02-03", None, "1980-02-03", None]
    assert f[SEQ].to_list() == sorted(f[SEQ].to_list()) and f[SEQ].n_unique() == 4  # commit order
    lsns = f[LSN].to_list()
    assert lsns[0] == lsns[1] < lsns[2] < lsns[3] == batch.end_lsn and batch.first_lsn == lsns[0]
    assert f[UNCHANGED].null_count() == 4
    # peek does not consume: until confirm, the slot has not moved, and the same reader skips
    st = slot_status(src, slot_name(task))
    assert st is not None and st.confirmed_flush_lsn is not None
    assert st.confirmed_flush_lsn < batch.first_lsn
    assert reader.read_batch() is None
    reader.confirm(batch.end_lsn)
    st = slot_status(src, slot_name(task))
    assert st is not None and st.confirmed_flush_lsn is not None
    assert st.confirmed_flush_lsn > batch.end_lsn
    # a fresh reader (after a restart) sees nothing of the confirmed batch
    src.execute("INSERT INTO emp VALUES (3, 'Cy', 1, NULL)")
    with ChangeReader(reader.uri, reader.slot, reader.publication) as again:
        b2 = again.read_batch()
        assert b2 is not None and frame(b2, "emp")["id"].to_list() == ["3"]
        # peek_changes is a preview: no state change
        assert again.read_batch() is None
    with ChangeReader(reader.uri, reader.slot, reader.publication) as fresh:
        preview = fresh.peek_changes(10)
        assert preview is not None and preview.n_changes == 1
        assert fresh.pending_confirm == 0
        assert fresh.read_batch() is not None
    with ChangeReader(
        reader.uri, reader.slot, reader.publication, start_after_lsn=b2.end_lsn
    ) as ck:
        assert ck.read_batch() is None  # a checkpoint at that commit skips it


def test_primary_key_change_is_delete_then_insert(src: psycopg.Connection, capture: Setup) -> None:
    src.execute("CREATE TABLE t (a int, b text, v text, PRIMARY KEY (a, b))")
    src.execute("CREATE TABLE tf (id int PRIMARY KEY, v text)")
    src.execute("ALTER TABLE tf REPLICA IDENTITY FULL")
    reader = capture([("public", "t"), ("public", "tf")])
    src.execute("INSERT INTO t VALUES (1, 'x', 'one')")
    src.execute("UPDATE t SET b = 'y' WHERE a = 1")
    src.execute("UPDATE t SET v = 'two' WHERE a = 1")
    src.execute("INSERT INTO tf VALUES (1, 'p')")
    src.execute("UPDATE tf SET v = 'q'")  # FULL identity, same key: a plain update
    src.execute("UPDATE tf SET id = 2")  # FULL identity, key changed
    (batch,) = read_all(reader)
    f = frame(batch, "t")
    assert f.select(OP, "a", "b", "v").rows() == [
        ("I", "1", "x", "one"),
        ("D", "1", "x", None),
        ("I", "1", "y", "one"),
        ("U", "1", "y", "two"),
    ]
    assert f[LSN][1] == f[LSN][2]  # both halves carry the same commit
    g = frame(batch, "tf")
    assert g.select(OP, "id", "v").rows() == [
        ("I", "1", "p"),
        ("U", "1", "q"),
        ("D", "1", "q"),
        ("I", "2", "q"),
    ]


def test_unchanged_toast_default_identity(src: psycopg.Connection, capture: Setup) -> None:
    import random
    import string

    big = "".join(random.choice(string.ascii_letters) for _ in range(6000))
    src.execute("CREATE TABLE doc (id int PRIMARY KEY, title text, body text)")
    reader = capture([("public", "doc")])
    src.execute("INSERT INTO doc VALUES (1, 'a', %s), (2, 'b', 'small')", (big,))
    src.execute("UPDATE doc SET title = 'a2'")
    src.execute("UPDATE doc SET id = 3 WHERE id = 1")  # key change with an unchanged TOAST value
    (batch,) = read_all(reader)
    f = frame(batch, "doc")
    assert f.select(OP, "id", "title").rows() == [
        ("I", "1", "a"), ("I", "2", "b"), ("U", "1", "a2"), ("U", "2", "a2"), ("D", "1", None),
        ("I", "3", "a2"),
    ]  # fmt: skip
    assert f["body"].to_list() == [big, "small", None, "small", None, None]
    assert f[UNCHANGED].to_list() == [None, None, ["body"], None, None, ["body"]]


def test_truncate(src: psycopg.Connection, capture: Setup) -> None:
    src.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src.execute("CREATE TABLE b (id int PRIMARY KEY)")
    reader = capture([("public", "a"), ("public", "b")])
    src.execute("INSERT INTO a VALUES (1)")
    src.execute("TRUNCATE a, b")
    src.execute("INSERT INTO a VALUES (2)")
    (batch,) = read_all(reader)
    ta = next(t for t in batch.tables if t.table == "a")
    tb = next(t for t in batch.tables if t.table == "b")
    assert ta.frame["id"].to_list() == ["1", "2"]
    before, after = ta.frame[SEQ].to_list()
    lsn = ta.frame[LSN][0]
    assert len(ta.truncated_at) == 1 and before < ta.truncated_at[0][0] < after and ta.truncated_at[0][1] > lsn
    assert tb.truncated_at == ta.truncated_at  # one TRUNCATE of both: (seq, lsn, commit time)
    assert tb.frame.height == 0 and tb.frame.columns[0] == "id"
    assert batch.n_changes == 4


def test_large_transaction_and_bounded_backlog(
    src: psycopg.Connection, capture: Setup, task: str
) -> None:
    src.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    reader = capture([("public", "t")], max_changes=3000)
    # one 20k-row transaction: batches hold whole transactions, so it comes as one batch
    src.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    # then a 20k-row backlog of 40 transactions: read in bounded batches
    for k in range(40):
        src.execute(
            "INSERT INTO t SELECT g, 'x' FROM generate_series(%s, %s) g",
            (100000 + k * 500, 100000 + k * 500 + 499),
        )
    first = reader.read_batch()
    assert first is not None and first.n_transactions == 1 and first.n_changes == 20000
    assert frame(first, "t")["id"].cast(pl.Int64).sort().to_list() == list(range(1, 20001))
    rest = []
    while (b := reader.read_batch()) is not None:  # without confirming in between
        rest.append(b)
    assert len(rest) >= 5
    assert all(b.n_changes <= 3000 + 500 for b in rest)
    ids = pl.concat([frame(b, "t") for b in rest])["id"].cast(pl.Int64)
    assert ids.len() == 20000 and ids.n_unique() == 20000
    for b in [first, *rest]:
        reader.confirm(b.end_lsn)
    assert reader.read_batch() is None
    st = slot_status(src, slot_name(task))
    assert st is not None and st.confirmed_flush_lsn is not None
    assert st.confirmed_flush_lsn > rest[-1].end_lsn


def test_interleaved_transactions(source_uri: str, src: psycopg.Connection, capture: Setup) -> None:
    src.execute("CREATE TABLE t (id int PRIMARY KEY, who text)")
    reader = capture([("public", "t")])
    with _connect(source_uri, False) as a, _connect(source_uri, False) as b:
        a.execute("INSERT INTO t VALUES (1, 'a')")
        b.execute("INSERT INTO t VALUES (2, 'b')")
        a.execute("INSERT INTO t VALUES (3, 'a')")
        b.execute("INSERT INTO t VALUES (4, 'b')")
        b.commit()
        a.execute("INSERT INTO t VALUES (5, 'a')")
        a.commit()
    (batch,) = read_all(reader)
    f = frame(batch, "t")
    assert f["id"].to_list() == ["2", "4", "1", "3", "5"]  # commit order, transactions whole
    assert f["who"].to_list() == ["b", "b", "a", "a", "a"]
    lsn = f[LSN].to_list()
    assert lsn[0] == lsn[1] < lsn[2] == lsn[3] == lsn[4]
    assert batch.n_transactions == 2


def test_schema_change_splits_batches(src: psycopg.Connection, capture: Setup) -> None:
    src.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    src.execute("CREATE TABLE other (id int PRIMARY KEY)")
    reader = capture([("public", "t"), ("public", "other")])
    src.execute("INSERT INTO t VALUES (1, 'a')")
    src.execute("INSERT INTO other VALUES (1)")
    src.execute("ALTER TABLE t ADD COLUMN extra int")
    src.execute("INSERT INTO t VALUES (2, 'b', 42)")
    src.execute("ALTER TABLE t ALTER COLUMN extra TYPE bigint")
    src.execute("INSERT INTO t VALUES (3, 'c', 43)")
    b1 = reader.read_batch()
    assert b1 is not None and b1.n_transactions == 2
    assert frame(b1, "t").columns[:2] == ["id", "v"] and "extra" not in frame(b1, "t").columns
    assert reader.relations[("public", "t")].column_names == ("id", "v")
    b2 = reader.read_batch()
    assert b2 is not None and frame(b2, "t")["extra"].to_list() == ["42"]
    rel = reader.relations[("public", "t")]
    assert rel.column_names == ("id", "v", "extra") and rel.columns[2].type_oid == 23
    b3 = reader.read_batch()
    assert b3 is not None and frame(b3, "t")["extra"].to_list() == ["43"]
    assert reader.relations[("public", "t")].columns[2].type_oid == 20
    assert reader.read_batch() is None


def test_heartbeat_lets_an_idle_slot_advance(
    src: psycopg.Connection, capture: Setup, task: str
) -> None:
    src.execute("CREATE TABLE t (id int PRIMARY KEY)")
    reader = capture([("public", "t")])
    before = slot_status(src, slot_name(task))
    assert before is not None and before.confirmed_flush_lsn is not None
    hb = emit_heartbeat(src)
    src.execute("SELECT 1 FROM pg_logical_emit_message(true, 'x', 'y')")  # forces a WAL flush
    assert reader.read_batch() is None
    after = slot_status(src, slot_name(task))
    assert after is not None and after.confirmed_flush_lsn is not None
    assert after.confirmed_flush_lsn >= hb > before.confirmed_flush_lsn
    src.execute("INSERT INTO t VALUES (1)")
    (batch,) = read_all(reader)
    assert batch.n_changes == 1


def test_missing_slot_is_slot_lost(
    source_uri: str, src: psycopg.Connection, capture: Setup, task: str
) -> None:
    with ChangeReader(source_uri, "trempy_nope", "trempy_nope") as r:
        with pytest.raises(SlotLost, match="does not exist"):
            r.read_batch()
    src.execute("CREATE TABLE t (id int PRIMARY KEY)")
    reader = capture([("public", "t")])
    src.execute("INSERT INTO t VALUES (1)")
    batch = reader.read_batch()
    assert batch is not None
    src.execute("SELECT pg_drop_replication_slot(%s)", (slot_name(task),))
    with pytest.raises(SlotLost):
        reader.read_batch()
    with pytest.raises(SlotLost):
        reader.confirm(batch.end_lsn)


def test_lsn_helpers_roundtrip(src: psycopg.Connection) -> None:
    text = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert text is not None
    assert lsn_to_int(text[0]) > 0


# -- stream mode (START_REPLICATION) -------------------------------------------------------------


def _flush_lsn(src: psycopg.Connection) -> int:
    return lsn_to_int(src.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])


def _all_upto(reader: ChangeReader, upto: int) -> list[ChangeBatch]:
    out = []
    while (b := reader.read_batch(upto_lsn=upto)) is not None:
        out.append(b)
    return out


def _frames(batches: list[ChangeBatch]) -> dict[tuple[str, str], pl.DataFrame]:
    by: dict[tuple[str, str], list[pl.DataFrame]] = {}
    for b in batches:
        for t in b.tables:
            by.setdefault(t.key, []).append(t.frame.drop(SEQ))
    return {k: pl.concat(v, how="diagonal") for k, v in by.items()}


def test_stream_delivers_what_a_peek_delivers(src: psycopg.Connection, capture: Setup) -> None:
    """Every operation, a key change, unchanged TOAST, a truncate and an added column: the stream
    reader frames exactly what the peek reader frames (the slot is peeked first, not consumed)."""
    src.execute("CREATE TABLE t (id int PRIMARY KEY, v text, body text)")
    src.execute("ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL")
    src.execute("CREATE TABLE o (id int PRIMARY KEY)")
    peek = capture([("public", "t"), ("public", "o")], max_changes=7)
    big = "x" * 300_000
    src.execute("INSERT INTO t SELECT g, 'v' || g, %s FROM generate_series(1, 40) g", (big,))
    src.execute("UPDATE t SET v = 'w' WHERE id <= 10")  # body unchanged: TOAST marker
    src.execute("UPDATE t SET id = id + 1000 WHERE id = 3")  # key change
    src.execute("DELETE FROM t WHERE id BETWEEN 20 AND 25")
    src.execute("INSERT INTO o VALUES (1), (2)")
    src.execute("TRUNCATE o")
    src.execute("ALTER TABLE t ADD COLUMN extra int")
    src.execute("INSERT INTO t VALUES (500, 'n', 'b', 7)")
    for k in range(30):
        src.execute("INSERT INTO o VALUES (%s)", (100 + k,))
    upto = _flush_lsn(src)
    expected = _all_upto(peek, upto)
    streamed = _all_upto(capture([], max_changes=7, stream=True), upto)
    # where batches are cut depends on what has arrived when a stream is read; what they hold must not
    ends = [b.end_lsn for b in streamed]
    assert ends == sorted(set(ends)) and ends[-1] == expected[-1].end_lsn
    assert sum(b.n_changes for b in streamed) == sum(b.n_changes for b in expected)
    got, want = _frames(streamed), _frames(expected)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].equals(want[key]), key
    def truncates(batches: list[ChangeBatch]) -> list[tuple]:  # (lsn, time): seq is per window
        return [x[1:] for b in batches for t in b.tables for x in t.truncated_at]

    assert truncates(streamed) == truncates(expected) and len(truncates(expected)) == 1


def test_stream_keeps_what_lies_past_upto(src: psycopg.Connection, capture: Setup) -> None:
    """A stream never resends: transactions received beyond a catch-up bound (or left in a window
    when the bound changes) are handed out later, not dropped."""
    src.execute("CREATE TABLE t (id int PRIMARY KEY)")
    capture([("public", "t")])
    for k in range(10):
        src.execute("INSERT INTO t VALUES (%s)", (k,))
    mid = _flush_lsn(src)
    for k in range(10, 20):
        src.execute("INSERT INTO t VALUES (%s)", (k,))
    end = _flush_lsn(src)
    reader = capture([], max_changes=3, stream=True)
    first = reader.read_batch(upto_lsn=end)  # a window of all 20 is received; 1 batch taken
    assert first is not None
    rest_mid = _all_upto(reader, mid)  # a lower bound now: the window's later part must stay
    rest_end = _all_upto(reader, end)
    ids = [int(i) for b in [first, *rest_mid, *rest_end] for i in frame(b, "t")["id"].to_list()]
    assert ids == list(range(20))
    assert all(b.end_lsn < mid for b in rest_mid)
    reader.confirm(rest_end[-1].end_lsn)
    reader.close()
    st = slot_status(src, reader.slot)
    assert st is not None and st.confirmed_flush_lsn is not None
    assert st.confirmed_flush_lsn > rest_end[-1].end_lsn  # the status update reached the slot
