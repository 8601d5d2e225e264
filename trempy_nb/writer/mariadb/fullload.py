"""A full-load table writer for MariaDB: batches of PostgreSQL-text frames in, one transaction per table.

`TableLoad` owns the table's transaction: `begin` creates the table if needed
(DDL commits implicitly in MariaDB, so it comes first), `write` loads each batch
inside a savepoint (LOAD DATA straight into an empty target; into a staging
table merged by key otherwise), `finish` records the table as loaded in the
state table and commits. A refused batch goes through the one error policy:
retried when transient, split down to single rows when their values are at
fault (each then stops the load or is recorded, per error_handling; full-load
rows are inserts), stopped at once otherwise.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from trempy_nb.crash import pause_point
from trempy_nb.settings import ErrorHandling
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.fence import Fence
from trempy_nb.writer.mariadb import errors as merr
from trempy_nb.writer.mariadb.bulk import csv_bytes, load_frame, load_stream
from trempy_nb.writer.mariadb.capabilities import server_info
from trempy_nb.writer.mariadb.ddl import LOAD_STATE, ensure_target
from trempy_nb.writer.mariadb.fencing import check_fence
from trempy_nb.writer.mariadb.names import column_list, execute, key_match, qualified, quote
from trempy_nb.writer.mariadb.types import MariaType, to_load_text

RowErrorHook = Callable[[policy.BadRow], None]
_RN = "_trempy_row"


@dataclass
class LoadCounts:
    rows_written: int = 0
    rows_failed: int = 0
    errors: list[str] = field(default_factory=list)


def _utc_naive(ts: Any) -> Any:
    if isinstance(ts, dt.datetime) and ts.tzinfo is not None:
        return ts.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return ts


class TableLoad:
    """One target table's full load on a MariaDB connection (autocommit off)."""

    def __init__(self, conn: Any, spec: TargetSpec, error_handling: ErrorHandling, *, task: str,
                 state_database: str, load_ts: Any = None, on_row_error: RowErrorHook | None = None) -> None:
        self.conn, self.spec, self.eh, self.task = conn, spec, error_handling, task
        self.state_database = state_database
        self.load_ts = _utc_naive(load_ts) or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.on_row_error = on_row_error
        self.counts = LoadCounts()
        self.types: dict[str, MariaType] = {}
        self.pg_types = {c.name: c.pg_type for c in spec.columns}
        self.direct = True
        self.table = qualified(spec.schema, spec.table)
        self.name = f"{spec.schema}.{spec.table}"
        self._names = itertools.count()

    def begin(self, *, create: bool = True, recreate: bool = False, truncate: bool = False) -> bool:
        """Create/recreate the table (DDL, committed), then open the table's data transaction."""
        native_uuid = server_info(self.conn).native_uuid
        created, self.types = ensure_target(self.conn, self.spec, create=create, recreate=recreate,
                                            native_uuid=native_uuid)
        self.conn.commit()
        self.conn.begin()
        if truncate and not created:
            with self.conn.cursor() as cur:
                execute(cur, f"DELETE FROM {self.table}")  # TRUNCATE would commit: DELETE stays in the transaction
        self.direct = created or truncate
        return created

    def encode(self, df: pl.DataFrame) -> tuple[pl.DataFrame, bytes]:
        """The batch as LOAD DATA reads it (may run in another thread than `write`)."""
        out = to_load_text(df.select(self.spec.data_columns), self.types, self.pg_types)
        return out, csv_bytes(out, self.spec.data_columns)

    def _extra(self) -> tuple[dict[str, str], tuple[Any, ...]]:
        if not self.spec.scd2:
            return {}, ()
        return {self.spec.start_col: "%s", self.spec.current_col: "1"}, (self.load_ts,)

    def _write(self, df: pl.DataFrame, data: bytes | None) -> None:
        extra, params = self._extra()
        cols = self.spec.data_columns
        with self.conn.cursor() as cur:
            if self.direct:
                load_frame(cur, self.table, cols, df, self.types, extra=extra, extra_params=params, data=data)
                return
            stage = quote(f"_trempy_load_{next(self._names)}")
            execute(cur, f"CREATE TEMPORARY TABLE {stage} ENGINE=InnoDB AS SELECT {column_list(cols, 't')}"
                    f" FROM {self.table} AS t WHERE FALSE")
            try:
                load_frame(cur, stage, cols, df, self.types, data=data)
                self._merge(cur, stage)
            finally:
                execute(cur, f"DROP TEMPORARY TABLE IF EXISTS {stage}")

    def _merge(self, cur: Any, stage: str) -> None:
        """Staged rows into a target that already has rows: upsert by key, or SCD2 (close the
        current versions the rows change, open one for every key left without a current one)."""
        spec, cols, keys = self.spec, self.spec.data_columns, key_match(self.spec.key)
        if not spec.scd2:
            non_key = [c for c in cols if c not in spec.key] or [spec.key[0]]
            action = ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in non_key)
            execute(cur, f"INSERT INTO {self.table} ({column_list(cols)}) SELECT {column_list(cols, 's')}"
                    f" FROM {stage} AS s ON DUPLICATE KEY UPDATE {action}")
            return
        cur_col, start, end = quote(spec.current_col), quote(spec.start_col), quote(spec.end_col)
        same = " AND ".join(f"t.{quote(c)} <=> s.{quote(c)}" for c in cols)
        execute(cur, f"UPDATE {self.table} AS t JOIN {stage} AS s ON {keys} SET t.{end} = %s, t.{cur_col} = 0"
                f" WHERE t.{cur_col} = 1 AND NOT ({same})", (self.load_ts,))
        execute(cur, f"INSERT INTO {self.table} ({column_list(cols)}, {start}, {end}, {cur_col})"
                f" SELECT {column_list(cols, 's')}, %s, NULL, 1 FROM {stage} AS s WHERE NOT EXISTS"
                f" (SELECT 1 FROM {self.table} AS t WHERE {keys} AND t.{cur_col} = 1)", (self.load_ts,))

    def write_stream(self, chunks: Iterable[bytes]) -> int:
        """The whole table at once from CSV chunks as `bulk.csv_bytes` writes them (a source's COPY
        ... FORMAT csv), into an empty target, in a savepoint: rows written. Any error rolls the
        savepoint back and is raised (the caller then loads batch by batch, where the error policy
        isolates bad rows)."""
        extra, params = self._extra()
        name = f"trempy_sp_{next(self._names)}"
        with self.conn.cursor() as cur:
            execute(cur, f"SAVEPOINT {name}")
            try:
                n = load_stream(cur, self.table, self.spec.data_columns, chunks, self.types, extra=extra,
                                extra_params=params)
            except BaseException:
                try:
                    execute(cur, f"ROLLBACK TO SAVEPOINT {name}")
                except Exception:
                    pass  # the transaction is gone: the original error tells
                raise
            execute(cur, f"RELEASE SAVEPOINT {name}")
        self.counts.rows_written += n
        return n

    def write(self, df: pl.DataFrame, encoded: tuple[pl.DataFrame, bytes] | None = None) -> int:
        """Write one batch (PostgreSQL text of the target columns); returns rows written."""
        if df.height == 0:
            return 0
        out, data = encoded if encoded is not None else self.encode(df)
        indexed = out.with_row_index(_RN)
        originals = df.select(self.spec.data_columns)
        written = 0

        def run(part: pl.DataFrame) -> BaseException | None:
            nonlocal written
            payload = data if part.height == indexed.height else None  # the encoded bytes serve the whole batch
            name = f"trempy_sp_{next(self._names)}"

            def once() -> None:
                with self.conn.cursor() as cur:
                    execute(cur, f"SAVEPOINT {name}")
                    try:
                        self._write(part.drop(_RN), payload)
                    except BaseException:
                        try:
                            execute(cur, f"ROLLBACK TO SAVEPOINT {name}")
                        except Exception:
                            pass  # the transaction is gone: the original error tells
                        raise
                    execute(cur, f"RELEASE SAVEPOINT {name}")

            _, exc = policy.attempt(once, self.eh.max_retries, policy.describe("insert", self.name),
                                    retryable=lambda e: merr.errno(e) == 1205, kind_of=merr.classify)
            if exc is None:
                written += part.height
            return exc

        def split(part: pl.DataFrame) -> list[pl.DataFrame] | None:
            if part.height <= 1:
                return None
            mid = part.height // 2
            return [part.slice(0, mid), part.slice(mid)]

        def bad(part: pl.DataFrame, exc: BaseException) -> None:
            self._bad_row(originals.slice(int(part.item(0, _RN)), 1), exc)

        policy.isolate(indexed, run, split, bad)
        self.counts.rows_written += written
        return written

    def _bad_row(self, df: pl.DataFrame, exc: BaseException) -> None:
        error = merr.message(exc)
        row = df.row(0, named=True)
        key = {k: row.get(k) for k in self.spec.key}
        decision = policy.decide(self.eh, ["insert"], self.spec.mode)  # type: ignore[arg-type]
        if decision.stop:
            raise policy.row_error(self.name, decision, error, key) from exc
        self.counts.rows_failed += 1
        self.counts.errors.append(error)
        if self.on_row_error:
            self.on_row_error(policy.BadRow(self.spec.schema, self.spec.table, "insert", key, row, error))

    def finish(self, *, source_schema: str, source_table: str, snapshot_lsn: int | None = None,
               fence: Fence | None = None) -> None:
        """Record the table as loaded (same transaction), check the fence there, and commit."""
        with self.conn.cursor() as cur:
            execute(cur, f"INSERT INTO {qualified(self.state_database, LOAD_STATE)} (task, schema_name, table_name,"
                    " status, `rows`, snapshot_lsn, updated_at) VALUES (%s, %s, %s, 'done', %s, %s, UTC_TIMESTAMP(6))"
                    " ON DUPLICATE KEY UPDATE status = 'done', `rows` = VALUES(`rows`),"
                    " snapshot_lsn = VALUES(snapshot_lsn), updated_at = VALUES(updated_at)",
                    (self.task, source_schema, source_table, self.counts.rows_written, snapshot_lsn))
        pause_point("full_load_before_table_commit")
        check_fence(self.conn, fence, self.task, database=self.state_database)
        self.conn.commit()

    def abort(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            pass  # the connection is gone: the server rolled back
