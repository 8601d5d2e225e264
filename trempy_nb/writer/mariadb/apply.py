"""Apply one change batch to a MariaDB target in one InnoDB transaction, exactly once.

The same contract as `writer.apply.apply_batch` (same `TableApply` list, same
counts, same error policy): lock and read the task's checkpoint row; skip a
replayed batch; per table, collapse the rows per key (`collapse.plan_table`),
LOAD DATA them into a TEMPORARY staging table typed like the target, and run one
set-based statement per operation kind (`INSERT ... SELECT ... ON DUPLICATE KEY
UPDATE`, `DELETE ... JOIN`, SCD2 close and open at the source commit time);
write the checkpoint; commit last, so the caller may advance the slot as soon as
this returns. A failing unit is rolled back to its savepoint and handled as on
PostgreSQL: retried when transient, bisected by key when the rows' values are at
fault, stopped otherwise.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from trempy_nb.changes import LSN, OP, SEQ, TS
from trempy_nb.crash import pause_point
from trempy_nb.errors import Fenced, TerminalError
from trempy_nb.settings import ErrorHandling
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer.apply import ApplyResult, TableApply, TableCounts, _key_parts
from trempy_nb.writer.collapse import Rows, Truncate, fill_moved_toast, plan_table
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.fence import Fence, lost_message
from trempy_nb.writer.mariadb import errors as merr
from trempy_nb.writer.mariadb.bulk import load_frame
from trempy_nb.writer.mariadb.ddl import CHECKPOINTS, column_types, ensure_state_tables
from trempy_nb.writer.mariadb.fencing import check_fence
from trempy_nb.writer.mariadb.names import (
    column_list,
    database_of,
    execute,
    key_match,
    qualified,
    quote,
)
from trempy_nb.writer.mariadb.types import MariaType, to_load_text
from trempy_nb.writer.sql import S_END, S_FIRST, S_OP, S_TS

RowErrorCallback = Callable[[policy.BadRow], None]

#: CAST types of the staging meta columns (fixed SQL, never user input); markers are SIGNED too
_META_CAST = {S_OP: "CHAR(1)", S_TS: "DATETIME(6)", S_END: "DATETIME(6)", S_FIRST: "SIGNED"}
_TS_LOAD = MariaType("DATETIME(6)", "tz")


@dataclass
class _Ctx:
    conn: Any
    error_handling: ErrorHandling
    on_row_error: RowErrorCallback | None
    names: itertools.count = field(default_factory=itertools.count)


def read_checkpoint(conn: Any, task: str, *, database: str | None = None, for_update: bool = False) -> int | None:
    """The task's checkpoint LSN on the target, or None."""
    with conn.cursor() as cur:
        execute(cur, f"SELECT lsn FROM {qualified(database or database_of(conn), CHECKPOINTS)} WHERE task = %s"
                + (" FOR UPDATE" if for_update else ""), (task,))
        row = cur.fetchone()
    return int(row[0]) if row else None


def write_checkpoint(conn: Any, task: str, lsn: int, *, database: str | None = None) -> None:
    with conn.cursor() as cur:
        execute(cur, f"INSERT INTO {qualified(database or database_of(conn), CHECKPOINTS)} (task, lsn, updated_at)"
                " VALUES (%s, %s, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE lsn = VALUES(lsn),"
                " updated_at = VALUES(updated_at)", (task, int(lsn)))


def reset_checkpoint(conn: Any, task: str, *, database: str | None = None) -> None:
    """Forget the task's checkpoint (start_mode `reload`)."""
    with conn.cursor() as cur:
        execute(cur, f"DELETE FROM {qualified(database or database_of(conn), CHECKPOINTS)} WHERE task = %s", (task,))


def apply_batch(
    conn: Any,
    task: str,
    tables: Sequence[TableApply],
    end_lsn: int,
    *,
    error_handling: ErrorHandling,
    on_row_error: RowErrorCallback | None = None,
    fence: Fence | None = None,
) -> ApplyResult:
    """Apply a batch ending at commit `end_lsn` exactly once, checkpoint included, in one transaction.

    The state tables live in the connection's database (the one the target URI names). With a
    `fence`, the transaction first checks and stores the task's epoch (`fencing.check_fence`)."""
    database = database_of(conn)
    ensure_state_tables(conn, database)  # DDL commits implicitly: before the transaction, never in it
    conn.commit()
    ctx = _Ctx(conn, error_handling, on_row_error)
    conn.begin()
    try:
        check_fence(conn, fence, task, database=database)
        before = read_checkpoint(conn, task, database=database, for_update=True)
        result = ApplyResult(task, end_lsn, before)
        if before is not None and end_lsn <= before:
            result.skipped = True
            conn.rollback()
            return result
        for ta in tables:
            counts = result.tables.setdefault((ta.spec.schema, ta.spec.table), TableCounts())
            _apply_table(ctx, ta, before, end_lsn, counts)
        pause_point("apply_before_checkpoint")
        write_checkpoint(conn, task, end_lsn, database=database)
        if fence is not None and not fence.valid():
            raise Fenced(lost_message(fence.key or task, None, fence.epoch))
        conn.commit()
    except BaseException:
        try:
            conn.rollback()
        except Exception:
            pass  # the connection is gone: the server rolled back
        raise
    return result


def _apply_table(ctx: _Ctx, ta: TableApply, checkpoint: int | None, end_lsn: int, counts: TableCounts) -> None:
    spec = ta.spec
    name = f"{spec.schema}.{spec.table}"
    newest = [int(t[1]) for t in ta.truncated_at]
    if ta.frame.height:
        newest.append(int(ta.frame.get_column(LSN).max()))  # type: ignore[arg-type]
    if newest and max(newest) > end_lsn:
        raise TerminalError(f"changes for {name} go past the batch end LSN {end_lsn}")
    if not spec.key:
        raise TerminalError(f"target table {name} has no key: changes cannot be applied")
    missing = [k for k in spec.key if k not in ta.frame.columns]
    if missing:
        raise TerminalError(f"changes for {name} lack key column(s) {', '.join(missing)}")
    columns = [c for c in spec.data_columns if c in ta.frame.columns]
    types = column_types(spec)
    frame = to_load_text(ta.frame, types, {c.name: c.pg_type for c in spec.columns})
    frame = _fill_moved_toast(ctx, spec, types, frame)
    for part in _key_parts(frame, spec.key, bool(ta.truncated_at)):
        plan = plan_table(part, spec.key, columns, scd2=spec.scd2, truncated_at=ta.truncated_at,
                          checkpoint=checkpoint)
        counts.replayed += plan.replayed
        counts.merged += plan.merged
        for step in plan.steps:
            if isinstance(step, Truncate):
                _truncate(ctx, spec, step, counts)
            elif spec.scd2:
                _run_unit(ctx, spec, types, "scd2", step, columns, counts)
            else:
                deletes = step.frame.filter(pl.col(OP) == "D")
                writes = step.frame.filter(pl.col(OP) != "D")
                if deletes.height:
                    _run_unit(ctx, spec, types, "delete", Rows(deletes, []), list(spec.key), counts)
                if writes.height:
                    _run_unit(ctx, spec, types, "upsert", Rows(writes, step.markers), columns, counts)


def _fill_moved_toast(ctx: _Ctx, spec: TargetSpec, types: dict[str, MariaType], frame: pl.DataFrame) -> pl.DataFrame:
    """Unchanged TOAST values of moved keys (`collapse.fill_moved_toast`), looked up on the target
    in the form LOAD DATA reads (hex for binary columns) when not earlier in the batch."""
    cond = " AND ".join(f"{quote(k)} = %s" for k in spec.key)
    if spec.scd2:
        cond += f" AND {quote(spec.current_col)} = 1"

    def lookup(col: str, old_key: tuple) -> tuple[bool, Any]:
        expr = f"HEX({quote(col)})" if types[col].load == "hex" else f"CAST({quote(col)} AS CHAR)"
        with ctx.conn.cursor() as cur:
            execute(cur, f"SELECT {expr} FROM {qualified(spec.schema, spec.table)} WHERE {cond}", old_key)
            row = cur.fetchone()
        return (row is not None, row[0] if row is not None else None)

    return fill_moved_toast(frame, list(spec.key), lookup)


# --- statements ------------------------------------------------------------------------------


def _stage(ctx: _Ctx, staging: str, spec: TargetSpec, types: dict[str, MariaType], rows: Rows,
           columns: list[str]) -> None:
    """A TEMPORARY table typed like the target's `columns` plus the meta columns, loaded with the rows."""
    meta = [S_OP] + ([S_TS, S_END, S_FIRST] if spec.scd2 else [])
    markers = [m for _, m in rows.markers]
    parts = [column_list(columns, "t")] if columns else []
    parts += [f"CAST(NULL AS {_META_CAST[m]}) AS {quote(m)}" for m in meta]
    parts += [f"CAST(NULL AS SIGNED) AS {quote(m)}" for m in markers]
    target = qualified(spec.schema, spec.table)
    frame = rows.frame
    flags = [c for c in [S_FIRST, *markers] if c in frame.columns]
    if flags:
        frame = frame.with_columns(pl.col(c).cast(pl.Int8).cast(pl.String) for c in flags)
    load_types = {**types, S_TS: _TS_LOAD, S_END: _TS_LOAD}
    with ctx.conn.cursor() as cur:
        execute(cur, f"CREATE TEMPORARY TABLE {staging} ENGINE=InnoDB AS SELECT {', '.join(parts)} FROM {target} AS t"
                " WHERE FALSE")
        meta_text = to_load_text(frame, {S_TS: _TS_LOAD, S_END: _TS_LOAD}, {})  # data columns: converted already
        load_frame(cur, staging, [*columns, *meta, *markers], meta_text, load_types)


def _execute_unit(ctx: _Ctx, spec: TargetSpec, types: dict[str, MariaType], op: str, rows: Rows,
                  columns: list[str]) -> dict[str, int]:
    staging = quote(f"_trempy_stg_{next(ctx.names)}")
    target = qualified(spec.schema, spec.table)
    keys = key_match(spec.key)
    try:
        _stage(ctx, staging, spec, types, rows, columns)
        with ctx.conn.cursor() as cur:
            if rows.markers:
                sets = ", ".join(f"s.{quote(c)} = IF(s.{quote(m)} = 1, t.{quote(c)}, s.{quote(c)})"
                                 for c, m in rows.markers)
                marked = " OR ".join(f"s.{quote(m)} = 1" for _, m in rows.markers)
                current = f" AND t.{quote(spec.current_col)} = 1" if spec.scd2 else ""
                execute(cur, f"UPDATE {staging} AS s JOIN {target} AS t ON {keys}{current} SET {sets}"
                        f" WHERE ({marked})")
            if op == "delete":
                return {"deleted": execute(cur, f"DELETE t FROM {target} AS t JOIN {staging} AS s ON {keys}")}
            if op == "upsert":
                execute(cur, f"SELECT COUNT(*) FROM {staging} AS s JOIN {target} AS t ON {keys}")
                updated = int(cur.fetchone()[0])
                non_key = [c for c in columns if c not in spec.key]
                action = ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in non_key) or \
                    f"{quote(spec.key[0])} = {quote(spec.key[0])}"
                execute(cur, f"INSERT INTO {target} ({column_list(columns)}) SELECT {column_list(columns, 's')}"
                        f" FROM {staging} AS s ON DUPLICATE KEY UPDATE {action}")
                return {"inserted": rows.frame.height - updated, "updated": updated}
            cur_col, end_col, start_col = quote(spec.current_col), quote(spec.end_col), quote(spec.start_col)
            closed = execute(cur, f"UPDATE {target} AS t JOIN {staging} AS s ON {keys}"
                             f" SET t.{end_col} = s.{quote(S_TS)}, t.{cur_col} = 0"
                             f" WHERE s.{quote(S_FIRST)} = 1 AND t.{cur_col} = 1")
            opened = execute(cur, f"INSERT INTO {target} ({column_list(columns)}, {start_col}, {end_col}, {cur_col})"
                             f" SELECT {column_list(columns, 's')}, s.{quote(S_TS)}, s.{quote(S_END)},"
                             f" s.{quote(S_END)} IS NULL FROM {staging} AS s WHERE s.{quote(S_OP)} <> 'D'")
            return {"closed": closed, "opened": opened}
    finally:
        with ctx.conn.cursor() as cur:
            execute(cur, f"DROP TEMPORARY TABLE IF EXISTS {staging}")


def _attempt(ctx: _Ctx, what: str | Callable[[], str], fn: Callable[[], dict[str, int]]
             ) -> tuple[dict[str, int] | None, BaseException | None]:
    """Run `fn` in a savepoint under the error policy. A deadlock rolls back the whole InnoDB
    transaction (the savepoint with it): it is raised for the caller to retry the batch."""
    name = f"trempy_sp_{next(ctx.names)}"

    def once() -> dict[str, int]:
        with ctx.conn.cursor() as cur:
            execute(cur, f"SAVEPOINT {name}")
            try:
                out = fn()
            except BaseException:
                try:
                    execute(cur, f"ROLLBACK TO SAVEPOINT {name}")
                except Exception:
                    pass  # the transaction is gone (deadlock, lost connection): the original error tells
                raise
            execute(cur, f"RELEASE SAVEPOINT {name}")
            return out

    return policy.attempt(once, ctx.error_handling.max_retries, what,
                          retryable=lambda e: merr.errno(e) == 1205, kind_of=merr.classify)


def _describe(spec: TargetSpec, op: str, frame: pl.DataFrame) -> str:
    present = set(frame.get_column(OP).unique().to_list()) if op != "delete" and OP in frame.columns else set()
    ops = [n for code, n in (("I", "insert"), ("U", "update"), ("D", "delete")) if code in present]
    return policy.describe("/".join(ops) or op, f"{spec.schema}.{spec.table}")


def _run_unit(ctx: _Ctx, spec: TargetSpec, types: dict[str, MariaType], op: str, rows: Rows,
              columns: list[str], counts: TableCounts) -> None:
    def run(unit: Rows) -> BaseException | None:
        done, exc = _attempt(ctx, lambda: _describe(spec, op, unit.frame),
                             lambda: _execute_unit(ctx, spec, types, op, unit, columns))
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


def _bad_rows(ctx: _Ctx, spec: TargetSpec, frame: pl.DataFrame, exc: BaseException, counts: TableCounts) -> None:
    mode: policy.Mode = "scd2" if spec.scd2 else "upsert"
    ops = [policy.operation_of(o) for o in frame.get_column(OP).to_list()]
    decision = policy.decide(ctx.error_handling, ops, mode)
    first = frame.row(0, named=True)
    key = {k: first[k] for k in spec.key}
    error = merr.message(exc)
    if decision.stop or ctx.on_row_error is None:
        raise policy.row_error(f"{spec.schema}.{spec.table}", decision, error, key) from exc
    for op, row in zip(ops, frame.iter_rows(named=True), strict=True):
        row_key = {k: row[k] for k in spec.key}
        payload = {"key": row_key, "values": {c: row[c] for c in spec.data_columns if c in row},
                   "op": row.get(OP), "lsn": row.get(LSN), "ts": row.get(TS)}
        ctx.on_row_error(policy.BadRow(spec.schema, spec.table, op, row_key, payload, error))
    counts.failed += frame.height


def _utc_naive(ts: dt.datetime | None) -> dt.datetime | None:
    if ts is None or ts.tzinfo is None:
        return ts
    return ts.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _truncate(ctx: _Ctx, spec: TargetSpec, trunc: Truncate, counts: TableCounts) -> None:
    """Upsert: delete every row. SCD2: close every current version at the truncate's commit time."""
    target = qualified(spec.schema, spec.table)

    def run() -> dict[str, int]:
        with ctx.conn.cursor() as cur:
            if spec.scd2:
                cur_col = quote(spec.current_col)
                n = execute(cur, f"UPDATE {target} SET {quote(spec.end_col)} = COALESCE(%s, UTC_TIMESTAMP(6)),"
                            f" {cur_col} = 0 WHERE {cur_col} = 1", (_utc_naive(trunc.ts),))
                return {"closed": n, "truncates": 1}
            return {"deleted": execute(cur, f"DELETE FROM {target}"), "truncates": 1}

    done, exc = _attempt(ctx, f"truncate (delete) of {spec.schema}.{spec.table}", run)
    if exc is None:
        counts.add(done or {})
        return
    error = merr.message(exc)
    decision = policy.decide(ctx.error_handling, ["delete"], "scd2" if spec.scd2 else "upsert")
    if decision.stop or ctx.on_row_error is None:
        raise policy.row_error(f"{spec.schema}.{spec.table}", decision, error) from exc
    payload = {"truncate": True, "lsn": trunc.lsn, "ts": trunc.ts}
    ctx.on_row_error(policy.BadRow(spec.schema, spec.table, "delete", {}, payload, error))
    counts.failed += 1
