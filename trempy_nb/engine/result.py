"""What a run returns (`RunResult`), and what the engine needs of a task (`RunnableTask`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import polars as pl
import psycopg

from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.settings import TaskSettings

if TYPE_CHECKING:
    from trempy_nb.fullload import TableLoadResult


class RunnableTask(Protocol):
    """A task as the engine sees it (`trempy_nb.task.Task` is one); the engine never imports `task`."""

    settings: TaskSettings

    @property
    def name(self) -> str: ...

    @property
    def source_uri(self) -> str: ...

    @property
    def target_uri(self) -> str: ...

    @property
    def plans(self) -> dict[tuple[str, str], TablePlan]: ...

    def validate(self, conn: psycopg.Connection | None = None) -> object:
        """Check against the live source (on `conn` when given); raises ValidationFailed."""
        ...


@dataclass
class RunResult:
    """What a run did, per table; `stats` is the same as a Polars frame."""

    task: str
    run_id: str | None
    status: str
    tables: list[TableLoadResult] = field(default_factory=list)
    seconds: float = 0.0
    changes_applied: int = 0

    @property
    def stats(self) -> pl.DataFrame:
        rows = [
            {
                "table": f"{r.schema}.{r.table}",
                "target": r.target,
                "path": r.path,
                "rows_read": r.rows_read,
                "rows_written": r.rows_written,
                "rows_filtered": r.rows_filtered,
                "rows_failed": r.rows_failed,
                "seconds": round(r.seconds, 3),
            }
            for r in self.tables
        ]
        return pl.DataFrame(rows) if rows else pl.DataFrame()

    def __str__(self) -> str:
        lines = [f"task {self.task}: {self.status} in {self.seconds:.1f}s"]
        for r in self.tables:
            rate = r.rows_read / r.seconds if r.seconds else 0
            lines.append(
                f"  {r.schema}.{r.table} -> {r.target}: read {r.rows_read:,}, written {r.rows_written:,},"
                f" filtered {r.rows_filtered:,}, failed {r.rows_failed:,} ({rate:,.0f} rows/s, {r.path})"
            )
        if self.changes_applied:
            lines.append(f"  changes applied: {self.changes_applied:,}")
        return "\n".join(lines)
