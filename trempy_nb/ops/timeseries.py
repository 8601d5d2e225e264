"""Lag and throughput over time, from the stored batch summaries (no metrics server needed).

Every applied CDC batch leaves one INFO record whose message starts with `BATCH_MESSAGE` and
whose fields hold `changes`, `ms`, `lag_s` (and the LSN range, rows per operation). The
dashboard's plots and the fleet view's sparklines read a bounded page of those records
(`limit`, `since`) in one store query for every task at once.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl

from trempy_nb.ops import BATCH_MESSAGE
from trempy_nb.ops.slots import parse_duration

__all__ = ["BATCH_MESSAGE", "batch_series", "bucket_seconds", "per_minute"]

_SCHEMA: dict[str, Any] = {"ts": pl.Datetime("us", "UTC"), "task": pl.String, "changes": pl.Int64, "lag_s": pl.Float64,
           "lag_bytes": pl.Int64, "ms": pl.Float64}


def batch_series(store: Any, task: str | None = None, *, since: timedelta = timedelta(hours=1),
                 limit: int = 5000, now: datetime | None = None) -> pl.DataFrame:
    """One row per stored batch summary (ts, task, changes, lag_s, lag_bytes, ms), oldest first."""
    start = (now or datetime.now(timezone.utc)) - since
    frame = store.search_logs(task, grep=BATCH_MESSAGE, since=start, limit=limit)
    rows = []
    for r in frame.iter_rows(named=True):
        try:
            f = json.loads(r["fields"]) if r.get("fields") else {}
        except json.JSONDecodeError:
            continue
        if not isinstance(f, dict) or "changes" not in f:
            continue
        rows.append((r["ts"], r["task"], int(f.get("changes") or 0), _float(f.get("lag_s")),
                     _int(f.get("lag_bytes")), _float(f.get("ms"))))
    return pl.DataFrame(rows, schema=_SCHEMA, orient="row")


def bucket_seconds(every: str) -> float:
    return parse_duration(every).total_seconds()


def per_minute(series: pl.DataFrame, every: str = "1m") -> pl.DataFrame:
    """Changes per second and the latest lag per `every` bucket, by task (the plots' points)."""
    if series.height == 0:
        return pl.DataFrame(schema={"task": pl.String, "ts": pl.Datetime("us", "UTC"),
                                    "changes_per_s": pl.Float64, "lag_s": pl.Float64})
    width = parse_duration(every).total_seconds()
    return (series.sort("ts").group_by_dynamic("ts", every=every, group_by="task")
            .agg((pl.col("changes").sum() / width).alias("changes_per_s"), pl.col("lag_s").last())
            .sort("task", "ts"))


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) else None
