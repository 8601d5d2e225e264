"""What a diff asks of its target database: the one seam between a table's diff and the target's dialect.

`run._PgTarget` (PostgreSQL) and `mariadb.MariaTarget` (MariaDB/MySQL) implement it; the table's
diff (`run._Table`) reads the source, drives the rounds and repair, and asks the target only this.
Pure: a protocol, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import polars as pl
import psycopg

from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.reconcile.chunks import Fingerprint
from trempy_nb.reconcile.sqlgen import DiffShape, Selection
from trempy_nb.settings import TaskSettings


class TargetSide(Protocol):
    """One table's target connection, in the target's own SQL."""

    def shape(self, settings: TaskSettings, plan: TablePlan, src: psycopg.Connection) -> DiffShape:
        """What to compare (a clear error when the target table cannot be compared)."""
        ...

    def position(self, task: str, local: bool) -> int | None:
        """The task's applied position on the target now (None: no checkpoint yet)."""
        ...

    def begin(self) -> None:
        """Open the read transaction of a round (one consistent view of the target)."""
        ...

    def fingerprints(self, shape: DiffShape, buckets: int) -> dict[int, Fingerprint]:
        """Per bucket of the target rows (current versions): (row count, sum of row hashes)."""
        ...

    def stage(self, shape: DiffShape, frames: Iterable[pl.DataFrame]) -> None:
        """Replace the staged rows by `frames`: source rows through the plan (PostgreSQL text)."""
        ...

    def compare(self, shape: DiffShape, sel: Selection, itersize: int) -> Iterator[Sequence[Any]]:
        """One row per differing key: kind, flags per compared column, typed keys, key texts."""
        ...

    def counts(self, shape: DiffShape) -> tuple[int, int]:
        """(staged rows, target rows held now) for the plan route."""
        ...

    def begin_repair(self, task: str) -> None:
        """Open a repair transaction holding the task's checkpoint row (its applier waits)."""
        ...

    def fix(self, shape: DiffShape, keys: Sequence[tuple[str, ...]]) -> None:
        """Make the keys' target rows the staged ones (upsert: replace; SCD2: close and open)."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...
