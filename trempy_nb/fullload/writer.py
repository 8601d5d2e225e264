"""The table writer of a full load: one batch at a time into the target, through its copy route.

Into an empty target a batch is COPYed straight in; into one that already has
rows it goes through a staging table and `writer/sql.merge_sql` (upsert, or
SCD2 versions). Each batch is written in a savepoint; one the target refuses
goes through the one error policy (writer/errorpolicy.py): retried when the
error is transient, split to isolate the bad rows when their values are at
fault (each then stops the task or is recorded, per error_handling; full-load
rows are inserts), stopped at once otherwise.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.fullload.result import RowErrorHook, TableLoadResult
from trempy_nb.fullload.routes import CopyRoute
from trempy_nb.redact import mask
from trempy_nb.settings import TaskSettings
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.sql import merge_sql

STAGE = sql.Identifier("trempy_stage")


class TableWriter:
    """Writes one batch into the target inside a savepoint; isolates bad rows on failure."""

    def __init__(self, cur: psycopg.Cursor, spec: TargetSpec, direct: bool, settings: TaskSettings,
                 on_row_error: RowErrorHook | None, result: TableLoadResult, route: CopyRoute,
                 load_ts: Any = None) -> None:
        self.cur, self.spec, self.direct, self.route = cur, spec, direct, route
        self.eh = settings.error_handling
        self.on_row_error, self.result = on_row_error, result
        self.mode = settings.task.cdc_settings.mode
        self.table = f"{spec.schema}.{spec.table}"
        self.at = sql.Literal(load_ts) if load_ts is not None else None
        if not direct:
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS trempy_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(spec.ident))

    def _write(self, df: pl.DataFrame, payload: Any) -> None:
        if self.direct:
            self.route.copy(self.cur, self.spec.ident, df, payload)
            return
        self.cur.execute(sql.SQL("TRUNCATE {}").format(STAGE))
        self.route.copy(self.cur, STAGE, df, payload)
        for stmt in merge_sql(self.spec, self.at):
            self.cur.execute(stmt)

    def write(self, df: pl.DataFrame, payload: Any = None) -> int:
        """Write `df` (`payload`: its route.encode, or None); returns rows written. Bad rows are
        split out per error_handling."""
        if df.height == 0:
            return 0
        written = 0
        first = (df, payload)  # the encoded payload serves the whole batch only

        def run(part: pl.DataFrame) -> BaseException | None:
            nonlocal written
            data = first[1] if part is first[0] else None

            def once() -> None:
                with self.cur.connection.transaction():
                    self._write(part, data)

            _, exc = policy.attempt(once, self.eh.max_retries, policy.describe("insert", self.table),
                                    retryable=lambda e: policy.is_transient(e) and not self.cur.connection.broken)
            if exc is None:
                written += part.height
            return exc

        def split(part: pl.DataFrame) -> list[pl.DataFrame] | None:
            if part.height <= 1:
                return None
            mid = part.height // 2
            return [part.slice(0, mid), part.slice(mid)]

        policy.isolate(df, run, split, self._bad_row)
        return written

    def _bad_row(self, df: pl.DataFrame, exc: BaseException) -> None:
        error = mask(policy.error_text(exc))
        payload = self.route.bad_row(df)
        key = {k: payload.get(k) for k in self.spec.key}
        decision = policy.decide(self.eh, ["insert"], self.mode)  # full-load rows are inserts
        if decision.stop:
            raise policy.row_error(self.table, decision, error, key)
        self.result.rows_failed += 1
        self.result.errors.append(error)
        if self.on_row_error:
            self.on_row_error(policy.BadRow(self.spec.schema, self.spec.table, "insert", key, payload, error))
