"""The pure half of a diff: how many buckets, which differ, how they are grouped, what is reported.

Memory is bounded by the chunk size: a table of N rows is cut into about N / chunk_rows buckets,
each side returns one fingerprint per bucket (a few numbers), and the buckets whose fingerprints
differ are narrowed together: their rows are staged on the target server, not held in Python.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

KINDS = ("missing", "extra", "different")

#: one bucket's fingerprint: (row count, sum of the rows' 60-bit hashes)
Fingerprint = tuple[int, int]


def bucket_count(rows: int, chunk_rows: int) -> int:
    """Buckets for a table of about `rows` rows (at least one)."""
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, not {chunk_rows}")
    return max(1, math.ceil(max(rows, 0) / chunk_rows))


def differing_buckets(source: Mapping[int, Fingerprint], target: Mapping[int, Fingerprint]) -> list[int]:
    """Buckets whose fingerprints differ (a bucket absent on one side differs unless empty)."""
    out = [b for b in set(source) | set(target) if source.get(b, (0, 0)) != target.get(b, (0, 0))]
    return sorted(out)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class DiffRow:
    """One differing key: `missing` on the target, `extra` on it, or `different` in `columns`."""

    table: str  # the source table, schema.table
    target: str  # the target table, schema.table
    key: dict[str, Any]  # typed values, by target key column
    key_text: tuple[str, ...]  # the same, as the text of the target's types (to select it again)
    kind: str
    columns: tuple[str, ...] = ()


def diff_row(table: str, target: str, key_names: Sequence[str], compared: Sequence[str],
             row: Sequence[Any]) -> DiffRow:
    """A DiffRow from one row of sqlgen.compare_sql: kind, flags, typed key values, key texts."""
    n = len(key_names)
    kind, flags = row[0], row[1] or []
    typed, texts = row[2:2 + n], row[2 + n:2 + 2 * n]
    columns = tuple(c for c, f in zip(compared, flags, strict=False) if f) if kind == "different" else ()
    return DiffRow(table, target, dict(zip(key_names, typed, strict=True)), tuple(texts), kind, columns)


@dataclass
class TableDiff:
    """One table's outcome: counts on both sides, the differing keys, and what repair did."""

    table: str
    target: str
    source_rows: int = 0
    target_rows: int = 0
    route: str = "hash"  # 'hash' (SQL fingerprints, then narrowing) or 'plan' (every row through the plan)
    buckets: int = 0
    narrowed: int = 0  # buckets narrowed down to keys
    rounds: int = 1
    streaming: bool = False  # the task was streaming: the target was read once it had caught up
    rows: list[DiffRow] = field(default_factory=list)
    repaired: int = 0
    not_compared: tuple[str, ...] = ()  # datetime_now columns and what derives from them

    @property
    def equal(self) -> bool:
        return not self.rows

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for r in self.rows if r.kind == k) for k in KINDS}

    def summary(self) -> str:
        c = self.counts()
        head = (f"{self.table} -> {self.target}: source {self.source_rows:,} rows, target {self.target_rows:,};")
        if self.equal:
            text = f"{head} equal"
        else:
            text = (f"{head} {len(self.rows):,} difference(s): {c['missing']:,} missing,"
                    f" {c['extra']:,} extra, {c['different']:,} different")
        if self.repaired:
            text += f"; repaired {self.repaired:,}"
        if self.not_compared:
            text += f" (not compared: {', '.join(self.not_compared)})"
        return text


SCHEMA = {"table": pl.String, "target": pl.String, "key": pl.String, "kind": pl.String,
          "columns": pl.List(pl.String)}


def _plain_key(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def key_json(key: Mapping[str, Any]) -> str:
    """A key as a JSON object: numbers and booleans as such, other values as their text."""
    return json.dumps({k: _plain_key(v) for k, v in key.items()}, ensure_ascii=False)


def frame(tables: Sequence[TableDiff]) -> pl.DataFrame:
    """One row per differing key of every table: table, target, key (a JSON object), kind, columns."""
    rows = [
        {"table": r.table, "target": r.target, "key": key_json(r.key), "kind": r.kind, "columns": list(r.columns)}
        for t in tables for r in t.rows
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def records(tables: Sequence[TableDiff]) -> list[dict[str, Any]]:
    """What `--json` prints: one object per differing key, the key as an object."""
    return [
        {"table": r.table, "target": r.target, "key": json.loads(key_json(r.key)), "kind": r.kind,
         "columns": list(r.columns)}
        for t in tables for r in t.rows
    ]
