"""The MariaDB/MySQL target against the real server on 127.0.0.1:3306 (root, no password).

Each test writes into databases of its own (uuid names) and drops them. In CI
(`CI=true`) a missing server fails the tests instead of skipping them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pymysql
import pytest

from tests.cdc_helpers import run_cli, write_settings
from tests.cdc_helpers import settings as settings_doc
from tests.integration.test_apply import GO_ON, STOP, changes, ts
from tests.maria_helpers import SERVER, q
from trempy_nb.capture import (
    ChangeReader,
    create_slot,
    drop_task_objects,
    ensure_publication,
    publication_name,
    slot_name,
)
from trempy_nb.catalog import ColumnInfo, describe_table
from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED
from trempy_nb.connections import get_connection, list_connections, save_connection
from trempy_nb.db import connect as pg_connect
from trempy_nb.errors import ConnectionFailed, RowError, ValidationFailed
from trempy_nb.fullload import target_spec
from trempy_nb.fullload.mariadb import run_full_load_mariadb
from trempy_nb.pgcopy.copyio import iter_frames, select_query
from trempy_nb.pipeline.plan import compile_plans
from trempy_nb.redact import mask
from trempy_nb.reports import TargetTable, history
from trempy_nb.settings import parse_settings
from trempy_nb.writer.apply import TableApply
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.errorpolicy import BadRow
from trempy_nb.writer.mariadb import capabilities, state, uri
from trempy_nb.writer.mariadb.apply import apply_batch, read_checkpoint
from trempy_nb.writer.mariadb.ddl import ensure_state_tables, ensure_target
from trempy_nb.writer.mariadb.fullload import TableLoad
from trempy_nb.writer.mariadb.names import execute, qualified

COLUMNS = (
    ColumnInfo("id", "integer", False, 1),
    ColumnInfo("name", "text", True, 2),
    ColumnInfo("qty", "integer", True, 3),
    ColumnInfo("doc", "text", True, 4),
)


@pytest.fixture
def conn(server: str, dbs: Callable[..., str]) -> Iterator[Any]:
    """A session on a fresh state database (the one the target URI names)."""
    c = uri.connect(f"{server}/{dbs('state')}")
    try:
        yield c
    finally:
        c.close()


query = q


def make(conn: Any, dbs: Callable[..., str], mode: str, table: str = "items",
         columns: tuple[ColumnInfo, ...] = COLUMNS, key: tuple[str, ...] = ("id",)) -> TargetSpec:
    spec = TargetSpec(dbs("dw", create=False), table, columns, key, mode)
    ensure_target(conn, spec)
    conn.commit()
    return spec


def upsert_rows(conn: Any, spec: TargetSpec) -> list[tuple]:
    return query(conn, f"SELECT id, name, qty, doc FROM {qualified(spec.schema, spec.table)} ORDER BY id")


def naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None)


def versions(conn: Any, spec: TargetSpec) -> list[tuple]:
    return query(conn, f"SELECT id, name, qty, doc, scd_start_date, scd_end_date, scd_current"
                 f" FROM {qualified(spec.schema, spec.table)} ORDER BY id, scd_start_date")


# --- CDC apply ------------------------------------------------------------------------------------


def test_upsert_insert_update_delete_and_replay(conn: Any, dbs: Callable[..., str]) -> None:
    spec = make(conn, dbs, "upsert")
    b1 = changes([("I", 100, ts(1), (1, "a", 1, "x")), ("I", 100, ts(1), (2, "b", 2, "y")),
                  ("I", 100, ts(1), (3, "c", 3, "z"))])
    r1 = apply_batch(conn, "t1", [TableApply(spec, b1)], 100, error_handling=STOP)
    c1 = r1.tables[(spec.schema, "items")]
    assert (c1.inserted, c1.updated, c1.deleted) == (3, 0, 0)
    b2 = changes([
        ("U", 200, ts(2), (1, "a2", 10, "x")),
        ("U", 210, ts(3), (1, "a3", 11, "x")),  # last change of key 1 wins
        ("D", 210, ts(3), (2, None, None, None)),
        ("I", 220, ts(4), (4, "d", 4, "w")),
        ("D", 220, ts(4), (4, None, None, None)),  # insert then delete: never lands
        ("D", 230, ts(5), (3, None, None, None)),  # key change 3 -> 30: delete + insert
        ("I", 230, ts(5), (30, "c", 3, "z")),
    ])
    r2 = apply_batch(conn, "t1", [TableApply(spec, b2)], 230, error_handling=STOP)
    assert upsert_rows(conn, spec) == [(1, "a3", 11, "x"), (30, "c", 3, "z")]
    c2 = r2.tables[(spec.schema, "items")]
    assert (c2.inserted, c2.updated, c2.deleted) == (1, 1, 2)
    assert read_checkpoint(conn, "t1") == 230
    # a replayed batch is a no-op, even when the target changed meanwhile
    query(conn, f"UPDATE {qualified(spec.schema, spec.table)} SET qty = 99")
    conn.commit()
    assert apply_batch(conn, "t1", [TableApply(spec, b2)], 230, error_handling=STOP).skipped
    assert upsert_rows(conn, spec) == [(1, "a3", 99, "x"), (30, "c", 99, "z")]
    # a batch overlapping the checkpoint applies only the newer transactions
    overlap = changes([("U", 230, ts(5), (30, "old", 3, "z")), ("U", 240, ts(6), (30, "new", 5, "z"))])
    r3 = apply_batch(conn, "t1", [TableApply(spec, overlap)], 240, error_handling=STOP)
    assert r3.tables[(spec.schema, "items")].replayed == 1
    assert upsert_rows(conn, spec) == [(1, "a3", 99, "x"), (30, "new", 5, "z")]


def test_upsert_unchanged_toast_and_truncate(conn: Any, dbs: Callable[..., str]) -> None:
    spec = make(conn, dbs, "upsert")
    big = "B" * 100_000
    apply_batch(conn, "t", [TableApply(spec, changes([("I", 100, ts(1), (1, "a", 1, big))]))], 100,
                error_handling=STOP)
    b2 = changes([
        ("U", 200, ts(2), (1, "a2", 2, None), ["doc"]),  # value only on the target
        ("I", 200, ts(2), (2, "n", 1, "fresh")),
        ("U", 210, ts(3), (2, "n2", 2, None), ["doc"]),  # value earlier in the batch
    ])
    apply_batch(conn, "t", [TableApply(spec, b2)], 210, error_handling=STOP)
    assert upsert_rows(conn, spec) == [(1, "a2", 2, big), (2, "n2", 2, "fresh")]
    b3 = changes([("U", 300, ts(4), (1, "before", 1, "x")), ("I", 320, ts(6), (7, "after", 7, "x"))])
    r = apply_batch(conn, "t", [TableApply(spec, b3, [(5, 310, ts(5))])], 320, error_handling=STOP)
    assert upsert_rows(conn, spec) == [(7, "after", 7, "x")]
    assert r.tables[(spec.schema, "items")].truncates == 1


def test_scd2_version_chains_at_commit_times(conn: Any, dbs: Callable[..., str]) -> None:
    spec = make(conn, dbs, "scd2")
    b1 = changes([("I", 100, ts(1), (1, "a", 1, "x")), ("I", 100, ts(1), (2, "b", 1, "y")),
                  ("I", 100, ts(1), (3, "c", 1, "z"))])
    apply_batch(conn, "s", [TableApply(spec, b1)], 100, error_handling=STOP)
    b2 = changes([
        ("U", 200, ts(2), (1, "a2", 1, "x")),
        ("U", 200, ts(2), (1, "a3", 2, "x")),  # same transaction: one version
        ("U", 300, ts(3), (1, "a4", 3, "x")),
        ("D", 300, ts(3), (2, None, None, None)),
        ("I", 400, ts(4), (4, "d", 1, "w")),
        ("U", 400, ts(4), (3, "c2", 2, None), ["doc"]),  # unchanged TOAST: from the current version
    ])
    r = apply_batch(conn, "s", [TableApply(spec, b2)], 400, error_handling=STOP)
    t = lambda n: naive(ts(n))  # noqa: E731
    assert versions(conn, spec) == [
        (1, "a", 1, "x", t(1), t(2), 0),
        (1, "a3", 2, "x", t(2), t(3), 0),
        (1, "a4", 3, "x", t(3), None, 1),
        (2, "b", 1, "y", t(1), t(3), 0),
        (3, "c", 1, "z", t(1), t(4), 0),
        (3, "c2", 2, "z", t(4), None, 1),
        (4, "d", 1, "w", t(4), None, 1),
    ]
    c = r.tables[(spec.schema, "items")]
    assert (c.opened, c.closed, c.merged) == (4, 3, 1)
    # `history` of a key: every version, oldest first
    where = TargetTable(f"{SERVER}/{conn.db.decode()}", "public", "items", spec.schema, "items",
                        ("id", "name", "qty", "doc"), ("id",), "scd2")
    hist = history(where, {"id": "1"})
    assert hist.select("name", "scd_current").rows() == [("a", 0), ("a3", 0), ("a4", 1)]
    assert apply_batch(conn, "s", [TableApply(spec, b2)], 400, error_handling=STOP).skipped
    assert len(versions(conn, spec)) == 7
    # the target itself refuses a second current version of a key
    with pytest.raises(pymysql.err.IntegrityError):
        query(conn, f"INSERT INTO {qualified(spec.schema, spec.table)} (id, name, scd_start_date, scd_current)"
              " VALUES (1, 'dup', UTC_TIMESTAMP(6), 1)")
    conn.rollback()
    # a truncate closes every current version at its commit time
    apply_batch(conn, "s", [TableApply(spec, changes([]), [(0, 500, ts(5))])], 500, error_handling=STOP)
    assert query(conn, f"SELECT COUNT(*) FROM {qualified(spec.schema, spec.table)} WHERE scd_current") == [(0,)]
    assert query(conn, f"SELECT COUNT(*) FROM {qualified(spec.schema, spec.table)} WHERE scd_end_date = %s",
                 (t(5),)) == [(3,)]


def test_bad_row_isolated_per_error_policy(conn: Any, dbs: Callable[..., str]) -> None:
    cols = (*COLUMNS[:3], ColumnInfo("seen", "timestamp with time zone", True, 4))
    spec = make(conn, dbs, "upsert", columns=cols)
    batch = changes([("I", 100, ts(1), (i, f"n{i}", i, "2024-01-01 00:00:00+00")) for i in range(1, 9)]
                    + [("U", 100, ts(1), (5, "bad", 5, "infinity"))], ("id", "name", "qty", "seen"))
    # stop (the default): one line naming the key, nothing written, checkpoint unchanged
    with pytest.raises(RowError) as info:
        apply_batch(conn, "e", [TableApply(spec, batch)], 100, error_handling=STOP)
    assert "'id': '5'" in str(info.value) and "seen" in str(info.value)
    assert query(conn, f"SELECT COUNT(*) FROM {qualified(spec.schema, spec.table)}") == [(0,)]
    assert read_checkpoint(conn, "e") is None
    # go on: the bad key is recorded and skipped, the others land
    bad: list[BadRow] = []
    r = apply_batch(conn, "e", [TableApply(spec, batch)], 100, error_handling=GO_ON, on_row_error=bad.append)
    assert [b.key for b in bad] == [{"id": "5"}]
    assert r.tables[(spec.schema, "items")].failed == 1
    assert [row[0] for row in query(conn, f"SELECT id FROM {qualified(spec.schema, spec.table)} ORDER BY id")] \
        == [1, 2, 3, 4, 6, 7, 8]
    assert read_checkpoint(conn, "e") == 100


# --- hostile names ----------------------------------------------------------------------------------


def test_hostile_identifiers(conn: Any, dbs: Callable[..., str]) -> None:
    cols = (ColumnInfo("i`d;", "integer", False, 1), ColumnInfo("na'm\"e %s", "text", True, 2))
    for mode in ("upsert", "scd2"):
        spec = make(conn, dbs, mode, table="t`;DROP TABLE x;--'\"%", columns=cols, key=("i`d;",))
        batch = changes([("I", 100, ts(1), (1, "a`'\";%s")), ("I", 100, ts(1), (2, "b")),
                         ("U", 200, ts(2), (2, "c"))], ("i`d;", "na'm\"e %s"))
        apply_batch(conn, f"h{mode}", [TableApply(spec, batch)], 200, error_handling=STOP)
        rows = query(conn, f"SELECT * FROM {qualified(spec.schema, spec.table)} ORDER BY 1, 3" if mode == "scd2"
                     else f"SELECT * FROM {qualified(spec.schema, spec.table)} ORDER BY 1")
        if mode == "upsert":
            assert rows == [(1, "a`'\";%s"), (2, "c")]
        else:
            assert [(r[0], r[1], r[4]) for r in rows] == [(1, "a`'\";%s", 1), (2, "b", 0), (2, "c", 1)]


# --- full load ------------------------------------------------------------------------------------

ALL_TYPES = """
CREATE TABLE src (
  id integer PRIMARY KEY, si smallint, bi bigint, num numeric(20,6), big numeric, r real, d double precision,
  t text, vc varchar(20), ch char(4), b boolean, dt date, ts timestamp, tstz timestamptz, tm time,
  u uuid, j json, jb jsonb, ai integer[], at text[], by bytea, iv interval, ip inet
)"""
ALL_ROWS = """
INSERT INTO src VALUES
 (1, -32768, 9223372036854775807, 12345678901234.123456, 12345678901234567890123456789012345.123456789012345678901234567890, 1.5, 2.25,
  'tab	nl
 quote" back\\ comma, ''sq'' `bt` NULL', 'ünïcødé ✓', 'ab', true, '2024-02-29', '2024-02-29 23:59:59.999999',
  '2024-06-01 12:00:00.123456+02', '23:59:59.5', '6ecd8c99-4036-403d-bf84-cf8400f67836',
  '{"a": [1, 2.50, null], "b": "x"}', '{"k": {"n": 1.0}}', '{1,NULL,-3}', '{"a b","c\\"d",NULL}', '\\x00ff10',
  '1 year 2 mons 3 days 04:05:06.7', '192.168.0.1/24'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, false, '0001-01-01', '1000-01-01 00:00:00', NULL, NULL,
  NULL, NULL, NULL, '{}', NULL, '\\x', NULL, NULL),
 (3, 0, 0, -0.000001, 0, -0.0, -1e300, 'NULL', '', '', NULL, '9999-12-31', NULL, '9999-12-31 23:59:59.999999+00',
  '00:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '[]', '"s"', '{{1,2},{3,4}}', '{}', NULL, '-1 days', NULL)
"""


def _full_load(conn: Any, source_uri: str, spec: TargetSpec, eh: Any = STOP, **kw: Any) -> TableLoad:
    load = TableLoad(conn, spec, eh, task="fl", state_database=conn.db.decode(), **kw)
    ensure_state_tables(conn, conn.db.decode())
    load.begin()
    with pg_connect(source_uri) as src:
        frames = iter_frames(src.cursor(), select_query("public", "src", spec.data_columns), spec.data_columns)
        for frame in frames:
            load.write(frame)
    load.finish(source_schema="public", source_table="src")
    return load


def _pg_columns(source_uri: str) -> tuple[ColumnInfo, ...]:
    with pg_connect(source_uri) as src:
        rows = src.execute("SELECT attname, format_type(atttypid, atttypmod), attnum FROM pg_attribute"
                           " WHERE attrelid = 'src'::regclass AND attnum > 0 ORDER BY attnum").fetchall()
    return tuple(ColumnInfo(r[0], r[1], True, r[2]) for r in rows)


def _same(col: ColumnInfo, source: Any, target: Any) -> bool:
    """A MariaDB value against PostgreSQL's, per the documented mapping."""
    if source is None or target is None:
        return source is None and target is None
    pg = col.pg_type
    if pg == "boolean":
        return bool(target) == source and target in (0, 1)
    if pg == "timestamp with time zone":
        return target == naive(source)
    if pg == "uuid":
        return str(target) == str(source)
    if pg in ("json", "jsonb") or pg.endswith("[]"):
        return json.loads(target) == source  # psycopg loads json and arrays into Python values
    if pg == "bytea":
        return bytes(target) == bytes(source)
    if pg == "time without time zone":
        return target == dt.timedelta(hours=source.hour, minutes=source.minute, seconds=source.second,
                                      microseconds=source.microsecond)
    if pg == "real":
        return float(target) == float(source)
    if pg.startswith("numeric"):
        return Decimal(target) == Decimal(source)
    return target == source


def _as_changes(source_uri: str, columns: list[str], op: str, lsn: int) -> pl.DataFrame:
    """The source rows (COPY text, as pgoutput sends them) as changes of one transaction."""
    with pg_connect(source_uri) as src:
        frame = pl.concat(list(iter_frames(src.cursor(), select_query("public", "src", columns), columns)))
    return frame.with_columns(
        pl.lit(op).alias(OP), pl.lit(lsn, pl.Int64).alias(LSN), pl.lit(ts(lsn), META_SCHEMA[TS]).alias(TS),
        pl.int_range(0, frame.height, dtype=pl.Int64).alias(SEQ), pl.lit(None, META_SCHEMA[UNCHANGED]).alias(UNCHANGED))


@pytest.mark.parametrize("path", ["full_load", "cdc_upsert"])
def test_every_type_round_trips(conn: Any, dbs: Callable[..., str], source_uri: str, path: str) -> None:
    with pg_connect(source_uri) as src:
        src.execute(ALL_TYPES)
        src.execute(ALL_ROWS)
        src.commit()
        src.execute("SET intervalstyle = postgres")
        expected = src.execute("SELECT *, iv::text, ip::text FROM src ORDER BY id").fetchall()
    cols = _pg_columns(source_uri)
    spec = TargetSpec(dbs("types", create=False), "src", cols, ("id",), "upsert")
    if path == "full_load":
        assert _full_load(conn, source_uri, spec).counts.rows_written == 3
    else:  # inserted, then updated with the same values (the INSERT ... ON DUPLICATE KEY UPDATE path)
        ensure_target(conn, spec)
        names = [c.name for c in cols]
        for op, lsn in (("I", 100), ("U", 200)):
            r = apply_batch(conn, "types", [TableApply(spec, _as_changes(source_uri, names, op, lsn))], lsn,
                            error_handling=STOP)
            assert r.totals().inserted + r.totals().updated == 3
    got = query(conn, f"SELECT * FROM {qualified(spec.schema, 'src')} ORDER BY id")
    assert len(got) == len(expected)
    n = len(cols)
    as_text = ("iv", "ip")  # stored as PostgreSQL's text: compared with the source's ::text
    for exp, row in zip(expected, got, strict=True):
        for i, col in enumerate(cols):
            if col.name not in as_text:
                assert _same(col, exp[i], row[i]), f"{col.name} ({col.pg_type}): {exp[i]!r} -> {row[i]!r}"
        assert (row[n - 2], row[n - 1]) == tuple(exp[n:]), "interval/inet text"
    if path != "full_load":
        return
    # the load is recorded in the state table of the URI's database
    assert query(conn, f"SELECT status, `rows` FROM {qualified(conn.db.decode(), 'trempy_load_state')}") \
        == [("done", 3)]


@pytest.mark.parametrize("value", ["infinity", "10000-01-01 00:00:00+00", "0044-03-15 00:00:00+00 BC"])
def test_full_load_out_of_range_timestamp_is_an_error(conn: Any, dbs: Callable[..., str], source_uri: str,
                                                       value: str) -> None:
    with pg_connect(source_uri) as src:
        src.execute("CREATE TABLE src (id integer PRIMARY KEY, at timestamptz)")
        src.execute("INSERT INTO src SELECT g, '2024-01-01' FROM generate_series(1, 20) g")
        src.execute("UPDATE src SET at = %s WHERE id = 13", (value,))
        src.commit()
    cols = (ColumnInfo("id", "integer"), ColumnInfo("at", "timestamp with time zone"))
    spec = TargetSpec(dbs("oor", create=False), "src", cols, ("id",), "upsert")
    with pytest.raises(RowError) as info:
        _full_load(conn, source_uri, spec)
    assert "'id': '13'" in str(info.value) and "\n" not in str(info.value)
    conn.rollback()
    assert query(conn, f"SELECT COUNT(*) FROM {qualified(spec.schema, 'src')}") == [(0,)]
    bad: list[BadRow] = []
    load = _full_load(conn, source_uri, spec, GO_ON, on_row_error=bad.append)
    assert load.counts.rows_written == 19 and load.counts.rows_failed == 1
    assert [b.key for b in bad] == [{"id": "13"}] and bad[0].payload["at"] == value.replace("+00 BC", "+00 BC")
    assert query(conn, f"SELECT COUNT(*) FROM {qualified(spec.schema, 'src')}") == [(19,)]


def test_full_load_into_existing_rows_merges(conn: Any, dbs: Callable[..., str], source_uri: str) -> None:
    with pg_connect(source_uri) as src:
        src.execute("CREATE TABLE src (id integer PRIMARY KEY, name text)")
        src.execute("INSERT INTO src VALUES (1, 'a'), (2, 'b')")
        src.commit()
    cols = (ColumnInfo("id", "integer"), ColumnInfo("name", "text"))
    schema = dbs("merge", create=False)
    for mode in ("upsert", "scd2"):
        spec = TargetSpec(schema, f"src_{mode}", cols, ("id",), mode)
        t1 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
        _full_load(conn, source_uri, spec, load_ts=t1)
        with pg_connect(source_uri) as src:
            src.execute("UPDATE src SET name = 'b2' WHERE id = 2")
            src.execute("INSERT INTO src VALUES (3, 'c')")
            src.commit()
        t2 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
        _full_load(conn, source_uri, spec, load_ts=t2)
        table = qualified(schema, spec.table)
        if mode == "upsert":
            assert query(conn, f"SELECT id, name FROM {table} ORDER BY id") == [(1, "a"), (2, "b2"), (3, "c")]
        else:
            assert query(conn, f"SELECT id, name, scd_start_date, scd_end_date, scd_current FROM {table}"
                         " ORDER BY id, scd_start_date") == [
                (1, "a", naive(t1), None, 1),
                (2, "b", naive(t1), naive(t2), 0),
                (2, "b2", naive(t2), None, 1),
                (3, "c", naive(t2), None, 1),
            ]
        with pg_connect(source_uri) as src:  # back to the first state for the next mode
            src.execute("UPDATE src SET name = 'b' WHERE id = 2")
            src.execute("DELETE FROM src WHERE id = 3")
            src.commit()


# --- bad input --------------------------------------------------------------------------------------


def test_unreachable_server_is_one_transient_line() -> None:
    with pytest.raises(ConnectionFailed) as info:
        uri.connect("mysql://app:S3cretPw!x@127.0.0.1:1/db", timeout=2)
    text = str(info.value)
    assert "S3cretPw" not in text and "\n" not in text and "127.0.0.1:1" in text
    assert info.value.transient


def test_wrong_password_and_missing_database(server: str, dbs: Callable[..., str]) -> None:
    user = f"trempy_{uuid.uuid4().hex[:8]}"
    admin = uri.connect(f"{server}/mysql")
    try:
        with admin.cursor() as cur:
            execute(cur, "CREATE USER %s@'%%' IDENTIFIED BY 'RightPw!1'", (user,))
            execute(cur, "CREATE USER %s@'localhost' IDENTIFIED BY 'RightPw!1'", (user,))
        with pytest.raises(ConnectionFailed) as info:
            uri.connect(f"mysql://{user}:WrongPw!9@127.0.0.1:3306/mysql")
        assert "WrongPw" not in str(info.value) and "Access denied" in str(info.value)
        assert not info.value.transient
        missing = f"nope_{uuid.uuid4().hex[:8]}"
        with pytest.raises(ConnectionFailed) as info:
            uri.connect(f"mysql://root@127.0.0.1:3306/{missing}")
        assert f"Unknown database '{missing}'" in str(info.value) and not info.value.transient
        # privileges are validated before anything is written
        ok = uri.connect(f"mysql://{user}:RightPw!1@127.0.0.1:3306/information_schema")
        try:
            with pytest.raises(ValidationFailed, match="lacks privilege"):
                capabilities.validate(ok, "somedb")
        finally:
            ok.close()
    finally:
        with admin.cursor() as cur:
            execute(cur, "DROP USER IF EXISTS %s@'%%'", (user,))
            execute(cur, "DROP USER IF EXISTS %s@'localhost'", (user,))
        admin.close()


def test_validate_passes_on_the_machine_server(conn: Any) -> None:
    info = capabilities.validate(conn, conn.db.decode())
    assert info.mariadb and info.native_uuid


def test_local_infile_off_is_reported_with_the_setting(conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The setting is global (shared server): the server's answer is replaced, the check is real.
    real = capabilities.execute

    def fake(cur: Any, statement: str, params: Any = ()) -> int:
        return real(cur, "SELECT 0" if "local_infile" in statement else statement, params)

    monkeypatch.setattr(capabilities, "execute", fake)
    with pytest.raises(ValidationFailed) as info:
        capabilities.validate(conn, conn.db.decode())
    assert "SET GLOBAL local_infile = ON" in str(info.value) and "\n" not in str(info.value)


def test_key_too_long_writes_nothing(conn: Any, dbs: Callable[..., str]) -> None:
    spec = TargetSpec(dbs("long", create=False), "t", (ColumnInfo("code", "varchar(1000)"),), ("code",), "upsert")
    with pytest.raises(ValidationFailed) as info:
        ensure_target(conn, spec)
    assert "index limit" in str(info.value) and "\n" not in str(info.value)
    assert query(conn, "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s",
                 (spec.schema,)) == [(0,)]


def test_saved_connection_and_env_password(trempy_home: Any, monkeypatch: pytest.MonkeyPatch,
                                           conn: Any) -> None:
    monkeypatch.setenv("MARIA_PW", "Env:Pw@/x")
    t = uri.target_of("mariadb://app:${MARIA_PW}@127.0.0.1:3306/db")
    assert t.password == "Env:Pw@/x" and t.user == "app"
    save_connection("maria", f"mysql://root@127.0.0.1:3306/{conn.db.decode()}")
    with uri.connect("maria") as c2:
        assert c2.db.decode() == conn.db.decode()
    save_connection("maria2", "mysql://app:Saved!Pw9@127.0.0.1:3306/db")
    assert uri.target_of("maria2").password == "Saved!Pw9"
    listed = list_connections().filter(pl.col("name") == "maria2").row(0, named=True)
    assert (listed["host"], listed["port"], listed["database"], listed["user"]) == ("127.0.0.1", "3306", "db", "app")
    assert "Saved!Pw9" not in str(get_connection("maria2")) and "Saved!Pw9" not in str(list_connections())
    assert "Saved!Pw9" not in mask("connecting with Saved!Pw9 failed")


# --- full load through the task's plans -------------------------------------------------------------


def test_run_full_load_through_plans(conn: Any, dbs: Callable[..., str], source_uri: str) -> None:
    """hr.employee lands as table `employee` in database <modify_schema_name>, filtered and transformed."""
    with pg_connect(source_uri) as src:
        src.execute("CREATE SCHEMA hr")
        src.execute("CREATE TABLE hr.employee (id integer PRIMARY KEY, name text, pay numeric(10,2))")
        src.execute("INSERT INTO hr.employee SELECT g, 'emp ' || g, g * 1.5 FROM generate_series(1, 3000) g")
        src.commit()
        info = describe_table(src, "hr", "employee")
    target_db = dbs("hrdw", create=False)
    tbl = {"schema_name": "hr", "table_name": "employee"}
    doc = settings_doc("fl_maria", source_uri, f"mysql://root@127.0.0.1:3306/{conn.db.decode()}",
                       rtype="full_load", tables=[("hr", "employee")],
                       filters=[{**tbl, "column_name": "id", "filter_type": "less_than_or_equal", "value": 2000}],
                       transformations=[
                           {**tbl, "priority": 0, "transformation_type": "modify_schema_name",
                            "contract": {"target_schema_name": target_db}},
                           {**tbl, "priority": 1, "transformation_type": "modify_column_value",
                            "contract": {"operation": "uppercase", "column_name": "name"}}])
    settings = parse_settings(doc)
    plans = compile_plans(settings, {("hr", "employee"): info})
    results = run_full_load_mariadb(settings, plans, source_uri, settings.task.target, max_workers=1)
    assert [(r.rows_read, r.rows_written, r.rows_filtered) for r in results] == [(3000, 2000, 1000)]
    rows = query(conn, f"SELECT COUNT(*), MIN(name), SUM(pay) FROM {qualified(target_db, 'employee')}")
    assert rows == [(2000, "EMP 1", Decimal(sum(g * 1.5 for g in range(1, 2001))).quantize(Decimal("0.01")))]
    assert query(conn, f"SELECT task, schema_name, table_name, status, `rows`"
                 f" FROM {qualified(conn.db.decode(), 'trempy_load_state')}") \
        == [("fl_maria", "hr", "employee", "done", 2000)]


# --- real pgoutput changes --------------------------------------------------------------------------

SOURCE_DDL = """
CREATE TABLE public.t (id integer PRIMARY KEY, name text, qty integer, at timestamptz, doc text);
ALTER TABLE public.t ALTER COLUMN doc SET STORAGE EXTERNAL;
"""


@pytest.fixture
def slot_reader(source_uri: str) -> Iterator[Callable[[], ChangeReader]]:
    name = "m" + uuid.uuid4().hex[:12]
    readers: list[ChangeReader] = []

    def setup() -> ChangeReader:
        with pg_connect(source_uri, autocommit=True) as c:
            ensure_publication(c, publication_name(name), [("public", "t")])
            create_slot(c, slot_name(name))
        readers.append(ChangeReader(source_uri, slot_name(name), publication_name(name), 10_000))
        return readers[-1]

    yield setup
    for r in readers:
        r.close()
    with pg_connect(source_uri, autocommit=True) as c:
        drop_task_objects(c, name)


def _source_writes(source_uri: str, phase: int) -> None:
    big = "D" * 20_000  # stored out of line: an update that leaves it alone sends it as unchanged
    with psycopg.connect(source_uri, autocommit=True, options="-c synchronous_commit=on") as c:
        if phase == 1:
            c.execute("INSERT INTO t SELECT g, 'n' || g, g, '2024-01-01 00:00:00+02', %s"
                      " FROM generate_series(1, 6) g", (big,))
            return
        c.execute("UPDATE t SET name = 'renamed' WHERE id = 1")  # doc unchanged (TOAST)
        c.execute("UPDATE t SET id = 60 WHERE id = 6")  # key change, doc unchanged: from the target's row
        with c.transaction():
            c.execute("UPDATE t SET qty = -1 WHERE id = 2")  # leaves the filter: deleted on the target
            c.execute("DELETE FROM t WHERE id = 3")
        c.execute("UPDATE t SET id = 40, name = 'moved', doc = 'small' WHERE id = 4")  # key change
        c.execute("UPDATE t SET at = '2030-06-01 12:00:00.25-05' WHERE id = 5")
        c.execute("INSERT INTO t VALUES (7, 'seven', 7, NULL, NULL)")


def test_real_pgoutput_changes_upsert_and_scd2(conn: Any, dbs: Callable[..., str], source_uri: str,
                                               slot_reader: Callable[[], ChangeReader]) -> None:
    with pg_connect(source_uri, autocommit=True) as c:
        c.execute(SOURCE_DDL)
        info = describe_table(c, "public", "t")
    reader = slot_reader()
    batches = []
    for phase in (1, 2):  # two reads: the second phase's batches find phase 1's rows on the target
        _source_writes(source_uri, phase)
        n = len(batches)
        while (b := reader.read_batch()) is not None:
            batches.append(b)
            reader.confirm(b.end_lsn)
        assert len(batches) > n
    target_db = dbs("cdc", create=False)
    results = {}
    for mode in ("upsert", "scd2"):
        tbl = {"schema_name": "public", "table_name": "t"}
        doc = settings_doc(f"cdc_{mode}", source_uri, f"mysql://root@127.0.0.1:3306/{conn.db.decode()}",
                           mode=mode, filters=[{**tbl, "column_name": "qty", "filter_type": "greater_than_or_equal",
                                                "value": 0}],
                           transformations=[
                               {**tbl, "priority": 0, "transformation_type": "modify_schema_name",
                                "contract": {"target_schema_name": target_db}},
                               {**tbl, "priority": 0, "transformation_type": "modify_table_name",
                                "contract": {"target_table_name": f"t_{mode}"}}])
        settings = parse_settings(doc)
        plan = compile_plans(settings, {("public", "t"): info})[("public", "t")]
        spec = target_spec(plan, settings)
        ensure_target(conn, spec)
        conn.commit()
        applied = []
        for batch in batches + batches:  # the second pass replays every batch: a no-op
            items = [TableApply(spec, plan.apply_changes(tc.frame), list(tc.truncated_at)) for tc in batch.tables]
            applied.append(apply_batch(conn, f"cdc_{mode}", items, batch.end_lsn, error_handling=STOP).skipped)
        assert applied == [False] * len(batches) + [True] * len(batches)
        results[mode] = query(conn, f"SELECT id, name, qty, at, doc{', scd_current' if mode == 'scd2' else ''}"
                              f" FROM {qualified(target_db, spec.table)} ORDER BY id, scd_start_date"
                              if mode == "scd2" else
                              f"SELECT id, name, qty, at, doc FROM {qualified(target_db, spec.table)} ORDER BY id")
    with pg_connect(source_uri) as c:
        source = [(i, n, q, naive(a) if a else None, d) for i, n, q, a, d in
                  c.execute("SELECT id, name, qty, at, doc FROM t WHERE qty >= 0 ORDER BY id").fetchall()]
    assert results["upsert"] == source
    assert results["upsert"][0][4] == "D" * 20_000  # the unchanged TOAST value came from the target
    assert [r[4] for r in results["upsert"] if r[0] == 60] == ["D" * 20_000]  # ... also for a moved key
    current = [r[:5] for r in results["scd2"] if r[5] == 1]
    assert current == source
    per_key = {}
    for r in results["scd2"]:
        per_key[r[0]] = per_key.get(r[0], 0) + 1
    # 1: insert + rename; 2: insert (closed when it left the filter); 3: insert (closed by the delete);
    # 4 and 6: insert (closed by the key change); 40, 60: moved; 5: insert + new time; 7: insert
    assert per_key == {1: 2, 2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1, 40: 1, 60: 1}


def _run_load(conn: Any, source_uri: str, table: str, target_db: str, *, filtered: bool,
              error_handling: dict | None = None) -> list:
    with pg_connect(source_uri) as c:
        info = describe_table(c, "public", table)
    tbl = {"schema_name": "public", "table_name": table}
    doc = settings_doc(f"fl_{uuid.uuid4().hex[:6]}", source_uri, f"mysql://root@127.0.0.1:3306/{conn.db.decode()}",
                       rtype="full_load", tables=[("public", table)], error_handling=error_handling,
                       filters=[{**tbl, "column_name": "id", "filter_type": "greater_than_or_equal", "value": 0}]
                       if filtered else (),
                       transformations=[{**tbl, "priority": 0, "transformation_type": "modify_schema_name",
                                         "contract": {"target_schema_name": target_db}}])
    settings = parse_settings(doc)
    plans = compile_plans(settings, {("public", table): info})
    return run_full_load_mariadb(settings, plans, source_uri, settings.task.target, max_workers=1)


def test_streamed_load_writes_what_the_pipeline_writes(conn: Any, dbs: Callable[..., str], source_uri: str) -> None:
    """A pass-through table streams COPY csv into LOAD DATA; the same rows through the Polars
    pipeline (a no-op filter) land identically, value for value."""
    with pg_connect(source_uri) as src:
        src.execute(ALL_TYPES)
        src.execute(ALL_ROWS)
        src.execute("ALTER TABLE src DROP COLUMN ai, DROP COLUMN at")  # arrays always go through Python
        src.execute("INSERT INTO src (id, tstz, b, by) SELECT g, '2024-01-01 00:00:00+05'::timestamptz + g * interval"
                    " '1 hour 1 microsecond', g % 2 = 0, decode(md5(g::text), 'hex') FROM generate_series(10, 5000) g")
        src.commit()
    streamed, piped = dbs("streamed", create=False), dbs("piped", create=False)
    [r1] = _run_load(conn, source_uri, "src", streamed, filtered=False)
    [r2] = _run_load(conn, source_uri, "src", piped, filtered=True)
    assert (r1.path, r2.path) == ("passthrough", "pipeline")
    assert r1.rows_written == r2.rows_written == 4994
    a = query(conn, f"SELECT * FROM {qualified(streamed, 'src')} ORDER BY id")
    b = query(conn, f"SELECT * FROM {qualified(piped, 'src')} ORDER BY id")
    assert a == b and len(a) == 4994


def test_streamed_load_falls_back_to_isolate_a_bad_row(conn: Any, dbs: Callable[..., str], source_uri: str) -> None:
    with pg_connect(source_uri) as src:
        src.execute("CREATE TABLE src (id integer PRIMARY KEY, at timestamptz, n text)")
        src.execute("INSERT INTO src SELECT g, '2024-01-01', 'x' FROM generate_series(1, 500) g")
        src.execute("UPDATE src SET at = '12000-01-01 00:00:00+00' WHERE id = 321")
        src.commit()
    with pytest.raises(RowError) as info:
        _run_load(conn, source_uri, "src", dbs("stop", create=False), filtered=False)
    assert "'id': '321'" in str(info.value) and "\n" not in str(info.value)
    go_on = dbs("goon", create=False)
    [r] = _run_load(conn, source_uri, "src", go_on, filtered=False,
                    error_handling={"stop_if_insert_error": False, "stop_if_upsert_error": False})
    assert (r.path, r.rows_written, r.rows_failed) == ("pipeline", 499, 1)
    assert query(conn, f"SELECT COUNT(*), SUM(id) FROM {qualified(go_on, 'src')}") == [(499, Decimal(125250 - 321))]


# --- the CLI: `trempy-nb run` into MariaDB ----------------------------------------------------------


def test_cli_full_load_into_mariadb(conn: Any, dbs: Callable[..., str], source_uri: str, tmp_path: Path,
                                    trempy_home: Path) -> None:
    with pg_connect(source_uri) as src:
        src.execute("CREATE SCHEMA hr")
        src.execute("CREATE TABLE hr.employee (id integer PRIMARY KEY, name text, hired date)")
        src.execute("INSERT INTO hr.employee SELECT g, 'e' || g, DATE '2020-01-01' + g FROM generate_series(1, 1000) g")
        src.commit()
    hr = dbs("hr", create=False)
    tbl = {"schema_name": "hr", "table_name": "employee"}
    env = {"TREMPY_HOME": str(trempy_home), "MARIA_PW": ""}
    doc = settings_doc("cli_maria", source_uri, f"mariadb://root:${{MARIA_PW}}@127.0.0.1:3306/{conn.db.decode()}",
                       rtype="full_load", tables=[("hr", "employee")],
                       transformations=[{**tbl, "priority": 0, "transformation_type": "modify_schema_name",
                                         "contract": {"target_schema_name": hr}}])
    done = run_cli(["run", str(write_settings(tmp_path / "maria.json", doc)), "-q"], env=env)
    assert done.returncode == 0, done.stderr
    assert query(conn, f"SELECT COUNT(*), MAX(hired) FROM {qualified(hr, 'employee')}") == [(1000, dt.date(2022, 9, 27))]
    # `history` reads a key's row back from the MariaDB target
    hist = run_cli(["history", str(tmp_path / "maria.json"), "--key", "7", "--json"], env=env)
    assert hist.returncode == 0, hist.stderr
    assert [(r["id"], r["name"]) for r in json.loads(hist.stdout)] == [(7, "e7")]
    # (CDC into MariaDB: test_mariadb_cdc.py over the local transport, test_rabbitmq_mariadb.py over RabbitMQ)


def test_cli_refuses_mariadb_as_source(tmp_path: Path, trempy_home: Path) -> None:
    doc = settings_doc("maria_src", "mysql://app:Hidden!Pw1@127.0.0.1:3306/db", "postgresql://u@h/db",
                       rtype="full_load")
    out = run_cli(["run", str(write_settings(tmp_path / "src.json", doc)), "-q"],
                  env={"TREMPY_HOME": str(trempy_home)})
    assert out.returncode == 2 and "can only be a task's target" in out.stderr
    assert "Hidden!Pw1" not in out.stderr + out.stdout


def test_task_state_for_the_cdc_session(conn: Any, dbs: Callable[..., str]) -> None:
    """writer/mariadb/state.py: writer/state.py's functions, same names and arguments."""
    db = conn.db.decode()
    ensure_state_tables(conn, db)
    spec = make(conn, dbs, "upsert")
    apply_batch(conn, "st", [TableApply(spec, changes([("I", 100, ts(1), (1, "a", 1, "x"))]))], 100,
                error_handling=STOP)
    for lsn in (90, 120, 110):  # never backwards
        state.record_slot_lsn(conn, "st", lsn)
    state.record_shapes(conn, "st", {("public", "t"): [("id", "integer"), ("name", "text")]})
    conn.commit()
    assert state.read_slot_lsn(conn, "st") == 120
    assert state.read_shapes(conn, "st") == {("public", "t"): [("id", "integer"), ("name", "text")]}
    # a column added on the source while the task was stopped is added on `continue`
    wider = TargetSpec(spec.schema, spec.table, (*COLUMNS, ColumnInfo("extra", "numeric(5,1)")), ("id",), "upsert")
    ensure_target(conn, wider, create=False, add_missing=True)
    assert query(conn, "SELECT column_type FROM information_schema.columns WHERE table_schema = %s"
                 " AND table_name = 'items' AND column_name = 'extra'", (spec.schema,)) == [("decimal(5,1)",)]
    state.forget_task(conn, "st", ("load_state", "source_shapes", "checkpoints"))
    conn.commit()
    assert read_checkpoint(conn, "st") is None and state.read_shapes(conn, "st") == {}
    assert state.loaded_tables(conn, "st") == set() and state.read_slot_lsn(conn, "st") == 0


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_value_without_a_json_form_is_a_row_error(conn: Any, dbs: Callable[..., str], mode: str) -> None:
    cols = (ColumnInfo("id", "integer", False, 1), ColumnInfo("v", "numeric[]", True, 2))
    spec = make(conn, dbs, mode, columns=cols)
    batch = changes([("I", 100, ts(1), (1, "{1.5,2}")), ("I", 100, ts(1), (2, "{NaN}")),
                     ("I", 100, ts(1), (3, "{}"))], ("id", "v"))
    bad: list[BadRow] = []
    r = apply_batch(conn, "j", [TableApply(spec, batch)], 100, error_handling=GO_ON, on_row_error=bad.append)
    assert [b.key for b in bad] == [{"id": "2"}] and r.totals().failed == 1
    assert query(conn, f"SELECT id, v FROM {qualified(spec.schema, spec.table)} ORDER BY id") \
        == [(1, "[1.5, 2]"), (3, "[]")]
