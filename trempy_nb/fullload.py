"""Full load: one consistent snapshot of the source, streamed in batches into the target.

Each table loads in one target transaction (a crash leaves the previous
state, and a rerun redoes the table cleanly). A table with no filter and no
value transformation streams COPY binary from source to target with no
Python rows. The others go COPY binary -> Polars plan -> COPY binary: the
columns the plan reads or writes come as text and are encoded for the target,
the rest pass through as the source's bytes (pipeline/copylayout.py); a table
with a type binarycodec has no encoder for goes COPY text -> plan -> COPY text
(TREMPY_COPY_FORMAT=text forces that route). A batch the target refuses goes
through the one error policy (writer/errorpolicy.py): retried when the error is
transient, split to isolate the bad rows when their values are at fault (each
then stops the task or is recorded, per error_handling; full-load rows are
inserts), stopped at once otherwise.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.connections import mask
from trempy_nb.db import connect
from trempy_nb.errors import TrempyError
from trempy_nb.pgcopy.copyio import (
    copy_binary,
    copy_frame,
    iter_binary_frames,
    iter_frames,
    select_query,
    stream_copy,
)
from trempy_nb.pgcopy.textcodec import write_copy_text
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.settings import TaskSettings
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer import state
from trempy_nb.writer.ddl import (
    TargetSpec,
    ensure_state_tables,
    ensure_target,
    key_sql,
)
from trempy_nb.writer.sql import merge_sql

if TYPE_CHECKING:
    from trempy_nb.pipeline.copylayout import CopyLayout

# The binary codecs (numpy, pyarrow) are imported where the pipeline path needs them, not here:
# start-up speed, a pass-through load never uses them.

#: Bytes of COPY text per pipeline batch (TREMPY_CHUNK_MB): bigger batches amortise per-batch costs,
#: smaller ones bound memory (about 6 batches are in flight across the three stages).
CHUNK_BYTES = int(float(os.environ.get("TREMPY_CHUNK_MB", "4")) * 1024 * 1024)

#: 'binary' (default) or 'text': how transformed tables travel (see module docstring).
COPY_FORMAT = os.environ.get("TREMPY_COPY_FORMAT", "binary").lower()

RowErrorHook = Callable[[policy.BadRow], None]


@dataclass
class TableLoadResult:
    schema: str
    table: str
    target: str
    path: str = "pipeline"  # 'passthrough' or 'pipeline'
    copy_format: str = "binary"  # how rows reached the target: 'binary' or 'text'
    rows_read: int = 0
    rows_written: int = 0
    rows_filtered: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def target_spec(plan: TablePlan, settings: TaskSettings) -> TargetSpec:
    scd = settings.task.cdc_settings.scd2_settings
    return TargetSpec(
        schema=plan.target_schema,
        table=plan.target_table,
        columns=tuple(plan.target_columns),
        key=tuple(plan.target_primary_key),
        mode=settings.task.cdc_settings.mode,
        start_col=scd.start_date,
        end_col=scd.end_date,
        current_col=scd.current,
    )


def _begin_snapshot(conn: psycopg.Connection, snapshot: str | None) -> None:
    """Open the load's REPEATABLE READ READ ONLY transaction (psycopg's own BEGIN carries the
    options), seeing the exported `snapshot` when CDC follows."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    if snapshot:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    else:
        conn.execute("SELECT 1")


def _prefetch(frames: Iterator[pl.DataFrame], depth: int = 2) -> Iterator[pl.DataFrame]:
    """Read the next batches in a thread while this one is transformed and written."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()

    def pump() -> None:
        try:
            for f in frames:
                q.put(f)
            q.put(done)
        except BaseException as exc:  # handed to the consumer, never swallowed
            q.put(exc)

    t = threading.Thread(target=pump, daemon=True, name="trempy-snapshot-reader")
    t.start()
    while True:
        item = q.get()
        if item is done:
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    t.join()


class _Writer:
    """Writes one batch into the target inside a savepoint; isolates bad rows on failure."""

    def __init__(self, cur: psycopg.Cursor, spec: TargetSpec, direct: bool, settings: TaskSettings,
                 on_row_error: RowErrorHook | None, result: TableLoadResult, load_ts: Any = None,
                 layout: CopyLayout | None = None, types: dict[str, str] | None = None) -> None:
        self.cur, self.spec, self.direct = cur, spec, direct
        self.layout, self.types = layout, types or {}
        self.eh = settings.error_handling
        self.on_row_error, self.result = on_row_error, result
        self.mode = settings.task.cdc_settings.mode
        self.table = f"{spec.schema}.{spec.table}"
        self.columns = list(layout.columns) if layout is not None else spec.data_columns
        self.at = sql.Literal(load_ts) if load_ts is not None else None
        if not direct:
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS trempy_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(spec.ident))

    def encode(self, df: pl.DataFrame) -> Any:
        """The batch as the target takes it: COPY binary (+ columns sent as text) or COPY text."""
        if self.layout is not None:
            from trempy_nb.pgcopy.binarycodec import encode  # start-up speed (see the imports)

            return encode(df, self.layout.encoders, self.layout.tail)
        return write_copy_text(df)

    def _copy(self, target: sql.Composable, df: pl.DataFrame, payload: Any) -> None:
        if self.layout is None:
            copy_frame(self.cur, target, self.columns, df, payload)
            return
        data, as_text = payload if payload is not None else self.encode(df)
        copy_binary(self.cur, target, self.columns, data, as_text, self.types)

    def _write(self, df: pl.DataFrame, payload: Any) -> None:
        if self.direct:
            self._copy(self.spec.ident, df, payload)
            return
        stage = sql.Identifier("trempy_stage")
        self.cur.execute(sql.SQL("TRUNCATE {}").format(stage))
        self._copy(stage, df, payload)
        for stmt in merge_sql(self.spec, self.at):
            self.cur.execute(stmt)

    def write(self, df: pl.DataFrame, payload: Any = None) -> int:
        """Write `df`; returns rows written. Bad rows are split out per error_handling."""
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
        row = df.row(0, named=True)
        if self.layout is not None and self.layout.tail is not None:
            # start-up speed (see the imports)
            from trempy_nb.pgcopy.binarycodec import split_tail

            tail = row.pop(self.layout.tail.name)
            row.update(zip(self.layout.raw_columns, split_tail(tail, self.layout.tail.fields), strict=True))
            row = {c: row[c] for c in self.spec.data_columns if c in row}
        payload = {k: _readable(v, self.types.get(k, "")) for k, v in row.items()}
        key = {k: payload.get(k) for k in self.spec.key}
        decision = policy.decide(self.eh, ["insert"], self.mode)  # full-load rows are inserts
        if decision.stop:
            raise policy.row_error(self.table, decision, error, key)
        self.result.rows_failed += 1
        self.result.errors.append(error)
        if self.on_row_error:
            self.on_row_error(policy.BadRow(self.spec.schema, self.spec.table, "insert", key, payload, error))


def _readable(value: Any, pg_type: str) -> Any:
    """A value of a bad row as its error record stores it (JSON): raw bytes and Decimals as text."""
    if isinstance(value, bytes):
        from trempy_nb.pgcopy.binarycodec import describe_raw  # start-up speed (see the imports)

        return describe_raw(value, pg_type)
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def _load_through_pipeline(plan: TablePlan, scur: psycopg.Cursor, tcur: psycopg.Cursor, spec: TargetSpec,
                           direct: bool, settings: TaskSettings, on_row_error: RowErrorHook | None,
                           on_progress: Callable[[int], None] | None, result: TableLoadResult,
                           chunk_bytes: int, load_ts: Any = None, types: dict[str, str] | None = None) -> None:
    """Three overlapping stages: COPY out (thread) -> plan + encode (thread) -> COPY in (here)."""
    # start-up speed (see the imports)
    from trempy_nb.pipeline.copylayout import copy_layout, select_sql

    source_types = {c.name: c.pg_type for c in plan.source.columns}
    layout = None
    if COPY_FORMAT != "text" and types:
        layout = copy_layout(plan, types, spec.data_columns, source_types)
    writer = _Writer(tcur, spec, direct, settings, on_row_error, result, load_ts, layout, types)
    result.copy_format = "text" if layout is None else "binary"
    if layout is None:
        source_cols = list(plan.source_columns)
        query = select_query(plan.source.schema, plan.source.name, source_cols)
        frames = iter_frames(scur, query, source_cols, chunk_bytes=chunk_bytes)
    else:
        query = select_sql(plan.source.schema, plan.source.name, layout, source_types)
        frames = iter_binary_frames(scur, query, layout.names, layout.as_text, chunk_bytes, layout.tail)

    def shaped(frame: pl.DataFrame) -> pl.DataFrame:
        if layout is None:
            return plan.apply(frame).select(writer.columns)
        return layout.apply(plan, frame)

    def transformed() -> Iterator[tuple[pl.DataFrame, Any]]:
        for frame in _prefetch(frames):
            out = shaped(frame)
            result.rows_read += frame.height
            result.rows_filtered += frame.height - out.height
            yield out, writer.encode(out)
            if on_progress:
                on_progress(frame.height)

    for out, payload in _prefetch(transformed(), depth=2):
        result.rows_written += writer.write(out, payload)


def load_table(
    settings: TaskSettings,
    plan: TablePlan,
    source_uri: str,
    target_uri: str,
    *,
    snapshot: str | None = None,
    snapshot_lsn: int | None = None,
    load_ts: Any = None,
    on_progress: Callable[[int], None] | None = None,
    on_row_error: RowErrorHook | None = None,
    chunk_bytes: int | None = None,
) -> TableLoadResult:
    """Load one table in one target transaction; returns its counters."""
    t0 = time.perf_counter()
    spec = target_spec(plan, settings)
    result = TableLoadResult(plan.source.schema, plan.source.name, f"{spec.schema}.{spec.table}")
    src = connect(source_uri)
    try:
        _load(settings, plan, spec, src, source_uri, target_uri, snapshot, snapshot_lsn, load_ts,
              on_progress, on_row_error, chunk_bytes, result)
    finally:
        src.close()
    result.seconds = time.perf_counter() - t0
    return result


def _load(settings: TaskSettings, plan: TablePlan, spec: TargetSpec, src: psycopg.Connection,
          source_uri: str, target_uri: str, snapshot: str | None, snapshot_lsn: int | None,
          load_ts: Any, on_progress: Callable[[int], None] | None, on_row_error: RowErrorHook | None,
          chunk_bytes: int | None, result: TableLoadResult) -> None:
    fl = settings.task.full_load_settings
    with connect(target_uri) as tgt:
        tcur = tgt.cursor()
        created, types = ensure_target(tgt, spec, create=fl.create_table_if_not_exists,
                                       recreate=fl.recreate_table_if_exists, defer_keys=True)
        if fl.truncate_before_insert and not created:
            tcur.execute(sql.SQL("TRUNCATE {}").format(spec.ident))
        empty = created or fl.truncate_before_insert
        if spec.scd2:
            # First versions open at load time: the snapshot's time when CDC follows, so that
            # a change committed during the load never closes a version before it starts.
            start = sql.Literal(load_ts) if load_ts is not None else sql.SQL("now()")
            tcur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}, ALTER COLUMN {} SET DEFAULT true").format(
                spec.ident, sql.Identifier(spec.start_col), start, sql.Identifier(spec.current_col)))
        _begin_snapshot(src, snapshot)
        scur = src.cursor()
        source_cols = list(plan.source_columns)
        query = select_query(plan.source.schema, plan.source.name, source_cols)
        passed = False
        if plan.passthrough and empty:
            same_types = all(types.get(c.name) == c.pg_type for c in plan.target_columns)
            told = [0]  # rows reported during the copy: taken back if the table is redone

            def on_rows(n: int) -> None:
                told[0] += n
                if on_progress:
                    on_progress(n)

            try:
                with tgt.transaction():
                    rows = stream_copy(scur, tcur, query, spec.ident, spec.data_columns, binary=same_types,
                                       on_rows=on_rows)
                passed = True
                result.path = "passthrough"
                result.rows_read = result.rows_written = rows
            except psycopg.Error:
                # The target refused something (pump's errors carry no SQLSTATE to classify): redo
                # the table batch by batch, where the error policy retries, isolates or stops.
                if on_progress and told[0]:
                    on_progress(-told[0])
                src.close()
                src = connect(source_uri)
                _begin_snapshot(src, snapshot)
                scur = src.cursor()
        if not passed:
            _load_through_pipeline(plan, scur, tcur, spec, empty, settings, on_row_error,
                                   on_progress, result, chunk_bytes or CHUNK_BYTES, load_ts, types)
        state.record_loaded(tcur, settings.name, (plan.source.schema, plan.source.name), result.rows_written,
                            snapshot_lsn)
        if created:  # keys built once, after the rows are in (a duplicate key fails the load here)
            for stmt in key_sql(spec):
                tcur.execute(stmt)
        if spec.scd2 and load_ts is not None:
            tcur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT now()").format(
                spec.ident, sql.Identifier(spec.start_col)))
        tgt.commit()


def run_full_load(
    settings: TaskSettings,
    plans: dict[tuple[str, str], TablePlan],
    source_uri: str,
    target_uri: str,
    *,
    snapshot: str | None = None,
    snapshot_lsn: int | None = None,
    load_ts: Any = None,
    progress: Callable[[tuple[str, str], int], None] | None = None,
    on_row_error: RowErrorHook | None = None,
    on_table_done: Callable[[TableLoadResult], None] | None = None,
    max_workers: int = 2,
) -> list[TableLoadResult]:
    """Load every table, in parallel where the machine allows; the first failure stops the rest."""
    with connect(target_uri) as tgt:
        ensure_state_tables(tgt)
        for schema in sorted({p.target_schema for p in plans.values()}):  # not concurrently: races in the catalog
            tgt.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        tgt.commit()
    results: list[TableLoadResult] = []

    def one(key: tuple[str, str]) -> TableLoadResult:
        cb = (lambda n: progress(key, n)) if progress else None
        r = load_table(settings, plans[key], source_uri, target_uri, snapshot=snapshot,
                       snapshot_lsn=snapshot_lsn, load_ts=load_ts, on_progress=cb, on_row_error=on_row_error)
        if on_table_done:
            on_table_done(r)
        return r

    keys = [t.key for t in settings.tables if t.key in plans]
    if len(keys) <= 1 or max_workers <= 1:
        return [one(k) for k in keys]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(keys)), thread_name_prefix="trempy-load") as pool:
        futures = [pool.submit(one, k) for k in keys]
        first_error: BaseException | None = None
        for f in futures:
            try:
                results.append(f.result())
            except TrempyError as exc:
                first_error = first_error or exc
            except psycopg.Error as exc:
                first_error = first_error or TrempyError(mask(str(exc)))
        if first_error:
            raise first_error
    return results
