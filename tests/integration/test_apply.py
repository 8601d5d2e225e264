"""apply_batch on a real target database: upsert and SCD2 semantics, exactly-once, row errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import psycopg
import pytest
from psycopg import sql

from trempy_nb.catalog import ColumnInfo
from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED
from trempy_nb.db import connect
from trempy_nb.errors import RowError, TerminalError
from trempy_nb.settings import ErrorHandling
from trempy_nb.writer import (
    TableApply,
    apply_batch,
    read_checkpoint,
    reset_checkpoint,
    write_checkpoint,
)
from trempy_nb.writer.ddl import TargetSpec, ensure_target
from trempy_nb.writer.state import read_slot_lsn, record_slot_lsn

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
STOP = ErrorHandling()
GO_ON = ErrorHandling(
    stop_if_insert_error=False,
    stop_if_update_error=False,
    stop_if_delete_error=False,
    stop_if_upsert_error=False,
    stop_if_scd2_error=False,
)
COLUMNS = (
    ColumnInfo("id", "integer", False, 1),
    ColumnInfo("name", "text", True, 2),
    ColumnInfo("qty", "integer", True, 3),
    ColumnInfo("doc", "text", True, 4),
)


def ts(n: float) -> datetime:
    """Commit time of transaction n (distinct microseconds on purpose)."""
    return T0 + timedelta(seconds=n, microseconds=int(n) * 7)


def changes(
    rows: list[tuple], columns: tuple[str, ...] = ("id", "name", "qty", "doc")
) -> pl.DataFrame:
    """Rows as (op, lsn, ts, values tuple[, unchanged list]); SEQ is 10 x the row position."""
    data: dict[str, list[Any]] = {c: [] for c in columns}
    meta: dict[str, list[Any]] = {OP: [], LSN: [], TS: [], SEQ: [], UNCHANGED: []}
    for seq, row in enumerate(rows):
        op, lsn, when, values = row[:4]
        for c, v in zip(columns, values, strict=True):
            data[c].append(None if v is None else str(v))
        meta[OP].append(op)
        meta[LSN].append(lsn)
        meta[TS].append(when)
        meta[SEQ].append(seq * 10)
        meta[UNCHANGED].append(row[4] if len(row) > 4 else None)
    schema = {c: pl.String() for c in columns} | META_SCHEMA
    return pl.DataFrame(data | meta, schema=schema)


@pytest.fixture
def conn(target_uri: str) -> Iterator[psycopg.Connection]:
    c = connect(target_uri, autocommit=True)
    try:
        yield c
    finally:
        c.close()


def make_target(
    conn: psycopg.Connection, mode: str, table: str = "items", check: bool = False
) -> TargetSpec:
    spec = TargetSpec("dw", table, COLUMNS, ("id",), mode)
    ensure_target(conn, spec)
    if check:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT qty_ok CHECK (qty >= 0)").format(spec.ident)
        )
    return spec


def upsert_rows(conn: psycopg.Connection, spec: TargetSpec) -> list[tuple]:
    return conn.execute(
        sql.SQL("SELECT id, name, qty, doc FROM {} ORDER BY id").format(spec.ident)
    ).fetchall()


def versions(conn: psycopg.Connection, spec: TargetSpec) -> list[tuple]:
    return conn.execute(
        sql.SQL(
            "SELECT id, name, qty, doc, scd_start_date, scd_end_date, scd_current FROM {}"
            " ORDER BY id, scd_start_date"
        ).format(spec.ident)
    ).fetchall()


# --- upsert -----------------------------------------------------------------------------------


def test_upsert_insert_update_delete(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert")
    b1 = changes(
        [
            ("I", 100, ts(1), (1, "a", 1, "x")),
            ("I", 100, ts(1), (2, "b", 2, "y")),
            ("I", 100, ts(1), (3, "c", 3, "z")),
        ]
    )
    r1 = apply_batch(conn, "t1", [TableApply(spec, b1)], 100, error_handling=STOP)
    c1 = r1.tables[("dw", "items")]
    assert (c1.inserted, c1.updated, c1.deleted) == (3, 0, 0)
    b2 = changes(
        [
            ("U", 200, ts(2), (1, "a2", 10, "x")),
            ("U", 210, ts(3), (1, "a3", 11, "x")),  # last change of key 1 wins
            ("D", 210, ts(3), (2, None, None, None)),
            ("I", 220, ts(4), (4, "d", 4, "w")),
            ("D", 220, ts(4), (4, None, None, None)),  # insert then delete: never lands
            ("D", 230, ts(5), (3, None, None, None)),  # PK change 3 -> 30: delete + insert
            ("I", 230, ts(5), (30, "c", 3, "z")),
        ]
    )
    r2 = apply_batch(conn, "t1", [TableApply(spec, b2)], 230, error_handling=STOP)
    assert upsert_rows(conn, spec) == [(1, "a3", 11, "x"), (30, "c", 3, "z")]
    c2 = r2.tables[("dw", "items")]
    assert (c2.inserted, c2.updated, c2.deleted) == (1, 1, 2)  # key 4's delete finds nothing
    assert read_checkpoint(conn, "t1") == 230


def test_replayed_batch_is_a_noop_and_partial_overlap_is_trimmed(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert")
    batch = changes([("I", 100, ts(1), (1, "a", 1, "x")), ("U", 110, ts(2), (1, "b", 2, "x"))])
    apply_batch(conn, "t", [TableApply(spec, batch)], 110, error_handling=STOP)
    conn.execute(
        sql.SQL("UPDATE {} SET qty = 99").format(spec.ident)
    )  # would be undone by a replay
    again = apply_batch(conn, "t", [TableApply(spec, batch)], 110, error_handling=STOP)
    assert again.skipped
    assert upsert_rows(conn, spec) == [(1, "b", 99, "x")]
    # A batch overlapping the checkpoint applies only the newer transactions.
    overlap = changes(
        [
            ("U", 110, ts(2), (1, "b", 2, "x")),
            ("U", 120, ts(3), (1, "c", 3, "x")),
        ]
    )
    r = apply_batch(conn, "t", [TableApply(spec, overlap)], 120, error_handling=STOP)
    assert r.tables[("dw", "items")].replayed == 1
    assert upsert_rows(conn, spec) == [(1, "c", 3, "x")]
    assert read_checkpoint(conn, "t") == 120


def test_upsert_unchanged_toast_keeps_target_value(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert")
    big = "B" * 100_000
    apply_batch(
        conn,
        "t",
        [TableApply(spec, changes([("I", 100, ts(1), (1, "a", 1, big))]))],
        100,
        error_handling=STOP,
    )
    b2 = changes(
        [
            ("U", 200, ts(2), (1, "a2", 2, None), ["doc"]),  # value only on the target
            ("I", 200, ts(2), (2, "n", 1, "fresh")),
            ("U", 210, ts(3), (2, "n2", 2, None), ["doc"]),  # value earlier in the batch
        ]
    )
    apply_batch(conn, "t", [TableApply(spec, b2)], 210, error_handling=STOP)
    assert upsert_rows(conn, spec) == [(1, "a2", 2, big), (2, "n2", 2, "fresh")]


def test_upsert_truncate_orders_with_rows(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert")
    apply_batch(
        conn,
        "t",
        [TableApply(spec, changes([("I", 100, ts(1), (i, "a", i, "x")) for i in range(1, 6)]))],
        100,
        error_handling=STOP,
    )
    b = changes(
        [
            ("U", 200, ts(2), (1, "before", 1, "x")),  # before the truncate: irrelevant
            ("I", 220, ts(4), (7, "after", 7, "x")),  # after: applies
        ]
    )
    r = apply_batch(conn, "t", [TableApply(spec, b, [(5, 210, ts(3))])], 220, error_handling=STOP)
    assert upsert_rows(conn, spec) == [(7, "after", 7, "x")]
    assert r.tables[("dw", "items")].truncates == 1


# --- scd2 -------------------------------------------------------------------------------------


def test_scd2_version_chains_at_commit_times(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "scd2")
    b1 = changes(
        [
            ("I", 100, ts(1), (1, "a", 1, "x")),
            ("I", 100, ts(1), (2, "b", 1, "y")),
            ("I", 100, ts(1), (3, "c", 1, "z")),
        ]
    )
    apply_batch(conn, "s", [TableApply(spec, b1)], 100, error_handling=STOP)
    b2 = changes(
        [
            ("U", 200, ts(2), (1, "a2", 1, "x")),
            ("U", 200, ts(2), (1, "a3", 2, "x")),  # same transaction: one version
            ("U", 300, ts(3), (1, "a4", 3, "x")),
            ("D", 300, ts(3), (2, None, None, None)),
            ("I", 400, ts(4), (4, "d", 1, "w")),
            ("U", 400, ts(4), (3, "c2", 2, "z")),
        ]
    )
    r = apply_batch(conn, "s", [TableApply(spec, b2)], 400, error_handling=STOP)
    assert versions(conn, spec) == [
        (1, "a", 1, "x", ts(1), ts(2), False),
        (1, "a3", 2, "x", ts(2), ts(3), False),
        (1, "a4", 3, "x", ts(3), None, True),
        (2, "b", 1, "y", ts(1), ts(3), False),
        (3, "c", 1, "z", ts(1), ts(4), False),
        (3, "c2", 2, "z", ts(4), None, True),
        (4, "d", 1, "w", ts(4), None, True),
    ]
    c = r.tables[("dw", "items")]
    assert (c.opened, c.closed, c.merged) == (4, 3, 1)
    # Replaying the same batch adds no version.
    assert apply_batch(conn, "s", [TableApply(spec, b2)], 400, error_handling=STOP).skipped
    assert len(versions(conn, spec)) == 7
    per_key = conn.execute(
        sql.SQL(
            "SELECT id, count(*) FILTER (WHERE scd_current) FROM {} GROUP BY id ORDER BY id"
        ).format(spec.ident)
    ).fetchall()
    assert per_key == [(1, 1), (2, 0), (3, 1), (4, 1)]


def test_scd2_unchanged_toast_takes_previous_version(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "scd2")
    big = "T" * 200_000
    apply_batch(
        conn,
        "s",
        [TableApply(spec, changes([("I", 100, ts(1), (1, "a", 1, big))]))],
        100,
        error_handling=STOP,
    )
    b2 = changes(
        [
            ("U", 200, ts(2), (1, "a2", 2, None), ["doc"]),  # from the target's current version
            ("U", 300, ts(3), (1, "a3", 3, None), ["doc"]),  # still unknown in batch: same source
            ("I", 300, ts(3), (2, "b", 1, "small")),
            ("U", 400, ts(4), (2, "b2", 2, None), ["doc"]),  # from the batch's earlier event
        ]
    )
    apply_batch(conn, "s", [TableApply(spec, b2)], 400, error_handling=STOP)
    got = [(v[0], v[1], v[3], v[6]) for v in versions(conn, spec)]
    assert got == [
        (1, "a", big, False),
        (1, "a2", big, False),
        (1, "a3", big, True),
        (2, "b", "small", False),
        (2, "b2", "small", True),
    ]


def test_scd2_truncate_closes_every_current_version(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "scd2")
    apply_batch(
        conn,
        "s",
        [TableApply(spec, changes([("I", 100, ts(1), (i, "a", i, "x")) for i in (1, 2)]))],
        100,
        error_handling=STOP,
    )
    b = changes(
        [
            ("U", 200, ts(2), (1, "a2", 1, "x")),
            ("I", 400, ts(4), (1, "again", 1, "x")),
        ]
    )
    apply_batch(conn, "s", [TableApply(spec, b, [(5, 300, ts(3))])], 400, error_handling=STOP)
    assert [(v[0], v[1], v[4], v[5], v[6]) for v in versions(conn, spec)] == [
        (1, "a", ts(1), ts(2), False),
        (1, "a2", ts(2), ts(3), False),
        (1, "again", ts(4), None, True),
        (2, "a", ts(1), ts(3), False),
    ]


# --- errors -----------------------------------------------------------------------------------


def test_check_violation_with_stop_flag_rolls_back_everything(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert", check=True)
    apply_batch(
        conn,
        "t",
        [TableApply(spec, changes([("I", 100, ts(1), (1, "a", 1, "x"))]))],
        100,
        error_handling=STOP,
    )
    bad = changes(
        [
            ("U", 200, ts(2), (1, "ok", 5, "x")),
            ("I", 200, ts(2), (2, "bad", -1, "y")),
            ("I", 200, ts(2), (3, "ok", 3, "z")),
        ]
    )
    with pytest.raises(RowError) as info:
        apply_batch(conn, "t", [TableApply(spec, bad)], 200, error_handling=STOP)
    msg = str(info.value)
    assert "dw.items" in msg and "upsert" in msg and "'id': '2'" in msg and "qty_ok" in msg
    assert upsert_rows(conn, spec) == [(1, "a", 1, "x")]
    assert read_checkpoint(conn, "t") == 100


def test_scd2_violation_with_stop_flag_keeps_versions(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "scd2", check=True)
    first = changes([("I", 100, ts(1), (1, "a", 1, "x"))])
    apply_batch(conn, "s", [TableApply(spec, first)], 100, error_handling=STOP)
    before = versions(conn, spec)
    bad = changes([("U", 200, ts(2), (1, "a2", -5, "x")), ("I", 200, ts(2), (2, "b", 1, "y"))])
    with pytest.raises(RowError, match=r"update of dw.items failed for key \{'id': '1'\}.*stop_if_scd2_error"):
        apply_batch(conn, "s", [TableApply(spec, bad)], 200, error_handling=STOP)
    assert versions(conn, spec) == before
    assert read_checkpoint(conn, "s") == 100


def test_truncate_without_rows(conn: psycopg.Connection) -> None:
    up, sc = make_target(conn, "upsert", "u"), make_target(conn, "scd2", "s")
    rows = changes([("I", 100, ts(1), (i, "a", i, "x")) for i in (1, 2)])
    apply_batch(conn, "t", [TableApply(up, rows), TableApply(sc, rows)], 100, error_handling=STOP)
    empty = changes([])
    r = apply_batch(
        conn,
        "t",
        [TableApply(up, empty, [(0, 200, ts(2))]), TableApply(sc, empty, [(0, 200, ts(2))])],
        200,
        error_handling=STOP,
    )
    assert upsert_rows(conn, up) == []
    assert [(v[0], v[5], v[6]) for v in versions(conn, sc)] == [
        (1, ts(2), False),
        (2, ts(2), False),
    ]
    assert r.tables[("dw", "s")].closed == 2 and r.tables[("dw", "u")].deleted == 2


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_bad_rows_reported_and_rest_lands(conn: psycopg.Connection, mode: str) -> None:
    spec = make_target(conn, mode, check=True)
    reported: list[tuple[str, str, dict, str]] = []
    rows = [("I", 100, ts(1), (i, "n", -i if i in (7, 13) else i, "x")) for i in range(1, 21)]
    rows.append(("I", 100, ts(1), (21, "n", "not-a-number", "x")))  # type error, also isolated
    r = apply_batch(
        conn,
        "t",
        [TableApply(spec, changes(rows))],
        100,
        error_handling=GO_ON,
        on_row_error=lambda bad: reported.append((bad.table, bad.operation, bad.payload, bad.error)),
    )
    assert sorted(p["key"]["id"] for _, _, p, _ in reported) == ["13", "21", "7"]
    assert {op for _, op, _, _ in reported} == {"insert"}  # the change's operation, whatever the mode
    assert any("qty_ok" in err for *_, err in reported)
    assert r.tables[("dw", "items")].failed == 3
    n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(spec.ident)).fetchone()
    assert n == (18,)
    assert read_checkpoint(conn, "t") == 100


def test_non_row_error_stops_with_terminal_error(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert")
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN doc").format(spec.ident))
    with pytest.raises(TerminalError, match="dw.items"):
        apply_batch(
            conn,
            "t",
            [TableApply(spec, changes([("I", 1, ts(1), (1, "a", 1, "x"))]))],
            1,
            error_handling=GO_ON,
            on_row_error=lambda *a: None,
        )
    assert read_checkpoint(conn, "t") is None


# --- names, size, checkpoint API --------------------------------------------------------------


def test_slot_lsn_record_without_waiting_for_a_busy_apply(conn: psycopg.Connection, target_uri: str) -> None:
    """wait=False: while an apply holds the checkpoint row, nothing is written and False comes
    back at once (the reader confirms later); otherwise the same as a waiting record."""
    write_checkpoint(conn, "r", 100)
    assert record_slot_lsn(conn, "r", 150, wait=False) is True
    assert read_slot_lsn(conn, "r") == 150
    with connect(target_uri) as apply_conn:  # an apply's transaction: the row FOR UPDATE
        assert read_checkpoint(apply_conn, "r", for_update=True) == 100
        assert record_slot_lsn(conn, "r", 200, wait=False) is False
        assert read_slot_lsn(conn, "r") == 150
        apply_conn.rollback()
    assert record_slot_lsn(conn, "r", 200, wait=False) is True
    assert record_slot_lsn(conn, "r", 180, wait=False) is True  # never moves back
    assert read_slot_lsn(conn, "r") == 200


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_hostile_names_are_quoted(conn: psycopg.Connection, mode: str) -> None:
    conn.execute("CREATE TABLE canary (x int)")
    conn.execute("INSERT INTO canary VALUES (42)")
    nasty = 'We"ird; DROP TABLE canary; --'
    cols = (ColumnInfo('Key "K"', "integer", False, 1), ColumnInfo("Val; x", "text", True, 2))
    spec = TargetSpec('Sch "1"; x', nasty, cols, ('Key "K"',), mode, "Start; s", 'End "e"', "Cur x")
    ensure_target(conn, spec)
    frame = changes(
        [
            ("I", 10, ts(1), (1, "a")),
            ("U", 20, ts(2), (1, "b"), ["Val; x"]),
            ("I", 20, ts(2), (2, "c")),
            ("D", 30, ts(3), (2, None)),
        ],
        columns=('Key "K"', "Val; x"),
    )
    apply_batch(conn, 'task "x"', [TableApply(spec, frame, [])], 30, error_handling=STOP)
    got = conn.execute(
        sql.SQL("SELECT {}, {} FROM {}").format(
            sql.Identifier('Key "K"'), sql.Identifier("Val; x"), spec.ident
        )
    ).fetchall()
    assert (1, "b") in got or (1, "a") in got
    if mode == "upsert":
        assert got == [(1, "a")]  # unchanged value kept
    else:
        assert sorted(got) == [(1, "a"), (1, "a"), (2, "c")]
    assert conn.execute("SELECT x FROM canary").fetchall() == [(42,)]
    assert read_checkpoint(conn, 'task "x"') == 30


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_fifty_thousand_rows(conn: psycopg.Connection, mode: str) -> None:
    spec = make_target(conn, mode)
    n = 50_000
    frame = _big_frame(n)
    r = apply_batch(conn, "big", [TableApply(spec, frame)], 500, error_handling=STOP)
    c = r.tables[("dw", "items")]
    assert (c.inserted if mode == "upsert" else c.opened) == n
    row = conn.execute(
        sql.SQL("SELECT count(*), sum(qty), min(name) FROM {}").format(spec.ident)
    ).fetchone()
    assert row == (n, 3 * n * (n - 1) // 2, "name\twith\\escapes\n")
    # Update every row in a second batch: one statement per kind, not one per row.
    upd = frame.with_columns(
        pl.lit("U").alias(OP), pl.lit(600, pl.Int64).alias(LSN), pl.lit(ts(2)).alias(TS)
    )
    r2 = apply_batch(conn, "big", [TableApply(spec, upd)], 600, error_handling=STOP)
    c2 = r2.tables[("dw", "items")]
    assert (c2.updated if mode == "upsert" else c2.closed) == n


def _big_frame(n: int) -> pl.DataFrame:
    ids = pl.int_range(0, n, eager=True)
    return pl.DataFrame(
        {
            "id": ids.cast(pl.String),
            "name": pl.Series(["name\twith\\escapes\n"] * n, dtype=pl.String),
            "qty": (ids * 3).cast(pl.String),
            "doc": pl.Series([None] * n, dtype=pl.String),
            OP: pl.Series(["I"] * n, dtype=pl.String),
            LSN: pl.Series([500] * n, dtype=pl.Int64),
            TS: pl.Series([ts(1)] * n, dtype=pl.Datetime("us", "UTC")),
            SEQ: ids.cast(pl.Int64),
            UNCHANGED: pl.Series([None] * n, dtype=pl.List(pl.String)),
        }
    )


def test_checkpoint_functions(conn: psycopg.Connection) -> None:
    assert read_checkpoint(conn, "x") is None  # no state tables yet
    write_checkpoint(conn, "x", 5)
    write_checkpoint(conn, "x", 9)
    assert read_checkpoint(conn, "x") == 9
    reset_checkpoint(conn, "x")
    assert read_checkpoint(conn, "x") is None


def test_rows_past_the_end_lsn_are_refused(conn: psycopg.Connection) -> None:
    spec = make_target(conn, "upsert")
    frame = changes([("I", 50, ts(1), (1, "a", 1, "x"))])
    with pytest.raises(TerminalError, match="end LSN"):
        apply_batch(conn, "t", [TableApply(spec, frame)], 40, error_handling=STOP)
    assert upsert_rows(conn, spec) == [] and read_checkpoint(conn, "t") is None


def test_needs_idle_connection(target_uri: str) -> None:
    with connect(target_uri) as c:
        c.execute("SELECT 1")  # opens an implicit transaction
        with pytest.raises(TerminalError):
            apply_batch(c, "t", [], 1, error_handling=STOP)
