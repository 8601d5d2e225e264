"""Full load into a MariaDB/MySQL target: the same snapshot, plans, table loop and results as the
PostgreSQL one (`load.py`, `tables.run_tables` with `MARIADB_LOAD` as the target's hook).

The source side is the one PostgreSQL path (a REPEATABLE READ snapshot, COPY
text batches, the table's Polars plan); the target side is
`writer/mariadb/fullload.TableLoad` (LOAD DATA LOCAL INFILE from memory, one
InnoDB transaction per table, the one error policy). Before anything is
written the server's capabilities and every table's key length are checked,
so a run that cannot finish writes nothing. A table with no filter and no value
transformation (and no array column) into an empty target streams the source's
`COPY (SELECT <MariaDB input form>) TO STDOUT (FORMAT csv)` straight into LOAD
DATA, no Python rows; if the target refuses a value it is redone batch by batch.
The others go in three overlapping stages: COPY out (thread) -> plan + encode
(thread) -> LOAD DATA (here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.db import connect, task_app_name
from trempy_nb.fullload.load import CHUNK_BYTES, begin_snapshot, prefetch, target_spec
from trempy_nb.fullload.result import RowErrorHook, TableLoadResult
from trempy_nb.fullload.tables import LoadTarget, Plans, run_tables
from trempy_nb.pgcopy.copyio import iter_frames, select_query
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.settings import TaskSettings
from trempy_nb.writer.errorpolicy import Kind
from trempy_nb.writer.fence import Fence
from trempy_nb.writer.mariadb import capabilities
from trempy_nb.writer.mariadb import errors as merr
from trempy_nb.writer.mariadb import uri as maria_uri
from trempy_nb.writer.mariadb.ddl import check_key_length, column_types, ensure_state_tables
from trempy_nb.writer.mariadb.fencing import register_session
from trempy_nb.writer.mariadb.fullload import TableLoad
from trempy_nb.writer.mariadb.types import mariadb_type


def _source_expr(column: str, pg_type: str) -> sql.Composable | None:
    """The source-side expression giving `column` as MariaDB reads it (see types.to_load_text)."""
    col = sql.Identifier(column)
    mt = mariadb_type(pg_type)
    if mt.load == "array":
        return None
    if mt.load == "bool":
        return sql.SQL("CASE WHEN {0} THEN '1' WHEN NOT {0} THEN '0' END").format(col)
    if mt.load == "hex":
        return sql.SQL("encode({}, 'hex')").format(col)
    if mt.load == "tz":  # UTC; what MariaDB cannot hold stays recognisably refused
        return sql.SQL(
            "CASE WHEN {0} IS NULL THEN NULL WHEN isfinite({0}) AND {0} >= '0001-01-01 00:00:00+00'"
            " AND {0} < '10000-01-01 00:00:00+00' THEN to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
            " ELSE 'out of range: ' || {0}::text END").format(col)
    return col


def stream_query(plan: TablePlan) -> sql.Composed | None:
    """COPY ... TO STDOUT (FORMAT csv) of a pass-through table in MariaDB's input form, or None
    when a column needs Python (arrays)."""
    types = {c.name: c.pg_type for c in plan.source.columns}
    exprs = [_source_expr(c, types[c]) for c in plan.source_columns]
    if any(e is None for e in exprs):
        return None
    return sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT csv, NULL 'NULL', FORCE_QUOTE *)").format(
        sql.SQL(", ").join(exprs), sql.Identifier(plan.source.schema, plan.source.name))


def _copy_chunks(src: psycopg.Connection, query: sql.Composed) -> Iterator[bytes]:
    with src.cursor().copy(query) as copy:
        for chunk in copy:
            yield bytes(chunk)


def load_table_mariadb(
    settings: TaskSettings,
    plan: TablePlan,
    source_uri: str,
    target: str | maria_uri.MariaDBTarget,
    *,
    snapshot: str | None = None,
    snapshot_lsn: int | None = None,
    load_ts: Any = None,
    on_progress: Callable[[int], None] | None = None,
    on_row_error: RowErrorHook | None = None,
    chunk_bytes: int | None = None,
    fence: Fence | None = None,
) -> TableLoadResult:
    """Load one table in one target transaction; returns its counters (a `fence` is checked in it)."""
    t0 = time.perf_counter()
    spec = target_spec(plan, settings)
    fl = settings.task.full_load_settings
    result = TableLoadResult(plan.source.schema, plan.source.name, f"{spec.schema}.{spec.table}", copy_format="text")
    where = target if isinstance(target, maria_uri.MariaDBTarget) else maria_uri.target_of(target)
    app = task_app_name(settings.name, "fullload")
    tgt = maria_uri.connect(where)
    src = connect(source_uri, application_name=app)
    load = TableLoad(tgt, spec, settings.error_handling, task=settings.name, state_database=where.database,
                     load_ts=load_ts, on_row_error=on_row_error)
    try:
        register_session(tgt, app)  # eviction finds it
        load.begin(create=fl.create_table_if_not_exists, recreate=fl.recreate_table_if_exists,
                   truncate=fl.truncate_before_insert)
        begin_snapshot(src, snapshot)
        source_cols = list(plan.source_columns)
        query = stream_query(plan) if plan.passthrough and load.direct else None
        passed = False
        if query is not None:
            try:
                result.rows_read = load.write_stream(_copy_chunks(src, query))
                result.path, passed = "passthrough", True
                if on_progress:
                    on_progress(result.rows_read)
            except Exception as exc:
                if merr.classify(exc) is not Kind.ROW and not isinstance(exc, psycopg.Error):
                    raise
                # a value the target refused: redo the table batch by batch, where the error policy
                # retries, isolates or stops (the source connection is reopened: its COPY broke off)
                src.close()
                src = connect(source_uri, application_name=app)
                begin_snapshot(src, snapshot)
        if not passed:
            frames = iter_frames(src.cursor(), select_query(plan.source.schema, plan.source.name, source_cols),
                                 source_cols, chunk_bytes=chunk_bytes or CHUNK_BYTES)

            def encoded() -> Iterator[tuple[pl.DataFrame, tuple[pl.DataFrame, bytes]]]:
                for frame in prefetch(frames):
                    out = plan.apply(frame).select(spec.data_columns)
                    result.rows_read += frame.height
                    result.rows_filtered += frame.height - out.height
                    yield out, load.encode(out)
                    if on_progress:
                        on_progress(frame.height)

            for out, enc in prefetch(encoded(), depth=2):
                load.write(out, enc)
        load.finish(source_schema=plan.source.schema, source_table=plan.source.name, snapshot_lsn=snapshot_lsn,
                    fence=fence)
    except BaseException:
        load.abort()
        raise
    finally:
        src.close()
        tgt.close()
    result.rows_written = load.counts.rows_written
    result.rows_failed = load.counts.rows_failed
    result.errors = load.counts.errors
    result.seconds = time.perf_counter() - t0
    return result


def _prepare(settings: TaskSettings, plans: Plans, target_uri: str) -> None:
    """The server's capabilities and every table's key length before anything is written, then
    the state tables (in the database the URI names)."""
    target = maria_uri.target_of(target_uri)
    with maria_uri.connect(target) as conn:
        info = capabilities.validate(conn, target.database)
        for plan in plans.values():  # every key fits before any table is created
            spec = target_spec(plan, settings)
            check_key_length(spec, column_types(spec, native_uuid=info.native_uuid))
        ensure_state_tables(conn, target.database)
        conn.commit()


#: MariaDB/MySQL's side of the table loop (`tables.run_tables`); any error that escaped the
#: error policy (the driver's, the FIFO's) is one masked line
MARIADB_LOAD = LoadTarget("mariadb", _prepare, load_table_mariadb, (Exception,))


def run_full_load_mariadb(
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
    """`load.run_full_load` for a mysql:// / mariadb:// target (same arguments, same results)."""
    return run_tables(MARIADB_LOAD, settings, plans, source_uri, target_uri, snapshot=snapshot,
                      snapshot_lsn=snapshot_lsn, load_ts=load_ts, progress=progress, on_row_error=on_row_error,
                      on_table_done=on_table_done, max_workers=max_workers, fence=fence)
