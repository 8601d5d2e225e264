"""The change-stream side of a run: slot lifecycle, full-load handoff, and the apply loop.

Order of acknowledgement (DESIGN.md): read a batch of whole transactions from
the slot, run it through the same plan as the full load, apply it to the
target in one transaction together with the checkpoint, commit, and only then
advance the slot. A crash anywhere replays at most the last batch, which the
checkpoint turns into a no-op.

Invariant kept for `continue`: the slot's confirmed position never passes the
target's checkpoint (idle advances write the checkpoint first). A slot that is
missing, invalidated, or ahead of the checkpoint (recreated) is a SlotLost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb import changes as ch
from trempy_nb.capture.reader import ChangeReader
from trempy_nb.capture.slot import (
    create_slot,
    drop_task_objects,
    emit_heartbeat,
    ensure_publication,
    publication_name,
    slot_name,
    slot_status,
)
from trempy_nb.capture.snapshot import create_slot_with_snapshot
from trempy_nb.catalog import describe_table
from trempy_nb.connections import mask
from trempy_nb.crash import crash_point
from trempy_nb.db import connect
from trempy_nb.errors import (
    SchemaChanged,
    SlotLost,
    TerminalError,
    TransientError,
    TrempyError,
    ValidationFailed,
)
from trempy_nb.fullload import target_spec
from trempy_nb.pipeline.plan import TablePlan, compile_plan
from trempy_nb.writer import errorpolicy as policy
from trempy_nb.writer.apply import TableApply, apply_batch
from trempy_nb.writer.checkpoint import read_checkpoint, reset_checkpoint, write_checkpoint
from trempy_nb.writer.ddl import STATE_SCHEMA, add_column, ensure_state_tables, ensure_target

HEARTBEAT_EVERY_S = float(os.environ.get("TREMPY_HEARTBEAT_S", "10"))  # idle heartbeat period
STATS_EVERY_S = 2.0


_SLOT_LSN_SET = sql.SQL(
    "UPDATE {}.checkpoints SET slot_lsn = GREATEST(COALESCE(slot_lsn, 0), %s) WHERE task = %s"
).format(sql.Identifier(STATE_SCHEMA))
_SHAPE_SET = sql.SQL(
    "INSERT INTO {}.source_shapes (task, schema_name, table_name, columns) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (task, schema_name, table_name) DO UPDATE SET columns = EXCLUDED.columns, updated_at = now()"
).format(sql.Identifier(STATE_SCHEMA))
_SHAPE_GET = sql.SQL(
    "SELECT schema_name, table_name, columns FROM {}.source_shapes WHERE task = %s"
).format(sql.Identifier(STATE_SCHEMA))
_SLOT_LSN_GET = sql.SQL("SELECT slot_lsn FROM {}.checkpoints WHERE task = %s").format(sql.Identifier(STATE_SCHEMA))


class _RecordingReader(ChangeReader):
    """A reader that writes every slot position it is about to confirm to the target first.

    So a legitimate slot never stands past what the target recorded, and a slot
    found further ahead was recreated: its missing changes are a loud SlotLost.
    The writes go through one connection of its own (a RabbitMQ producer confirms
    after every broker ack: a connection per confirm cost ~10 ms each).
    """

    def __init__(self, *args: Any, target: str, task_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target, self._task_name = target, task_name
        self._rec: psycopg.Connection | None = None

    def _advance(self, lsn: int) -> None:
        self._record(lsn)
        super()._advance(lsn)

    def _record(self, lsn: int) -> None:
        for attempt in (1, 2):
            try:
                if self._rec is None or self._rec.closed:
                    self._rec = connect(self._target, autocommit=True)
                self._rec.execute(_SLOT_LSN_SET, (int(lsn), self._task_name))
                return
            except psycopg.OperationalError:
                self._close_record()  # a target restart: one fresh connection, then give up loudly
                if attempt == 2:
                    raise

    def _close_record(self) -> None:
        if self._rec is not None:
            with contextlib.suppress(Exception):
                self._rec.close()
            self._rec = None

    def close(self) -> None:
        super().close()
        self._close_record()


@dataclass
class Handoff:
    needs_full_load: bool
    snapshot: str | None = None
    lsn: int | None = None
    ts: Any = None  # a source time at or before the snapshot: when full-load versions open


class CdcSession:
    """One task's change stream for one run."""

    def __init__(self, task: Any, plans: dict[tuple[str, str], TablePlan], source: str, target: str, *,
                 store: Any, run_id: str | None, counters: Any, stop: threading.Event) -> None:
        self.task, self.plans = task, dict(plans)
        self.settings = task.settings
        self.source, self.target = source, target
        self.store, self.run_id, self.counters, self.stop_event = store, run_id, counters, stop
        self.slot = slot_name(task.name)
        self.publication = publication_name(task.name)
        self.catch_up_target: int | None = None
        self.on_status: Any = None
        self._control: psycopg.Connection | None = None  # see `_on_source`
        self._control_lock = threading.Lock()

    @contextlib.contextmanager
    def _on_source(self) -> Iterator[psycopg.Connection]:
        """The session's one source connection for its small queries (WAL position, slot health,
        heartbeats), from any of its threads: a connection (and its authentication) per query cost
        ~5-10 ms each, and a catch-up polls the WAL position every 50 ms. A failed query drops it,
        so the next one reconnects (a restarted server)."""
        with self._control_lock:
            if self._control is None or self._control.closed:
                self._control = connect(self.source, autocommit=True,
                                        application_name=f"trempy_nb:{self.task.name}:control")
            try:
                yield self._control
            except BaseException:
                self._close_control()
                raise

    def _close_control(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._control.close()
            self._control = None

    def close(self) -> None:
        """Release the session's own source connection (the run's other connections are scoped)."""
        with self._control_lock:
            self._close_control()

    # slot lifecycle ------------------------------------------------------------------
    @contextlib.contextmanager
    def prepare(self) -> Iterator[Handoff]:
        """Decide between a fresh start (full load in the slot's snapshot) and a resume."""
        s = self.settings.task
        tables = [t.key for t in self.settings.tables]
        _check_name_lengths(self.settings)
        with connect(self.source, autocommit=True) as src, connect(self.target) as tgt:
            ensure_state_tables(tgt)
            if s.start_mode == "reload":
                drop_task_objects(src, self.task.name)
                reset_checkpoint(tgt, self.task.name)
                for table in ("load_state", "source_shapes"):
                    tgt.execute(sql.SQL("DELETE FROM {}.{} WHERE task = %s").format(
                        sql.Identifier(STATE_SCHEMA), sql.Identifier(table)), (self.task.name,))
            tgt.commit()
            checkpoint = read_checkpoint(tgt, self.task.name)
            row = tgt.execute(_SLOT_LSN_GET, (self.task.name,)).fetchone() if checkpoint is not None else None
            tgt.commit()
            status = slot_status(src, self.slot)
            if checkpoint is not None:
                self._check_slot(status, max(checkpoint, int(row[0] or 0) if row else 0))
                self._check_added_tables(tgt)
                self._check_shapes(tgt)
                ensure_publication(src, self.publication, tables)
                yield Handoff(False)
                return
            if status is not None:  # a slot without a checkpoint: an interrupted start; redo it
                drop_task_objects(src, self.task.name)
            ensure_publication(src, self.publication, tables)
            if s.replication_type == "full_load_and_cdc":
                row = src.execute("SELECT clock_timestamp()").fetchone()
                self._record_shapes(tgt)
                with create_slot_with_snapshot(self.source, self.slot) as (lsn, snapshot):
                    yield Handoff(True, snapshot, lsn, row[0] if row else None)
                return
            fl = self.settings.task.full_load_settings
            for plan in self.plans.values():  # no full load creates the target tables: do it here
                ensure_target(tgt, target_spec(plan, self.settings), create=fl.create_table_if_not_exists)
            tgt.commit()  # slot creation waits for every open transaction of the cluster
            lsn = create_slot(src, self.slot)
            write_checkpoint(tgt, self.task.name, lsn)
            tgt.execute(_SLOT_LSN_SET, (lsn, self.task.name))
            tgt.commit()
            self._record_shapes(tgt)
            yield Handoff(False)

    def _record_shapes(self, tgt: psycopg.Connection, keys: Any = None) -> None:
        """Write the source columns each table is planned with (see `_check_shapes`)."""
        for key, plan in self.plans.items():
            if keys is not None and key not in keys:
                continue
            cols = json.dumps([[c.name, c.pg_type] for c in plan.source.columns])
            tgt.execute(_SHAPE_SET, (self.task.name, key[0], key[1], cols))
        tgt.commit()

    def _check_shapes(self, tgt: psycopg.Connection) -> None:
        """`continue`: a source column the task was streaming that is gone or has another type now
        was dropped, renamed or retyped while the task was stopped. Its changes of the new shape
        cannot be applied faithfully: stop before any is (a running task catches it from the
        stream's Relation message instead)."""
        rows = tgt.execute(_SHAPE_GET, (self.task.name,)).fetchall()
        tgt.commit()
        recorded = {(r[0], r[1]): r[2] for r in rows}
        for key, plan in self.plans.items():
            before = recorded.get(key)
            if not before:
                continue
            now = {c.name: c.pg_type for c in plan.source.columns}
            gone = [name for name, _ in before if name not in now]
            if gone:
                raise SchemaChanged(
                    f"column(s) {', '.join(gone)} of {key[0]}.{key[1]} were dropped or renamed on the source"
                    " while the task was stopped; the table is stopped before any change of the new shape is"
                    " applied. Reload the task."
                )
            for name, typ in before:
                if now[name] != typ:
                    raise SchemaChanged(
                        f"column {name} of {key[0]}.{key[1]} changed type from {typ} to {now[name]} while the"
                        " task was stopped; reload the task"
                    )
        self._record_shapes(tgt)

    def _check_added_tables(self, tgt: psycopg.Connection) -> None:
        """`continue` with a table the task did not have before: without a full load of it, its
        existing rows would never reach the target; a cdc-only task just starts streaming it."""
        fl = self.settings.task.full_load_settings
        if self.settings.task.replication_type != "full_load_and_cdc":
            for plan in self.plans.values():  # columns added on the source meanwhile are added too
                ensure_target(tgt, target_spec(plan, self.settings), create=fl.create_table_if_not_exists,
                              add_missing=True)
            tgt.commit()
            return
        loaded = {
            (r[0], r[1])
            for r in tgt.execute(
                sql.SQL("SELECT schema_name, table_name FROM {}.load_state WHERE task = %s AND status = 'done'")
                .format(sql.Identifier(STATE_SCHEMA)), (self.task.name,)).fetchall()
        }
        tgt.commit()
        added = [".".join(t.key) for t in self.settings.tables if t.key not in loaded]
        if added:
            raise TerminalError(
                f"table(s) {', '.join(added)} were added to task {self.task.name} after its full load: their"
                " existing rows are not on the target. Rerun with start_mode reload, or replicate them"
                " in a task of their own."
            )
        for plan in self.plans.values():  # columns added on the source while stopped
            ensure_target(tgt, target_spec(plan, self.settings), create=False, add_missing=True)
        tgt.commit()

    def _check_slot(self, status: Any, known: int) -> None:
        """`known`: the furthest position the target recorded for this slot (checkpoint or advance)."""
        where = ch.int_to_lsn(known)
        if status is None:
            raise SlotLost(
                f"replication slot {self.slot} is missing but task {self.task.name} has a checkpoint at {where}:"
                " changes since then are lost. Rerun with start_mode reload (full load again)."
            )
        if status.lost:
            raise SlotLost(
                f"replication slot {self.slot} was invalidated (wal_status lost, max_slot_wal_keep_size"
                " exceeded): changes are lost. Rerun with start_mode reload."
            )
        if (status.confirmed_flush_lsn or 0) > known:
            raise SlotLost(
                f"replication slot {self.slot} starts at {ch.int_to_lsn(status.confirmed_flush_lsn or 0)},"
                f" after the task's checkpoint {where}: it was dropped and recreated, changes in between"
                " are lost. Rerun with start_mode reload."
            )

    def mark_loaded(self, lsn: int | None) -> None:
        """After the full load committed: the stream starts at the slot's consistent point."""
        with connect(self.target) as tgt:
            write_checkpoint(tgt, self.task.name, int(lsn or 0))
            tgt.execute(_SLOT_LSN_SET, (int(lsn or 0), self.task.name))
            tgt.commit()

    # streaming -----------------------------------------------------------------------
    def stream(self, until_caught_up: bool = False) -> int:
        """Apply batches until stopped, or until every change committed before now is applied."""
        if self.settings.task.transport == "rabbitmq":
            from trempy_nb.transport.rabbitmq import stream_session

            return stream_session(self, until_caught_up=until_caught_up)
        if until_caught_up:
            self.catch_up_target = self._current_lsn()
        self._refresh_lag()  # slot health before reading: warns if the slot is close to being lost
        # Reading and decoding the next batch overlaps applying this one: a reader thread owns
        # the ChangeReader (and its connection) and hands batches over a bounded queue; the
        # end LSNs this thread committed go back to it and it advances the slot before its next
        # peek (in order, only past committed batches), with a final drain on the way out.
        committed: deque[int] = deque()
        ahead = _ReadAhead(self, self._new_reader(), committed)
        applied = 0
        last_stats = 0.0
        tgt: psycopg.Connection | None = None
        failures = 0
        try:
            while True:
                if self.stop_event.is_set() and self.catch_up_target is None:
                    break
                try:
                    if tgt is None or tgt.closed:
                        tgt = connect(self.target, application_name=f"trempy_nb:{self.task.name}:apply")
                    item = ahead.get(timeout=0.5)  # re-raises the reader thread's error
                    if item is _CAUGHT_UP:
                        break
                    if item is None:  # idle (or nothing yet): the reader thread heartbeats
                        self._set_status("streaming")
                        continue
                    applied += self._apply(item, ahead, tgt)
                    failures = 0
                    self._set_status("streaming")
                except (psycopg.Error, TrempyError, OSError) as exc:
                    # transient (a restarting server, a lost connection): reconnect, re-read, retry
                    budget = policy.reconnect_budget(self.settings.error_handling.max_retries)
                    if not policy.is_transient(exc) or failures >= budget:
                        raise
                    failures += 1
                    self.store.log(self.task.name, self.run_id, "WARNING",
                                   mask(f"transient error, retrying ({failures}): {exc}"))
                    with contextlib.suppress(Exception):
                        if tgt is not None:
                            tgt.close()
                    tgt = None
                    with contextlib.suppress(Exception):
                        ahead.close(drain=True)  # confirms it could not make stay in `committed`
                    ahead = _ReadAhead(self, self._new_reader(), committed)
                    time.sleep(policy.backoff(failures, base=0.4, cap=5.0))
                if time.monotonic() - last_stats > STATS_EVERY_S:
                    self._refresh_lag()
                    last_stats = time.monotonic()
        except BaseException:
            with contextlib.suppress(Exception):
                ahead.close(drain=True)
            raise
        finally:
            if tgt is not None:
                with contextlib.suppress(Exception):
                    tgt.close()
        ahead.close(drain=True, raise_errors=True)  # the last advances; their errors reach the caller
        self._refresh_lag()
        return applied

    def _new_reader(self, *, stream: bool = True) -> ChangeReader:
        return _RecordingReader(self.source, self.slot, self.publication, max_changes=self._batch_size(),
                                application_name=f"trempy_nb:{self.task.name}:capture", target=self.target,
                                task_name=self.task.name, stream=stream)

    def _set_status(self, status: str) -> None:
        if self.on_status:
            self.on_status(status)

    def _batch_size(self) -> int:
        return int(os.environ.get("TREMPY_BATCH_CHANGES", "20000"))

    def _flushed_past(self, lsn: int) -> bool:
        """Decoding sees only flushed WAL (asynchronous commits may lag): caught up only past it."""
        with self._on_source() as src:
            row = src.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        if row and ch.lsn_to_int(row[0]) >= lsn:
            return True
        time.sleep(0.05)
        return False

    def _current_lsn(self) -> int:
        with self._on_source() as src:
            row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return ch.lsn_to_int(row[0]) if row else 0

    def _heartbeat(self, reader: ChangeReader, tgt: psycopg.Connection) -> None:
        """Idle: write a heartbeat into the captured database's WAL; the reader's next read
        moves the slot past it, so a busy neighbour database's WAL is not pinned."""
        with self._on_source() as src:
            emit_heartbeat(src)

    def _apply(self, batch: ch.ChangeBatch, ahead: _ReadAhead, tgt: psycopg.Connection) -> int:
        result = self._write(batch, None, tgt, self.task.name)
        crash_point("after_commit_before_advance")
        ahead.confirm(batch.end_lsn)  # the reader thread advances the slot before its next peek
        self._record(result, batch)
        return batch.n_changes

    def apply_decoded(self, batch: ch.ChangeBatch, tgt: psycopg.Connection, *, checkpoint_task: str | None = None,
                      on_table: Any = None) -> Any:
        """Apply a batch that came through a transport (no reader, no slot advance): the same
        pipeline and writer as `_apply`, one target transaction with the checkpoint of
        `checkpoint_task` (default: the task's). `on_table(key)` is called before each source
        table's pipeline and write, so the caller can pin a failure on its table."""
        result = self._write(batch, None, tgt, checkpoint_task or self.task.name, on_table)
        self._record(result, batch)
        return result

    def _write(self, batch: ch.ChangeBatch, reader: ChangeReader | None, tgt: psycopg.Connection,
               checkpoint_task: str, on_table: Any = None) -> Any:
        items: list[TableApply] = []
        keys: list[tuple[str, str]] = []
        counts: dict[tuple[str, str], int] = {}
        for tc in batch.tables:
            if on_table is not None:
                on_table(tc.key)
            plan = self._plan_for_shape(tc, reader, tgt)
            frame = tc.frame
            before = frame.get_column(ch.OP).value_counts() if frame.height else None
            out = plan.apply_changes(frame) if frame.height else frame
            name = f"{tc.schema}.{tc.table}"
            if before is not None:
                for op, n in before.iter_rows():
                    self.counters.read[(name, _op_name(op))] += n
                moved_out = frame.height and int(
                    (frame.get_column(ch.OP) != "D").sum() - (out.get_column(ch.OP) != "D").sum()
                )
                if moved_out:
                    self.counters.filtered[(name, "update/insert")] += moved_out
            if tc.truncated_at:
                self.counters.read[(name, "truncate")] += len(tc.truncated_at)
            counts[tc.key] = out.height
            keys.append(tc.key)
            items.append(TableApply(spec=target_spec(plan, self.settings), frame=out,
                                    truncated_at=list(tc.truncated_at)))

        def on_row_error(bad: policy.BadRow) -> None:
            self.counters.failed[(f"{bad.schema}.{bad.table}", bad.operation)] += 1
            self.store.record_error(self.task.name, self.run_id, bad.schema, bad.table, bad.operation, bad.error,
                                    bad.payload, key=bad.key)

        return apply_batch(tgt, checkpoint_task, _Announced(items, keys, on_table) if on_table else items,
                           batch.end_lsn, error_handling=self.settings.error_handling, on_row_error=on_row_error)

    def _record(self, result: Any, batch: ch.ChangeBatch) -> None:
        c = self.counters
        c.batches += 1
        c.changes += batch.n_changes
        c.last_lsn = batch.end_lsn
        names = {(p.target_schema, p.target_table): f"{k[0]}.{k[1]}" for k, p in self.plans.items()}
        for key, counts in (getattr(result, "tables", {}) or {}).items():
            name = names.get(tuple(key), ".".join(key))
            for field, op in _APPLIED_OPS:
                n = int(getattr(counts, field, 0) or 0)
                if n:
                    c.applied[(name, op)] += n
        last_ts = None
        for tc in batch.tables:
            if tc.frame.height:
                ts = tc.frame.get_column(ch.TS).max()
                last_ts = ts if last_ts is None or (ts is not None and ts > last_ts) else last_ts
        if last_ts is not None:
            c.lag_seconds = max(0.0, time.time() - last_ts.timestamp())
        c.history.append((time.time(), c.changes, c.lag_seconds))
        del c.history[:-600]
        for tc in batch.tables:
            self.store.record_stats(self.run_id, self.task.name, tc.schema, tc.table, "cdc",
                                    rows_read=tc.frame.height)

    def _refresh_lag(self) -> None:
        with contextlib.suppress(Exception), self._on_source() as src:
            st = slot_status(src, self.slot)
            row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            if st is not None and row:
                self.counters.retained_bytes = int(st.retained_bytes or 0)
                self.counters.wal_status = st.wal_status or ""
                self.counters.lag_bytes = max(0, ch.lsn_to_int(row[0]) - (st.confirmed_flush_lsn or 0))
                self._warn_wal(st)

    def _warn_wal(self, st: Any) -> None:
        """Warn (once per state) while max_slot_wal_keep_size is about to invalidate the slot:
        it retains more WAL than may still be written before it is lost, or is unreserved."""
        danger = st.wal_status == "unreserved" or (
            st.safe_wal_size is not None and st.retained_bytes is not None and st.safe_wal_size < st.retained_bytes
        )
        state = (st.wal_status, danger)
        if danger and getattr(self, "_wal_warned", None) != state:
            self._wal_warned = state
            self.store.log(self.task.name, self.run_id, "WARNING",
                           f"replication slot {self.slot}: wal_status {st.wal_status}, only"
                           f" {max(0, int(st.safe_wal_size or 0)):,} bytes of WAL left before"
                           f" max_slot_wal_keep_size invalidates it (it retains {int(st.retained_bytes or 0):,});"
                           " the task must catch up or the slot will be lost")

    def _plan_for_shape(self, tc: ch.TableChanges, reader: ChangeReader | None,
                        tgt: psycopg.Connection) -> TablePlan:
        """Follow a source schema change: a new column is added to the target; others stop the table."""
        plan = self.plans[tc.key]
        known = {c.name: c.pg_type for c in plan.source.columns}
        cols = tc.data_columns
        if all(c in known for c in cols) and len(cols) == len(known):
            return plan
        dropped = [c for c in known if c not in cols]
        with connect(self.source) as src:
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
            add_column(tgt, spec, col)
        tgt.commit()
        self.plans[tc.key] = new_plan
        self._record_shapes(tgt, [tc.key])
        self.store.log(self.task.name, self.run_id, "INFO",
                       f"{tc.schema}.{tc.table}: new source column(s) {', '.join(c.name for c in added)} added to the target")
        return new_plan


_CAUGHT_UP = object()  # read-ahead item: every change up to the catch-up target was handed out


class _ReadAhead:
    """The reader thread of the local stream.

    It owns the ChangeReader and its source connection: it advances the slot over
    the end LSNs the applying thread committed (`confirm`, in order) before each
    peek (not after each batch: an advance, like a peek, decodes the WAL again
    from the slot's restart_lsn, so both are paid once per peek window), reads
    the next batch while the current one is applied, and hands it over a
    bounded queue (one batch ahead). Idle, it heartbeats; caught up, it
    hands over `_CAUGHT_UP`. Its error is handed over like an item, so `get`
    raises it in the applying thread (never swallowed). `close` stops and joins
    it, then makes the last advances from the calling thread.
    """

    DEPTH = 1  # batches decoded ahead of the one being applied (memory: about DEPTH + 2 batches)

    def __init__(self, session: CdcSession, reader: ChangeReader, committed: deque[int]) -> None:
        self.session = session
        self.reader = reader
        self.committed = committed  # shared with the next _ReadAhead after a reconnect
        self._items: queue.Queue[Any] = queue.Queue(maxsize=self.DEPTH)
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._undelivered: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"trempy-read-{session.task.name}", daemon=True)
        self._thread.start()

    # applying thread ------------------------------------------------------------------
    def get(self, timeout: float) -> Any:
        """The next batch, `_CAUGHT_UP`, or None (nothing within `timeout`); raises the reader's error."""
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return None
        self._wake.set()  # room in the queue
        if isinstance(item, _Failed):
            raise item.error
        return item

    def confirm(self, lsn: int) -> None:
        """The batch ending at commit `lsn` is committed on the target: advance the slot past it."""
        self.committed.append(lsn)
        self._wake.set()

    def close(self, *, drain: bool = False, raise_errors: bool = False) -> None:
        """Stop and join the thread, then (drain) advance the slot over what was committed."""
        self._halt.set()
        self._wake.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._items.get_nowait()  # unblock a put
            self._thread.join(timeout=0.1)
        try:
            if drain:
                self._drain()
            if raise_errors and self._undelivered is not None:
                raise self._undelivered
        except Exception:
            if raise_errors:
                raise
        finally:
            with contextlib.suppress(Exception):
                self.reader.close()

    # reader thread --------------------------------------------------------------------
    def _drain(self) -> None:
        if not self.committed:
            return
        lsn = self.committed[-1]  # appended in commit order: the last is the furthest
        self.reader.confirm(lsn)
        crash_point("after_advance")
        while self.committed and self.committed[0] <= lsn:
            self.committed.popleft()

    def _put(self, item: Any, drain: bool = True) -> bool:
        """Hand `item` over once there is room; meanwhile (`drain`) advance the slot as batches commit."""
        while not self._halt.is_set():
            if drain:
                self._drain()
            try:
                self._items.put_nowait(item)
                return True
            except queue.Full:
                pass
            if not self.reader.prefetch(0.02):  # stream mode: the next batch fills meanwhile
                self._wake.wait(0.02)
            self._wake.clear()
        return False

    def _run(self) -> None:
        s = self.session
        last_beat = time.monotonic()
        try:
            while not self._halt.is_set():
                if not self.reader.has_buffered(s.catch_up_target):
                    self._drain()  # the next read peeks: advance first, so it re-reads less
                if s.stop_event.is_set() and s.catch_up_target is None:
                    return
                batch = self.reader.read_batch(upto_lsn=s.catch_up_target)
                if batch is not None:
                    self._put(batch, drain=not self.reader.has_buffered(s.catch_up_target))
                    continue
                if s.catch_up_target is not None and s._flushed_past(s.catch_up_target):
                    self._put(_CAUGHT_UP)
                    return
                if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
                    s._heartbeat(self.reader, None)
                    last_beat = time.monotonic()
                self._wake.clear()
                if self.committed:
                    continue
                self._wake.wait(s.settings.task.interval_seconds)
        except BaseException as exc:  # handed to the applying thread, which raises it
            if not self._put(_Failed(exc), drain=False):
                self._undelivered = exc  # closing meanwhile: `close(raise_errors=True)` raises it


@dataclass
class _Failed:
    error: BaseException


class _Announced(list):
    """The writer's table list, calling `on_table(key)` as each table is taken up (failure attribution)."""

    def __init__(self, items: list[TableApply], keys: list[tuple[str, str]], on_table: Any) -> None:
        super().__init__(items)
        self._keys, self._on_table = keys, on_table

    def __iter__(self) -> Iterator[TableApply]:
        for key, item in zip(self._keys, list.__iter__(self), strict=True):
            self._on_table(key)
            yield item
        self._on_table(None)  # past the tables: a failure now (checkpoint, commit) is the batch's


_APPLIED_OPS = (("inserted", "insert"), ("updated", "update"), ("deleted", "delete"),
                ("opened", "scd2 open"), ("closed", "scd2 close"), ("truncates", "truncate"))


def _check_name_lengths(settings: Any) -> None:
    """Changes arrive under the source's real names: a name over 63 bytes, which PostgreSQL
    silently truncates in SQL (so a full load finds the table), would never match them."""
    for i, t in enumerate(settings.tables):
        for field, name in (("schema_name", t.schema_name), ("table_name", t.table_name)):
            if len(name.encode()) > 63:
                raise ValidationFailed(
                    f"tables[{i}].{field}: {name!r} is {len(name.encode())} bytes; PostgreSQL names"
                    " have at most 63 bytes (longer ones are truncated), name the table as the catalog does"
                )


def _op_name(op: str) -> str:
    return {"I": "insert", "U": "update", "D": "delete"}.get(op, op)


def frame_of_pending(task: Any, limit: int = 50) -> pl.DataFrame:
    """The next changes of a task's slot, transformed, without consuming them."""
    plans = task.plans
    reader = ChangeReader(task.source_uri, slot_name(task.name), publication_name(task.name), max_changes=limit)
    try:
        batch = reader.peek_changes(limit)
    except TransientError as exc:
        if "busy" not in str(exc):
            raise
        raise TrempyError(
            f"task {task.name} is running: its runner streams from the slot, so pending changes"
            " are being applied (see the runner's stats); preview_changes looks at a stopped task"
        ) from None
    finally:
        reader.close()
    frames = []
    if batch is None:
        return pl.DataFrame()
    for tc in batch.tables:
        plan = plans.get(tc.key)
        if plan is None or not tc.frame.height:
            continue
        out = plan.apply_changes(tc.frame)
        out = out.with_columns(pl.lit(f"{plan.target_schema}.{plan.target_table}").alias("target"))
        data_cols = [c for c in out.columns if c not in ch.META_SCHEMA and c != "target"]
        frames.append(out.select(["target", ch.OP, ch.LSN, ch.TS, *data_cols]).rename(
            {ch.OP: "op", ch.LSN: "lsn", ch.TS: "commit_time"}))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed").head(limit)
