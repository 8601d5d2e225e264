"""The change applier: the engine's `ChangeSink`.

A batch goes through the same plan as the full load (per source table: filters,
transformations, target columns), then to the writer in ONE target transaction
with the checkpoint of its stream (the target dialect's `apply_batch`, from
`writer.apply` or `writer.mariadb.apply`: upsert or SCD2, bad rows through the
one error policy). After the commit the sink calls the
transport's checkpoint, then counts the batch (dashboard counters, per-table
stats in the metadata store).

A source schema change met in the stream is followed here: a new column is
added to the target and the table re-planned; a dropped, renamed or retyped
column stops the table (SchemaChanged) before any change of the new shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from trempy_nb import changes as ch
from trempy_nb.catalog import describe_table
from trempy_nb.db import connect, task_app_name
from trempy_nb.engine.counters import Counters
from trempy_nb.engine.session import record_shapes
from trempy_nb.errors import Fenced, SchemaChanged
from trempy_nb.fullload import target_spec
from trempy_nb.metadata import MetadataStore
from trempy_nb.ops import BATCH_MESSAGE, CDC_OP_PREFIX
from trempy_nb.pipeline.plan import TablePlan, compile_plan
from trempy_nb.settings import TaskSettings
from trempy_nb.transport.base import Checkpoint, TableHook
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer.apply import ApplyResult, TableApply
from trempy_nb.writer.dialect import POSTGRES, TargetDialect
from trempy_nb.writer.fence import Fence, lost_message

if TYPE_CHECKING:
    from trempy_nb.engine.lifecycle import TableLifecycle

_APPLIED_OPS = (("inserted", "insert"), ("updated", "update"), ("deleted", "delete"),
                ("opened", "scd2 open"), ("closed", "scd2 close"), ("truncates", "truncate"))


class ChangeApplier:
    """Applies change batches of one task to its target (a `ChangeSink`); owns one target connection."""

    def __init__(self, task: str, settings: TaskSettings, plans: dict[tuple[str, str], TablePlan], source: str,
                 target: str, *, store: MetadataStore, run_id: str, counters: Counters,
                 connection_name: str = "apply", dialect: TargetDialect = POSTGRES,
                 fence: Fence | None = None) -> None:
        self.task, self.settings, self.plans = task, settings, plans  # plans: shared with the session
        self.dialect = dialect  # the target's database: every target I/O goes through it
        self.source, self.target = source, target
        self.store, self.run_id, self.counters = store, run_id, counters
        self.application_name = task_app_name(task, connection_name)
        self.fence = fence  # checked and stored in every batch's transaction (`writer.fence`)
        self._tgt: Any = None  # a connection of the target's dialect
        self._rejected: dict[str, int] = {}  # rows of the current batch rejected, by table
        #: per-table lifecycle (`engine.lifecycle`): held tables and load points; its lock spans each batch
        self.lifecycle: TableLifecycle | None = None

    # ChangeSink ----------------------------------------------------------------------
    def put(self, batch: ch.ChangeBatch, checkpoint: Checkpoint | None = None, *,
            stream: str | None = None, on_table: TableHook | None = None) -> int:
        t0 = time.perf_counter()
        self._rejected = {}
        lc = self.lifecycle
        with lc.batch() if lc is not None else contextlib.nullcontext():
            try:
                result = self._write(batch, self.connection, stream or self.task, on_table)
            except self.dialect.errors as exc:
                self._raise_if_fenced(exc)
                raise
            if checkpoint is not None:
                checkpoint(batch.end_lsn)
        self._record(result, batch, (time.perf_counter() - t0) * 1000)
        return batch.n_changes

    def _raise_if_fenced(self, exc: BaseException) -> None:
        """A failed write of a fenced run (its connection was evicted): when a newer epoch holds the
        target, this copy lost its lease; no retry can help."""
        fence = self.fence
        if fence is None:
            return
        stored: int | None = None
        with contextlib.suppress(Exception):
            conn = self.dialect.connect(self.target, application_name=self.application_name)
            try:
                stored = self.dialect.read_fence(conn, fence.key or self.task)
            finally:
                conn.close()
        if stored is not None and stored > fence.epoch:
            raise Fenced(lost_message(fence.key or self.task, stored, fence.epoch)) from exc

    def durable_lsn(self, stream: str | None = None) -> int | None:
        try:
            value = self.dialect.read_checkpoint(self.connection, stream or self.task)
            self.connection.commit()
            return value
        except self.dialect.errors:
            self.reset()
            raise

    def reset(self) -> None:
        if self._tgt is not None:
            with contextlib.suppress(Exception):
                if self.dialect.usable(self._tgt):
                    self._tgt.rollback()
                    return
            with contextlib.suppress(Exception):
                self._tgt.close()
            self._tgt = None

    def close(self) -> None:
        if self._tgt is not None:
            with contextlib.suppress(Exception):
                self._tgt.close()
            self._tgt = None

    @property
    def connection(self) -> Any:
        if self._tgt is None or not self.dialect.usable(self._tgt):
            self._tgt = self.dialect.connect(self.target, application_name=self.application_name)
        return self._tgt

    # the work ------------------------------------------------------------------------
    def _write(self, batch: ch.ChangeBatch, tgt: Any, checkpoint_task: str,
               on_table: TableHook | None) -> ApplyResult:
        items: list[TableApply] = []
        keys: list[tuple[str, str]] = []
        tables_in = batch.tables
        extra: dict[str, Any] = {}
        if self.lifecycle is not None:  # held tables' changes go to the target's held_changes instead
            tables_in, held = self.lifecycle.split(batch)
            if held:
                extra["also"] = self.lifecycle.hold_writer(held, batch.end_lsn)
        for tc in tables_in:
            if on_table is not None:
                on_table(tc.key)
            plan = self._plan_for_shape(tc, tgt)
            frame = tc.frame
            before = frame.get_column(ch.OP).value_counts() if frame.height else None
            out = plan.apply_changes(frame) if frame.height else frame
            name = f"{tc.schema}.{tc.table}"
            if before is not None:
                for op, n in before.iter_rows():
                    self.counters.read[(name, _op_name(op))] += n
                moved_out = _not_deletes(frame) - _not_deletes(out)
                if moved_out:
                    self.counters.filtered[(name, "update/insert")] += moved_out
            if tc.truncated_at:
                self.counters.read[(name, "truncate")] += len(tc.truncated_at)
            keys.append(tc.key)
            items.append(TableApply(spec=target_spec(plan, self.settings), frame=out,
                                    truncated_at=list(tc.truncated_at)))

        def on_row_error(bad: policy.BadRow) -> None:
            self.counters.failed[(f"{bad.schema}.{bad.table}", bad.operation)] += 1
            self.store.record_error(self.task, self.run_id, bad.schema, bad.table, bad.operation, bad.error,
                                    bad.payload, key=bad.key)
            self.store.record_stats(self.run_id, self.task, bad.schema, bad.table, CDC_OP_PREFIX + bad.operation,
                                    rows_failed=1)
            name = f"{bad.schema}.{bad.table}"
            self._rejected[name] = self._rejected.get(name, 0) + 1  # the batch summary says how many

        tables = _Announced(items, keys, on_table) if on_table is not None else items
        return self.dialect.apply_batch(tgt, checkpoint_task, tables, batch.end_lsn,
                                        error_handling=self.settings.error_handling, on_row_error=on_row_error,
                                        fence=self.fence, **extra)

    def _record(self, result: ApplyResult, batch: ch.ChangeBatch, ms: float = 0.0) -> None:
        c = self.counters
        c.batches += 1
        c.changes += batch.n_changes
        c.last_lsn = batch.end_lsn
        sources = {(p.target_schema, p.target_table): k for k, p in self.plans.items()}
        applied: dict[tuple[str, str, str], int] = {}  # (source schema, table, op) -> rows of this batch
        for key, counts in (result.tables or {}).items():
            src = sources.get((key[0], key[1]), (key[0], key[1]))
            for field, op in _APPLIED_OPS:
                n = int(getattr(counts, field, 0) or 0)
                if n:
                    c.applied[(f"{src[0]}.{src[1]}", op)] += n
                    applied[(src[0], src[1], op)] = applied.get((src[0], src[1], op), 0) + n
        last_ts: datetime | None = None
        for tc in batch.tables:
            if tc.frame.height:
                ts = tc.frame.get_column(ch.TS).max()
                if isinstance(ts, datetime) and (last_ts is None or ts > last_ts):
                    last_ts = ts
        if last_ts is not None:
            c.lag_seconds = max(0.0, time.time() - last_ts.timestamp())
        c.history.append((time.time(), c.changes, c.lag_seconds))
        del c.history[:-600]
        for tc in batch.tables:
            self.store.record_stats(self.run_id, self.task, tc.schema, tc.table, "cdc",
                                    rows_read=tc.frame.height)
        for (schema, table, op), n in applied.items():  # what the metrics count, by operation
            self.store.record_stats(self.run_id, self.task, schema, table, CDC_OP_PREFIX + op, rows_written=n)
        if batch.n_changes or self._rejected:  # an empty batch only moves the checkpoint: no record
            self._summarize(batch, applied, ms)

    def _summarize(self, batch: ch.ChangeBatch, applied: dict[tuple[str, str, str], int], ms: float) -> None:
        """One INFO record per applied batch (never one per row): the LSN range, rows per operation
        and table, milliseconds, lag; WARNING when rows were rejected (bisected out and recorded)."""
        tables = sorted({f"{tc.schema}.{tc.table}" for tc in batch.tables})
        rows: dict[str, dict[str, int]] = {}
        for (schema, table, op), n in applied.items():
            rows.setdefault(f"{schema}.{table}", {})[op] = n
        rejected = self._rejected
        c = self.counters
        ops = ", ".join(f"{op} {n:,}" for op, n in sorted(_sum_ops(rows).items())) or "nothing to write"
        text = (f"{BATCH_MESSAGE}: {batch.n_changes:,} change(s) {ch.int_to_lsn(batch.first_lsn)}.."
                f"{ch.int_to_lsn(batch.end_lsn)} ({ops}) in {ms:,.0f} ms")
        if rejected:
            text += f"; {sum(rejected.values()):,} row(s) rejected and recorded (see errors)"
        self.store.log(self.task, self.run_id, "WARNING" if rejected else "INFO", text,
                       table=tables[0] if len(tables) == 1 else None,
                       fields={"event": "batch", "first_lsn": ch.int_to_lsn(batch.first_lsn),
                               "end_lsn": ch.int_to_lsn(batch.end_lsn), "changes": batch.n_changes,
                               "transactions": batch.n_transactions, "rows": rows, "rejected": rejected,
                               "tables": tables, "ms": round(ms, 1), "lag_s": round(c.lag_seconds, 3),
                               "lag_bytes": int(c.lag_bytes)})

    def plan_for_shape(self, tc: ch.TableChanges, tgt: Any) -> TablePlan:
        """The plan for these changes' source shape (the lifecycle's replay of held changes asks too)."""
        return self._plan_for_shape(tc, tgt)

    def _plan_for_shape(self, tc: ch.TableChanges, tgt: Any) -> TablePlan:
        """Follow a source schema change: a new column is added to the target; others stop the table."""
        plan = self.plans[tc.key]
        known = {c.name: c.pg_type for c in plan.source.columns}
        cols = tc.data_columns
        if all(c in known for c in cols) and len(cols) == len(known):
            return plan
        dropped = [c for c in known if c not in cols]
        with connect(self.source, application_name=f"{self.application_name}-catalog"[:63]) as src:
            info = describe_table(src, tc.schema, tc.table)
        if dropped:
            if any(c not in {x.name for x in info.columns} for c in dropped):
                raise SchemaChanged(
                    f"column(s) {', '.join(dropped)} of {tc.schema}.{tc.table} were dropped or renamed on the source;"
                    " the table is stopped before any change of the new shape is applied. Reload the task."
                )
            # the plan was compiled from a catalog newer than the stream (a column added since
            # these changes were committed): plan the stream's own shape; the column comes later
            info = dataclasses.replace(info, columns=tuple(c for c in info.columns if c.name in cols))
        new_plan = compile_plan(self.settings, info)
        for c in info.columns:
            if c.name in known and known[c.name] != c.pg_type:
                raise SchemaChanged(
                    f"column {c.name} of {tc.schema}.{tc.table} changed type from {known[c.name]} to {c.pg_type};"
                    " reload the task"
                )
        spec = target_spec(new_plan, self.settings)
        added = [c for c in new_plan.target_columns if c.name not in {x.name for x in plan.target_columns}]
        for col in added:
            self.dialect.add_column(tgt, spec, col)
        tgt.commit()
        self.plans[tc.key] = new_plan
        record_shapes(self.dialect, tgt, self.task, self.plans, [tc.key])
        self.store.log(self.task, self.run_id, "INFO",
                       f"{tc.schema}.{tc.table}: new source column(s) {', '.join(c.name for c in added)} added to the target",
                       table=f"{tc.schema}.{tc.table}",
                       fields={"event": "schema_change", "added": [c.name for c in added]})
        return new_plan


class _Announced(list[TableApply]):
    """The writer's table list, calling `on_table(key)` as each table is taken up (failure attribution)."""

    def __init__(self, items: list[TableApply], keys: list[tuple[str, str]], on_table: TableHook) -> None:
        super().__init__(items)
        self._keys, self._on_table = keys, on_table

    def __iter__(self) -> Iterator[TableApply]:
        for key, item in zip(self._keys, list.__iter__(self), strict=True):
            self._on_table(key)
            yield item
        self._on_table(None)  # past the tables: a failure now (checkpoint, commit) is the batch's


def _sum_ops(rows: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for per_op in rows.values():
        for op, n in per_op.items():
            out[op] = out.get(op, 0) + n
    return out


def _not_deletes(frame: pl.DataFrame) -> int:
    return frame.height - int(frame.get_column(ch.OP).eq("D").sum())


def _op_name(op: str) -> str:
    return {"I": "insert", "U": "update", "D": "delete"}.get(op, op)
