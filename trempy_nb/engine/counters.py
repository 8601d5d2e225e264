"""Live counters of a run (per table and operation), read by dashboards and `Runner.stats()`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import polars as pl


@dataclass
class Counters:
    """Live counters a dashboard reads (per table and operation)."""

    read: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    applied: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    filtered: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    changes: int = 0
    last_lsn: int = 0
    lag_bytes: int = 0
    lag_seconds: float = 0.0
    wal_status: str = ""
    retained_bytes: int = 0
    full_load_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    full_load_total: dict[str, int] = field(default_factory=dict)
    history: list[tuple[float, int, float]] = field(default_factory=list)  # (time, changes, lag s)

    def frame(self) -> pl.DataFrame:
        keys = sorted(set(self.read) | set(self.applied) | set(self.failed) | set(self.filtered))
        return pl.DataFrame(
            {
                "table": [k[0] for k in keys],
                "operation": [k[1] for k in keys],
                "read": [self.read.get(k, 0) for k in keys],
                "applied": [self.applied.get(k, 0) for k in keys],
                "filtered": [self.filtered.get(k, 0) for k in keys],
                "failed": [self.failed.get(k, 0) for k in keys],
            },
            schema={"table": pl.String, "operation": pl.String, "read": pl.Int64,
                    "applied": pl.Int64, "filtered": pl.Int64, "failed": pl.Int64},
        )
