"""The applier's side of per-table lifecycle, without a database: a held table's changes are held
(with their truncates), a loaded table's changes at or before its snapshot LSN are dropped, the others
pass untouched; held parts group by source shape; a held part keeps every column type."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from trempy_nb import changes as ch
from trempy_nb.engine import lifecycle as lc

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _frame(ids: list[int], lsns: list[int], extra: dict[str, list[Any]] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [str(i) for i in ids], **(extra or {}), ch.OP: ["U"] * len(ids), ch.LSN: lsns,
         ch.TS: [T0] * len(ids), ch.SEQ: list(range(len(ids))), ch.UNCHANGED: [None] * len(ids)},
        schema_overrides={ch.UNCHANGED: pl.List(pl.String), ch.TS: pl.Datetime("us", "UTC")})


def _owner() -> lc.TableLifecycle:
    return lc.TableLifecycle("t", None, {}, "src", "tgt", store=None, run_id=None, dialect=None,  # type: ignore[arg-type]
                             fence=None, plan_for=lambda tc, conn: None, on_settings=lambda s: None)  # type: ignore[arg-type, return-value]


def test_split_holds_skips_and_passes() -> None:
    owner = _owner()
    owner.held = {("public", "p"): "paused"}
    owner.skip = {("public", "b"): 20}
    batch = ch.ChangeBatch(10, 30, [
        ch.TableChanges("public", "a", _frame([1, 2], [15, 30])),
        ch.TableChanges("public", "b", _frame([1, 2, 3], [15, 20, 30])),
        ch.TableChanges("public", "c", _frame([9], [12])),
        ch.TableChanges("public", "p", _frame([5], [25]), [(1, 25, T0)]),  # type: ignore[list-item]
    ])
    owner.skip[("public", "c")] = 12  # every change of c is in its load: dropped whole
    apply, held = owner.split(batch)
    assert [t.key for t in apply] == [("public", "a"), ("public", "b")]
    assert apply[0] is batch.tables[0]  # untouched
    assert apply[1].frame["id"].to_list() == ["3"]  # only what committed after its snapshot
    assert [h.key for h in held] == [("public", "p")]
    frame, truncs = lc.decode_part(held[0].frame, held[0].truncated_at)
    assert frame.equals(batch.tables[3].frame) and truncs == [(1, 25, T0)]


def test_groups_follow_the_source_shape() -> None:
    one = lc.encode_part(ch.TableChanges("public", "p", _frame([1], [10])))
    two = lc.encode_part(ch.TableChanges("public", "p", _frame([2], [11])))
    wider = lc.encode_part(ch.TableChanges("public", "p", _frame([3], [12], {"v": ["x"]})))
    parts = [(1, 10, one.frame, None), (2, 11, two.frame, None), (3, 12, wider.frame, None), (4, 13, one.frame, None)]
    assert [[p[0] for p in g] for g in lc._groups(parts)] == [[1, 2], [3], [4]]


def test_parse_table() -> None:
    assert lc.parse_table("hr.emp") == ("hr", "emp") and lc.parse_table("emp") == ("public", "emp")
