"""Apply one change batch to the target in one transaction: the writer's only I/O.

Order inside the transaction: lock and read the task's checkpoint; skip a
replayed batch; per table, stage the collapsed rows with COPY and run one
statement per operation kind; write the new checkpoint; commit. The commit
is the last thing that happens, so the caller may advance the slot (or ack
the broker) as soon as this returns.

A failing statement is rolled back to its savepoint and handled by the one
error policy (`errorpolicy.py`): retried when the error is transient; when the
rows' values are at fault, bisected by key (each half in its own savepoint)
down to single keys, which either stop the batch (`RowError`, everything
rolled back) or are reported through `on_row_error` and skipped, per the
task's `error_handling`; any other error stops at once (`TerminalError`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import psycopg
from psycopg import pq, sql

from trempy_nb.changes import LSN, OP, SEQ, TS
from trempy_nb.crash import pause_point
from trempy_nb.errors import TerminalError
from trempy_nb.pgcopy.copyio import copy_frame
from trempy_nb.settings import ErrorHandling
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer import sql as wsql
from trempy_nb.writer import state
from trempy_nb.writer.collapse import Rows, Truncate, fill_moved_toast, plan_table
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.fence import Fence

RowErrorCallback = Callable[[policy.BadRow], None]

ANALYZE_MIN_ROWS = 1000  # below this the planner's default guess for a temp table is fine


@dataclass
class TableApply:
    """One target table's share of a batch: frame with TARGET column names and the meta columns."""

    spec: TargetSpec
    frame: pl.DataFrame
    truncated_at: list[tuple] = field(default_factory=list)  # (seq, lsn[, ts]) of TRUNCATEs


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    opened: int = 0  # SCD2 versions opened
    closed: int = 0  # SCD2 versions closed
    failed: int = 0  # rows reported through on_row_error and skipped
    truncates: int = 0
    replayed: int = 0  # rows already applied (LSN <= checkpoint), dropped
    merged: int = 0  # rows folded into a later change of the same key

    def add(self, other: dict[str, int]) -> None:
        for name, value in other.items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class ApplyResult:
    task: str
    end_lsn: int
    checkpoint_before: int | None
    skipped: bool = False  # the whole batch was at or below the checkpoint: nothing done
    tables: dict[tuple[str, str], TableCounts] = field(default_factory=dict)

    def totals(self) -> TableCounts:
        total = TableCounts()
        for counts in self.tables.values():
            total.add(vars(counts))
        return total


@dataclass
class _Ctx:
    conn: psycopg.Connection
    error_handling: ErrorHandling
    on_row_error: RowErrorCallback | None
    names: itertools.count = field(default_factory=itertools.count)

    def staging(self) -> sql.Identifier:
        return wsql.staging_ident(f"_trempy_stg_{next(self.names)}")


def apply_batch(
    conn: psycopg.Connection,
    task: str,
    tables: Sequence[TableApply],
    end_lsn: int,
    *,
    error_handling: ErrorHandling,
    on_row_error: RowErrorCallback | None = None,
    fence: Fence | None = None,
    also: Callable[[psycopg.Connection], None] | None = None,
) -> ApplyResult:
    """Apply a batch ending at commit `end_lsn` exactly once, checkpoint included, in one transaction.

    The connection must be idle (no open transaction): this function owns the
    transaction and commits it last. With a `fence`, the transaction first checks and
    stores the task's epoch (`state.check_fence`): a copy that lost its lease writes nothing.
    `also(conn)` writes more in the same transaction before the checkpoint (the held changes of
    paused tables, `engine.lifecycle`); a replayed batch skips it with the rest.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise TerminalError("apply_batch needs a connection with no open transaction")
    ctx = _Ctx(conn, error_handling, on_row_error)
    with conn.transaction():
        if not state.state_tables_exist(conn):
            state.ensure_state_tables(conn)
        state.check_fence(conn, fence, task)
        before = state.read_checkpoint(conn, task, for_update=True)
        result = ApplyResult(task, end_lsn, before)
        if before is not None and end_lsn <= before:
            result.skipped = True
            return result
        for ta in tables:
            counts = result.tables.setdefault((ta.spec.schema, ta.spec.table), TableCounts())
            _apply_table(ctx, ta, before, end_lsn, counts)
        if also is not None:
            also(conn)
        pause_point("apply_before_checkpoint")
        state.write_checkpoint(conn, task, end_lsn)
        state.recheck_fence(fence, task)
    return result


def _apply_table(
    ctx: _Ctx, ta: TableApply, checkpoint: int | None, end_lsn: int, counts: TableCounts
) -> None:
    spec = ta.spec
    name = f"{spec.schema}.{spec.table}"
    newest = [int(t[1]) for t in ta.truncated_at]
    if ta.frame.height:
        newest.append(int(ta.frame.get_column(LSN).max()))  # type: ignore[arg-type]
    if newest and max(newest) > end_lsn:
        # The checkpoint would fall behind the data: a later replay would apply those rows twice.
        raise TerminalError(f"changes for {name} go past the batch end LSN {end_lsn}")
    if not spec.key:
        raise TerminalError(f"target table {name} has no key: changes cannot be applied")
    missing = [k for k in spec.key if k not in ta.frame.columns]
    if missing:
        raise TerminalError(f"changes for {name} lack key column(s) {', '.join(missing)}")
    columns = [c for c in spec.data_columns if c in ta.frame.columns]
    frame = _fill_moved_toast(ctx, spec, ta.frame)
    for part in _key_parts(frame, spec.key, bool(ta.truncated_at)):
        _apply_part(ctx, ta, part, columns, checkpoint, counts)


def _key_parts(frame: pl.DataFrame, key: Sequence[str], truncates: bool) -> Iterator[pl.DataFrame]:
    """A huge frame in slices by key hash, one after the other (same transaction).

    Every step of the apply works per key (collapse, SCD2 close/open, unchanged
    TOAST), so disjoint key sets can go separately: the working copies of a
    500k-row transaction then take a fraction of the memory. A TRUNCATE orders
    rows across keys, so a frame with one goes whole."""
    parts = -(-frame.height // APPLY_PART_ROWS)
    if parts <= 1 or truncates:
        yield frame
        return
    h = frame.select(pl.struct(list(key)).hash(seed=7) % parts).to_series()
    for i in range(parts):
        yield frame.filter(h == i)


def _apply_part(
    ctx: _Ctx,
    ta: TableApply,
    frame: pl.DataFrame,
    columns: list[str],
    checkpoint: int | None,
    counts: TableCounts,
) -> None:
    spec = ta.spec
    plan = plan_table(
        frame,
        spec.key,
        columns,
        scd2=spec.scd2,
        truncated_at=ta.truncated_at,
        checkpoint=checkpoint,
    )
    counts.replayed += plan.replayed
    counts.merged += plan.merged
    for step in plan.steps:
        if isinstance(step, Truncate):
            _truncate(ctx, spec, step, counts)
        elif spec.scd2:
            _run_unit(ctx, spec, "scd2", step, columns, counts)
        else:
            deletes = step.frame.filter(pl.col(OP) == "D")
            writes = step.frame.filter(pl.col(OP) != "D")
            if deletes.height:
                _run_unit(ctx, spec, "delete", Rows(deletes, []), list(spec.key), counts)
            if writes.height:
                _run_unit(ctx, spec, "upsert", Rows(writes, step.markers), columns, counts)


#: Rows of one table above which a batch is applied in slices by key hash (memory)
APPLY_PART_ROWS = 50_000


def _fill_moved_toast(ctx: _Ctx, spec: TargetSpec, frame: pl.DataFrame) -> pl.DataFrame:
    """Unchanged TOAST values of moved keys (`collapse.fill_moved_toast`), looked up as text on
    the target when not earlier in the batch."""
    key = list(spec.key)
    cond = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key)
    if spec.scd2:
        cond = sql.SQL("{} AND {}").format(cond, sql.Identifier(spec.current_col))

    def lookup(col: str, old_key: tuple) -> tuple[bool, Any]:
        with ctx.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT {}::text FROM {} WHERE {}").format(sql.Identifier(col), spec.ident, cond),
                        [None if v is None else str(v) for v in old_key])
            row = cur.fetchone()
        return (row is not None, row[0] if row is not None else None)

    return fill_moved_toast(frame, key, lookup)


# --- statements ------------------------------------------------------------------------------


def _stage(ctx: _Ctx, spec: TargetSpec, rows: Rows, columns: list[str]) -> sql.Identifier:
    """CREATE the TEMP staging table and COPY the rows in (COPY parses text with the target's types)."""
    staging = ctx.staging()
    meta: dict[str, str] = {}  # upsert/delete statements need no meta: a 1,600-column table still fits
    if spec.scd2:
        meta |= {wsql.S_OP: "text", wsql.S_TS: "timestamptz", wsql.S_END: "timestamptz", wsql.S_FIRST: "boolean"}
    meta |= {marker: "boolean" for _, marker in rows.markers}
    with ctx.conn.cursor() as cur:
        cur.execute(wsql.create_staging_sql(staging, spec.ident, columns, meta))
        copy_frame(cur, staging, [*columns, *meta], rows.frame)
        if rows.frame.height >= ANALYZE_MIN_ROWS:
            cur.execute(wsql.analyze_sql(staging, [*spec.key, *meta]))
    return staging


def _execute_unit(
    ctx: _Ctx, spec: TargetSpec, op: str, rows: Rows, columns: list[str]
) -> dict[str, int]:
    """Stage `rows` and run the statements of one operation kind; returns counts."""
    staging = _stage(ctx, spec, rows, columns)
    target = spec.ident
    with ctx.conn.cursor() as cur:
        if rows.markers:
            current = spec.current_col if spec.scd2 else None
            cur.execute(wsql.fill_unchanged_sql(staging, target, spec.key, rows.markers, current))
        if op == "delete":
            cur.execute(wsql.upsert_delete_sql(target, staging, spec.key))
            return {"deleted": max(cur.rowcount, 0)}
        if op == "upsert":
            cur.execute(wsql.upsert_sql(target, staging, columns, spec.key))
            row = cur.fetchone()
            return {"inserted": int(row[0]), "updated": int(row[1])} if row else {}
        cur.execute(wsql.scd2_close_sql(target, staging, spec))
        closed = max(cur.rowcount, 0)
        cur.execute(wsql.scd2_open_sql(target, staging, columns, spec))
        return {"closed": closed, "opened": max(cur.rowcount, 0)}


def _attempt(
    ctx: _Ctx, what: str | Callable[[], str], fn: Callable[[], dict[str, int]]
) -> tuple[dict[str, int] | None, BaseException | None]:
    """Run `fn` in a savepoint under the error policy: (counts, None) or (None, row-level error).

    A lost connection is not retried here (the savepoint went with it): the stream
    reconnects and retries the batch."""

    def once() -> dict[str, int]:
        with ctx.conn.transaction():
            return fn()

    return policy.attempt(once, ctx.error_handling.max_retries, what,
                          retryable=lambda e: policy.is_transient(e) and not ctx.conn.broken)


def _describe(spec: TargetSpec, op: str, frame: pl.DataFrame) -> str:
    """'insert/update into dw.items': the operations of the changes a statement applies."""
    present = set(frame.get_column(OP).unique().to_list()) if op != "delete" and OP in frame.columns else set()
    ops = [name for code, name in (("I", "insert"), ("U", "update"), ("D", "delete")) if code in present]
    return policy.describe("/".join(ops) or op, f"{spec.schema}.{spec.table}")


def _run_unit(
    ctx: _Ctx, spec: TargetSpec, op: str, rows: Rows, columns: list[str], counts: TableCounts
) -> None:
    """Apply one operation kind set-based; on a row-level error bisect by key to isolate the bad keys."""

    def run(unit: Rows) -> BaseException | None:
        done, exc = _attempt(ctx, lambda: _describe(spec, op, unit.frame),
                             lambda: _execute_unit(ctx, spec, op, unit, columns))
        counts.add(done or {})
        return exc

    def split(unit: Rows) -> list[Rows] | None:
        keys = unit.frame.select(spec.key).unique(maintain_order=True)
        if keys.height <= 1:
            return None
        half = keys.height // 2
        return [Rows(unit.frame.join(part, on=list(spec.key), how="semi").sort(SEQ), unit.markers)
                for part in (keys.head(half), keys.tail(keys.height - half))]

    policy.isolate(rows, run, split, lambda unit, exc: _bad_rows(ctx, spec, unit.frame, exc, counts))


def _bad_rows(
    ctx: _Ctx,
    spec: TargetSpec,
    frame: pl.DataFrame,
    exc: BaseException,
    counts: TableCounts,
) -> None:
    """One key's rows fail: stop (RowError) or record each row and go on, per error_handling.

    Each row is recorded with its own operation; an SCD2 key's events in one batch are applied
    together, so the key stops when any of its operations' flags says stop."""
    mode: policy.Mode = "scd2" if spec.scd2 else "upsert"
    ops = [policy.operation_of(o) for o in frame.get_column(OP).to_list()]
    decision = policy.decide(ctx.error_handling, ops, mode)
    first = frame.row(0, named=True)
    key = {k: first[k] for k in spec.key}
    error = policy.error_text(exc)
    if decision.stop or ctx.on_row_error is None:
        raise policy.row_error(f"{spec.schema}.{spec.table}", decision, error, key) from exc
    for op, row in zip(ops, frame.iter_rows(named=True), strict=True):
        row_key = {k: row[k] for k in spec.key}
        payload = {
            "key": row_key,
            "values": {c: row[c] for c in spec.data_columns if c in row},
            "op": row.get(OP),
            "lsn": row.get(LSN),
            "ts": row.get(TS),
        }
        ctx.on_row_error(policy.BadRow(spec.schema, spec.table, op, row_key, payload, error))
    counts.failed += frame.height


def _truncate(ctx: _Ctx, spec: TargetSpec, trunc: Truncate, counts: TableCounts) -> None:
    """Upsert: delete every row. SCD2: close every current version at the truncate's commit time."""

    def run() -> dict[str, int]:
        with ctx.conn.cursor() as cur:
            if spec.scd2:
                cur.execute(wsql.scd2_close_all_sql(spec.ident, spec), (trunc.ts,))
                return {"closed": max(cur.rowcount, 0), "truncates": 1}
            cur.execute(wsql.delete_all_sql(spec.ident))
            return {"deleted": max(cur.rowcount, 0), "truncates": 1}

    done, exc = _attempt(ctx, f"truncate (delete) of {spec.schema}.{spec.table}", run)
    if exc is None:
        counts.add(done or {})
        return
    error = policy.error_text(exc)
    decision = policy.decide(ctx.error_handling, ["delete"], "scd2" if spec.scd2 else "upsert")
    if decision.stop or ctx.on_row_error is None:
        raise policy.row_error(f"{spec.schema}.{spec.table}", decision, error) from exc
    payload = {"truncate": True, "lsn": trunc.lsn, "ts": trunc.ts}
    ctx.on_row_error(policy.BadRow(spec.schema, spec.table, "delete", {}, payload, error))
    counts.failed += 1
