"""Full load: one table = one target transaction, read from one consistent snapshot of the source.

A crash leaves the previous state, and a rerun redoes the table cleanly. A
table with no filter and no value transformation into an empty target streams
COPY from source to target with no Python rows (`pgcopy/copyio.stream_copy`),
its indexes set aside and rebuilt after the rows are in (`writer/indexes.py`);
if the target refuses a value it is redone batch by batch. The others go in
three overlapping stages: COPY out (thread) -> plan + encode (thread) -> COPY
in (here), through the table's copy route (routes.py, chosen once) and its
table writer (writer.py). Tables load in parallel.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.crash import pause_point
from trempy_nb.db import connect, task_app_name
from trempy_nb.fullload.result import RowErrorHook, TableLoadResult
from trempy_nb.fullload.routes import choose_route
from trempy_nb.fullload.tables import LoadTarget, Plans, run_tables
from trempy_nb.fullload.writer import TableWriter
from trempy_nb.pgcopy.copyio import select_query, stream_copy
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.settings import TaskSettings
from trempy_nb.writer import indexes, state
from trempy_nb.writer.ddl import TargetSpec, ensure_target, key_sql
from trempy_nb.writer.fence import Fence

#: Bytes of COPY text per pipeline batch (TREMPY_CHUNK_MB): bigger batches amortise per-batch costs,
#: smaller ones bound memory (about 6 batches are in flight across the three stages).
CHUNK_BYTES = int(float(os.environ.get("TREMPY_CHUNK_MB", "4")) * 1024 * 1024)

T = TypeVar("T")


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


def begin_snapshot(conn: psycopg.Connection, snapshot: str | None) -> None:
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


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Read the next batches in a thread while this one is transformed and written."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()

    def pump() -> None:
        try:
            for f in items:
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


def _load_through_pipeline(plan: TablePlan, scur: psycopg.Cursor, tcur: psycopg.Cursor, spec: TargetSpec,
                           direct: bool, settings: TaskSettings, on_row_error: RowErrorHook | None,
                           on_progress: Callable[[int], None] | None, result: TableLoadResult,
                           chunk_bytes: int, load_ts: Any = None, types: dict[str, str] | None = None) -> None:
    """Three overlapping stages: COPY out (thread) -> plan + encode (thread) -> COPY in (here)."""
    route = choose_route(plan, spec.data_columns, types or {})
    writer = TableWriter(tcur, spec, direct, settings, on_row_error, result, route, load_ts)
    result.copy_format = route.name

    def transformed() -> Iterator[tuple[pl.DataFrame, Any]]:
        for frame in prefetch(route.frames(scur, chunk_bytes)):
            out = route.shape(frame)
            result.rows_read += frame.height
            result.rows_filtered += frame.height - out.height
            yield out, route.encode(out)
            if on_progress:
                on_progress(frame.height)

    for out, payload in prefetch(transformed(), depth=2):
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
    fence: Fence | None = None,
) -> TableLoadResult:
    """Load one table in one target transaction; returns its counters. With a `fence`, that
    transaction checks and stores the task's epoch before it commits (`writer.state.check_fence`)."""
    t0 = time.perf_counter()
    spec = target_spec(plan, settings)
    result = TableLoadResult(plan.source.schema, plan.source.name, f"{spec.schema}.{spec.table}")
    src = connect(source_uri, application_name=task_app_name(settings.name, "fullload"))
    try:
        _load(settings, plan, spec, src, source_uri, target_uri, snapshot, snapshot_lsn, load_ts,
              on_progress, on_row_error, chunk_bytes, result, fence=fence)
    finally:
        src.close()
    result.seconds = time.perf_counter() - t0
    return result


def _load(settings: TaskSettings, plan: TablePlan, spec: TargetSpec, src: psycopg.Connection,
          source_uri: str, target_uri: str, snapshot: str | None, snapshot_lsn: int | None,
          load_ts: Any, on_progress: Callable[[int], None] | None, on_row_error: RowErrorHook | None,
          chunk_bytes: int | None, result: TableLoadResult, *, fence: Fence | None = None) -> None:
    fl = settings.task.full_load_settings
    app = task_app_name(settings.name, "fullload")
    with connect(target_uri, application_name=app) as tgt:
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
        begin_snapshot(src, snapshot)
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
                    # emptied in this transaction: its indexes are rebuilt once after the rows are in
                    rebuilds = [] if created else indexes.set_aside(tcur, spec.schema, spec.table)
                    rows = stream_copy(scur, tcur, query, spec.ident, spec.data_columns, binary=same_types,
                                       on_rows=on_rows)
                    indexes.rebuild(tcur, rebuilds)
                passed = True
                result.path = "passthrough"
                result.rows_read = result.rows_written = rows
            except psycopg.Error:
                # The target refused something (pump's errors carry no SQLSTATE to classify), or a
                # rebuilt index found a duplicate key: the savepoint brought the indexes back; redo
                # the table batch by batch, where the error policy retries, isolates or stops.
                if on_progress and told[0]:
                    on_progress(-told[0])
                src.close()
                src = connect(source_uri, application_name=app)
                begin_snapshot(src, snapshot)
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
        pause_point("full_load_before_table_commit")
        state.check_fence(tgt, fence, settings.name)
        tgt.commit()


def _prepare(settings: TaskSettings, plans: Plans, target_uri: str) -> None:
    """The state tables and every target schema, before any table (not concurrently: races in the catalog)."""
    with connect(target_uri, application_name=task_app_name(settings.name, "fullload")) as tgt:
        state.ensure_state_tables(tgt)
        for schema in sorted({p.target_schema for p in plans.values()}):
            tgt.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        tgt.commit()


#: PostgreSQL's side of the table loop (`tables.run_tables`)
POSTGRES_LOAD = LoadTarget("postgresql", _prepare, load_table, (psycopg.Error,))


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
    fence: Fence | None = None,
) -> list[TableLoadResult]:
    """Load every table into a PostgreSQL target, in parallel where the machine allows; the first
    failure stops the rest."""
    return run_tables(POSTGRES_LOAD, settings, plans, source_uri, target_uri, snapshot=snapshot,
                      snapshot_lsn=snapshot_lsn, load_ts=load_ts, progress=progress, on_row_error=on_row_error,
                      on_table_done=on_table_done, max_workers=max_workers, fence=fence)
