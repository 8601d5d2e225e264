"""A stopped task's pending changes, transformed, without consuming them (`Task.preview_changes`)."""

from __future__ import annotations

import polars as pl

from trempy_nb import changes as ch
from trempy_nb.capture.reader import ChangeReader
from trempy_nb.capture.slot import publication_name, slot_name
from trempy_nb.engine.result import RunnableTask
from trempy_nb.errors import TransientError, TrempyError


def frame_of_pending(task: RunnableTask, limit: int = 50) -> pl.DataFrame:
    """The next changes of a task's slot, transformed, without consuming them."""
    plans = task.plans
    reader = ChangeReader(task.source_uri, slot_name(task.name), publication_name(task.name), max_changes=limit)
    try:
        batch = reader.peek_changes(limit)
    except TransientError as exc:
        if "busy" not in str(exc):
            raise
        raise TrempyError(
            f"task {task.name} is running: its runner streams from the slot, so pending changes"
            " are being applied (see the runner's stats); preview_changes looks at a stopped task"
        ) from None
    finally:
        reader.close()
    frames = []
    if batch is None:
        return pl.DataFrame()
    for tc in batch.tables:
        plan = plans.get(tc.key)
        if plan is None or not tc.frame.height:
            continue
        out = plan.apply_changes(tc.frame)
        out = out.with_columns(pl.lit(f"{plan.target_schema}.{plan.target_table}").alias("target"))
        data_cols = [c for c in out.columns if c not in ch.META_SCHEMA and c != "target"]
        frames.append(out.select(["target", ch.OP, ch.LSN, ch.TS, *data_cols]).rename(
            {ch.OP: "op", ch.LSN: "lsn", ch.TS: "commit_time"}))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed").head(limit)
