"""Pure tests of collapse.py against hand-computed expectations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl

from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED
from trempy_nb.writer.collapse import (
    Rows,
    Truncate,
    collapse_scd2,
    collapse_upsert,
    forward_fill_unchanged,
    normalize_truncates,
    plan_table,
)
from trempy_nb.writer.sql import S_END, S_FIRST, S_OP, S_TS

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
KEY = ["id"]
COLS = ["id", "v", "doc"]


def ts(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def frame(rows: list[tuple]) -> pl.DataFrame:
    """(op, lsn, ts_n, id, v, doc[, unchanged]); SEQ = 10 x position."""
    cols: dict[str, list[Any]] = {c: [] for c in [*COLS, OP, LSN, TS, SEQ, UNCHANGED]}
    for i, r in enumerate(rows):
        op, lsn, n, id_, v, doc = r[:6]
        cols["id"].append(id_)
        cols["v"].append(v)
        cols["doc"].append(doc)
        cols[OP].append(op)
        cols[LSN].append(lsn)
        cols[TS].append(ts(n))
        cols[SEQ].append(i * 10)
        cols[UNCHANGED].append(r[6] if len(r) > 6 else None)
    return pl.DataFrame(cols, schema={c: pl.String() for c in COLS} | META_SCHEMA)


def only_rows(plan_steps: list) -> pl.DataFrame:
    rows = [s for s in plan_steps if isinstance(s, Rows)]
    assert len(rows) == 1
    return rows[0].frame


def test_upsert_last_update_of_a_key_wins() -> None:
    df = frame(
        [
            ("U", 1, 1, "1", "a", "x"),
            ("U", 1, 1, "1", "b", "x"),
            ("U", 2, 2, "2", "z", "x"),
            ("U", 3, 3, "1", "c", "x"),
        ]
    )
    out = collapse_upsert(df, KEY)
    assert out.select("id", "v").rows() == [("2", "z"), ("1", "c")]


def test_upsert_insert_then_delete_leaves_a_delete() -> None:
    df = frame([("I", 1, 1, "1", "a", "x"), ("D", 1, 1, "1", None, None)])
    plan = plan_table(df, KEY, COLS, scd2=False)
    out = only_rows(plan.steps)
    assert out.select("id", S_OP).rows() == [("1", "D")]
    assert plan.merged == 1


def test_pk_change_keeps_delete_of_old_and_insert_of_new() -> None:
    df = frame([("D", 1, 1, "1", None, None), ("I", 1, 1, "10", "a", "x")])
    for scd2 in (False, True):
        out = only_rows(plan_table(df, KEY, COLS, scd2=scd2).steps)
        assert out.select("id", S_OP).rows() == [("1", "D"), ("10", "I")]


def test_scd2_one_event_per_key_and_transaction() -> None:
    df = frame(
        [
            ("I", 1, 1, "1", "a", "x"),
            ("U", 1, 1, "1", "b", "x"),  # same txn as above: one event ("b")
            ("U", 2, 2, "1", "c", "x"),
            ("I", 2, 2, "2", "p", "x"),
            ("D", 3, 3, "1", None, None),
        ]
    )
    out = collapse_scd2(df, KEY)
    assert out.select("id", "v", OP, S_END, S_FIRST).rows() == [
        ("1", "b", "U", ts(2), True),
        ("1", "c", "U", ts(3), False),
        ("2", "p", "I", None, True),
        ("1", None, "D", None, False),
    ]


def test_scd2_insert_then_delete_in_one_transaction_is_a_delete_event() -> None:
    df = frame([("I", 1, 1, "1", "a", "x"), ("D", 1, 1, "1", None, None)])
    out = collapse_scd2(df, KEY)
    assert out.select("id", OP, S_FIRST).rows() == [("1", "D", True)]


def test_toast_forward_fill_within_key() -> None:
    df = frame(
        [
            ("U", 1, 1, "1", "a", None, ["doc"]),  # nothing earlier: stays marked
            ("I", 1, 1, "2", "p", "BIG"),
            ("U", 2, 2, "2", "q", None, ["doc"]),  # from row 2
            ("U", 3, 3, "1", "b", None, ["doc"]),  # earlier row is itself unknown: marked
            ("U", 4, 4, "2", "r", None, ["doc"]),  # chain: still BIG
        ]
    )
    out, markers = forward_fill_unchanged(df, KEY, COLS)
    assert markers == [("doc", "_trempy_u0")]
    assert UNCHANGED not in out.columns
    assert out.select("id", "doc", "_trempy_u0").rows() == [
        ("1", None, True),
        ("2", "BIG", False),
        ("2", "BIG", False),
        ("1", None, True),
        ("2", "BIG", False),
    ]


def test_toast_fill_skips_real_deletes_and_drops_unused_markers() -> None:
    df = frame(
        [
            ("I", 1, 1, "1", "a", "OLD"),
            ("D", 2, 2, "1", None, None),
            ("I", 3, 3, "1", "a", "NEW"),
            ("U", 4, 4, "1", "b", None, ["doc"]),
        ]
    )
    out, markers = forward_fill_unchanged(df, KEY, COLS)
    assert out.get_column("doc").to_list() == ["OLD", None, "NEW", "NEW"]
    assert markers == []  # everything filled in the batch: no marker column to stage
    assert "_trempy_u0" not in out.columns


def test_upsert_plan_keeps_marker_for_target_fill() -> None:
    df = frame([("U", 1, 1, "1", "a", None, ["doc"])])
    plan = plan_table(df, KEY, COLS, scd2=False)
    step = plan.steps[0]
    assert isinstance(step, Rows)
    assert step.markers == [("doc", "_trempy_u0")]
    assert step.frame.get_column("_trempy_u0").to_list() == [True]


def test_checkpoint_drops_applied_rows_and_truncates() -> None:
    df = frame([("I", 5, 1, "1", "a", "x"), ("U", 9, 2, "1", "b", "x")])
    plan = plan_table(df, KEY, COLS, scd2=False, truncated_at=[(5, 5)], checkpoint=5)
    assert plan.replayed == 1
    assert len(plan.steps) == 1
    assert only_rows(plan.steps).select("v").item() == "b"


def test_upsert_truncate_drops_earlier_rows() -> None:
    df = frame([("I", 1, 1, "1", "a", "x"), ("I", 3, 3, "2", "b", "x")])
    plan = plan_table(df, KEY, COLS, scd2=False, truncated_at=[(5, 2, ts(2))])
    assert plan.steps[0] == Truncate(5, 2, ts(2))
    assert plan.steps[1].frame.get_column("id").to_list() == ["2"]  # type: ignore[union-attr]


def test_scd2_truncate_splits_segments_in_order() -> None:
    df = frame(
        [
            ("I", 1, 1, "1", "a", "x"),  # seq 0
            ("U", 2, 2, "1", "b", "x"),  # seq 10, same txn as the truncate: dropped
            ("I", 3, 3, "1", "c", "x"),  # seq 20, after
        ]
    )
    plan = plan_table(df, KEY, COLS, scd2=True, truncated_at=[(15, 2)])
    kinds = [type(s).__name__ for s in plan.steps]
    assert kinds == ["Rows", "Truncate", "Rows"]
    first, trunc, last = plan.steps
    assert trunc == Truncate(15, 2, ts(2))  # commit time taken from the same transaction
    assert first.frame.select("v", S_END, S_FIRST).rows() == [("a", None, True)]  # type: ignore[union-attr]
    assert last.frame.select("v", S_FIRST).rows() == [("c", True)]  # type: ignore[union-attr]


def test_staged_timestamps_are_timestamptz_text() -> None:
    df = frame([("I", 1, 1, "1", "a", "x"), ("U", 2, 2, "1", "b", "x")])
    out = only_rows(plan_table(df, KEY, COLS, scd2=True).steps)
    assert out.get_column(S_TS).to_list() == [
        "2024-01-01 00:00:01.000000+00:00",
        "2024-01-01 00:00:02.000000+00:00",
    ]
    assert out.get_column(S_END).to_list() == ["2024-01-01 00:00:02.000000+00:00", None]


def test_normalize_truncates_sorts_and_keeps_given_ts() -> None:
    got = normalize_truncates([(9, 3, ts(7)), (2, 1)])
    assert got == [Truncate(2, 1, None), Truncate(9, 3, ts(7))]
