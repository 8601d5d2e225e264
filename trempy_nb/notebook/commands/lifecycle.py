"""Per-table lifecycle of a running task: add-table, resync, pause-table, resume-table, table-states.

Each records a request for the task's owner (a runner of this kernel, another process or a fleet
worker) and says who carries it out, or that it waits for the task's next run (docs/lifecycle.md).
"""

from __future__ import annotations

import polars as pl

from trempy_nb.notebook.commands.session import get_task
from trempy_nb.notebook.render import Note

#: the notebook waits this long for a request whose owner runs (it may return earlier, done)
WAIT_S = 60.0


def _note(out: dict[str, object]) -> Note:
    done = out.get("state") == "done"
    return Note(str(out["message"]), "ok" if done else "info")


def add_table(name: str, table: str, wait: float | None = WAIT_S) -> Note:
    """Add `schema.table` to the task (stored settings, publication), loaded in step with its stream."""
    return _note(get_task(name).add_table(table, wait=wait))


def resync(name: str, table: str, baseline: bool = False, wait: float | None = WAIT_S) -> Note:
    """Reload one table from a fresh snapshot while the others stream (SCD2: history kept unless baseline)."""
    return _note(get_task(name).resync(table, baseline=baseline, wait=wait))


def pause_table(name: str, table: str, wait: float | None = WAIT_S) -> Note:
    """Hold one table's changes on the target, in order; the others stream and the slot advances."""
    return _note(get_task(name).pause_table(table, wait=wait))


def resume_table(name: str, table: str, wait: float | None = WAIT_S) -> Note:
    """Apply a paused table's held changes in order, then stream it."""
    return _note(get_task(name).resume_table(table, wait=wait))


def table_states(name: str) -> pl.DataFrame:
    """Each table's lifecycle state (streaming, loading, resyncing, paused) and its last diff."""
    return get_task(name).table_states()
