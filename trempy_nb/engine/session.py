"""The slot session of one run: the slot's lifecycle, the full-load hand-off, and the `StreamHooks`
a transport calls while streaming.

`prepare` decides between a fresh start (create the slot with an exported
snapshot, full-load in it, `mark_loaded`) and a resume (`continue`), checking on
resume that nothing was lost meanwhile: the slot exists, is valid and did not
move past the target's record of it (a recreated slot), no table was added
without its full load, no column the task streams was dropped or retyped.

Invariant kept for `continue`: the slot's confirmed position never passes the
target's checkpoint (idle advances write the checkpoint first), and every
position is written to the target before it is confirmed (`_RecordingReader`).
A slot that is missing, invalidated, or ahead of the target's record is a SlotLost.

Every target I/O goes through the run's `TargetDialect` (`writer.dialect`): the
same steps for a PostgreSQL and a MariaDB/MySQL target.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from trempy_nb import changes as ch
from trempy_nb.capture.reader import ChangeReader
from trempy_nb.capture.slot import (
    SlotStatus,
    create_slot,
    drop_task_objects,
    emit_heartbeat,
    ensure_publication,
    publication_name,
    slot_name,
    slot_status,
)
from trempy_nb.capture.snapshot import create_slot_with_snapshot
from trempy_nb.capture.stream import FEEDBACK_EVERY_S
from trempy_nb.db import connect, task_app_name
from trempy_nb.engine.counters import Counters
from trempy_nb.engine.lifecycle import parse_table
from trempy_nb.engine.result import RunnableTask
from trempy_nb.errors import SchemaChanged, SlotLost, TerminalError, ValidationFailed
from trempy_nb.fullload import target_spec
from trempy_nb.metadata import MetadataStore
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.redact import mask
from trempy_nb.settings import TaskSettings
from trempy_nb.transport.base import HEARTBEAT_EVERY_S, CatchUp, ChangeSource, DeadLetter
from trempy_nb.writer.dialect import POSTGRES, TargetDialect
from trempy_nb.writer.fence import Fence


class _RecordingReader(ChangeReader):
    """A reader that writes every slot position it is about to confirm to the target first.

    So a legitimate slot never stands past what the target recorded, and a slot
    found further ahead was recreated: its missing changes are a loud SlotLost.
    The writes go through one connection of its own (a RabbitMQ producer confirms
    after every broker ack: a connection per confirm cost ~10 ms each).

    Stream mode does not wait for the row while a batch is being applied (the apply
    transaction holds it FOR UPDATE until it commits): waiting blocked the read-ahead thread
    for a whole apply per batch (measured: 26 waits, 2.3 s of a 6 s catch-up), so reading no
    longer overlapped applying. The position is then confirmed with a later one instead, and
    at the latest after RECORD_DEFER_S (waiting then) or on close.
    """

    #: the longest a stream defers confirming because the apply holds the checkpoint row
    RECORD_DEFER_S = FEEDBACK_EVERY_S

    def __init__(self, uri: str, slot: str, publication: str, max_changes: int, *, application_name: str,
                 target: str, task_name: str, stream: bool, dialect: TargetDialect = POSTGRES,
                 fence: Fence | None = None, on_advance: Callable[[int], None] | None = None) -> None:
        super().__init__(uri, slot, publication, max_changes=max_changes, application_name=application_name,
                         stream=stream)
        self._target, self._task_name, self._dialect, self._fence = target, task_name, dialect, fence
        self._rec: Any = None  # a connection of the target's dialect
        self._deferred = 0  # a position not confirmed yet: its record found the row busy
        self._recorded_at = time.monotonic()
        self._on_advance = on_advance  # told each position the slot moved to (the session's heartbeats)

    def _advance(self, lsn: int) -> None:
        wait = not self.stream or time.monotonic() - self._recorded_at >= self.RECORD_DEFER_S
        if not self._record(lsn, wait=wait):
            self._deferred = max(self._deferred, lsn)  # a later advance (or close) confirms past it
            return
        self._recorded_at = time.monotonic()
        self._deferred = 0
        super()._advance(lsn)
        if self._on_advance is not None:
            self._on_advance(lsn)

    def _record(self, lsn: int, *, wait: bool = True) -> bool:
        for attempt in (1, 2):
            try:
                if self._rec is None or not self._dialect.usable(self._rec):
                    self._rec = self._dialect.connect(self._target, autocommit=True,
                                                      application_name=task_app_name(self._task_name, "record"))
                return bool(self._dialect.record_slot_lsn(self._rec, self._task_name, lsn, fence=self._fence,
                                                          wait=wait))
            except self._dialect.lost_errors:
                self._close_record()  # a target restart: one fresh connection, then give up loudly
                if attempt == 2:
                    raise
        return False  # not reached: the second attempt returns or raises

    def _close_record(self) -> None:
        if self._rec is not None:
            with contextlib.suppress(Exception):
                self._rec.close()
            self._rec = None

    def close(self) -> None:
        try:
            if self._deferred:
                lsn, self._deferred = self._deferred, 0
                self._record(lsn)  # the apply is over: the row is free, or soon
                super()._advance(lsn)
                if self._on_advance is not None:
                    self._on_advance(lsn)
        finally:
            super().close()
            self._close_record()


@dataclass
class Handoff:
    needs_full_load: bool
    snapshot: str | None = None
    lsn: int | None = None
    ts: datetime | None = None  # a source time at or before the snapshot: when full-load versions open


class CdcSession:
    """One task's slot for one run, and the engine's side of its stream (`StreamHooks`)."""

    def __init__(self, task: RunnableTask, plans: dict[tuple[str, str], TablePlan], source: str, target: str, *,
                 store: MetadataStore, run_id: str | None, counters: Counters, stop: threading.Event,
                 dialect: TargetDialect = POSTGRES, fence: Fence | None = None) -> None:
        self.task, self.plans = task, dict(plans)
        self.fence = fence  # the run's fencing token: checked in every target write of the session
        #: application_name suffix of the session's source connection (a consumer's starts with
        #: "consume", so that a producer's takeover spares it)
        self.control_name = "control"
        self.dialect = dialect  # the target's database: every target I/O goes through it
        self.name = task.name
        self.settings: TaskSettings = task.settings
        self.source, self.target = source, target
        self.store, self.run_id, self.counters, self.stop_event = store, run_id, counters, stop
        self.slot = slot_name(task.name)
        self.publication = publication_name(task.name)
        self.catch_up = CatchUp()
        self.on_status: Callable[[str], None] | None = None
        self._wal_warned: tuple[str | None, bool] | None = None
        self._control: psycopg.Connection | None = None  # see `_on_source`
        self._control_lock = threading.Lock()
        #: the furthest position a reader of this session moved the slot to, and when (monotonic)
        self._advanced_lsn = 0
        self._advanced_at = float("-inf")

    @property
    def catch_up_target(self) -> int | None:
        return self.catch_up.target

    @catch_up_target.setter
    def catch_up_target(self, lsn: int | None) -> None:
        self.catch_up.target = lsn

    @contextlib.contextmanager
    def _on_source(self) -> Iterator[psycopg.Connection]:
        """The session's one source connection for its small queries (WAL position, slot health,
        heartbeats), from any of its threads: a connection (and its authentication) per query cost
        ~5-10 ms each, and a catch-up polls the WAL position every 50 ms. A failed query drops it,
        so the next one reconnects (a restarted server)."""
        with self._control_lock:
            if self._control is None or self._control.closed:
                self._control = connect(self.source, autocommit=True,
                                        application_name=task_app_name(self.name, self.control_name))
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
        d = self.dialect
        with connect(self.source, autocommit=True, application_name=task_app_name(self.name, "prepare")) as src, \
                d.connect(self.target, application_name=task_app_name(self.name, "prepare")) as tgt:
            d.validate(tgt)  # before anything is written
            d.ensure_state_tables(tgt)
            tgt.commit()
            if s.start_mode == "reload":
                d.check_fence(tgt, self.fence, self.name)
                drop_task_objects(src, self.name)
                d.reset_checkpoint(tgt, self.name)
                d.forget_task(tgt, self.name)
            tgt.commit()
            checkpoint = d.read_checkpoint(tgt, self.name)
            slot_lsn = d.read_slot_lsn(tgt, self.name) if checkpoint is not None else 0
            tgt.commit()
            status = slot_status(src, self.slot)
            if checkpoint is not None:
                self._check_slot(status, max(checkpoint, slot_lsn))
                self._check_added_tables(tgt)
                self._check_shapes(tgt)
                ensure_publication(src, self.publication, tables)
                yield Handoff(False)
                return
            if status is not None:  # a slot without a checkpoint: an interrupted start; redo it
                drop_task_objects(src, self.name)
            ensure_publication(src, self.publication, tables)
            if s.replication_type == "full_load_and_cdc":
                row = src.execute("SELECT clock_timestamp()").fetchone()
                self._record_shapes(tgt)
                with create_slot_with_snapshot(self.source, self.slot,
                                               task_app_name(self.name, "snapshot")) as (lsn, snapshot):
                    yield Handoff(True, snapshot, lsn, row[0] if row else None)
                return
            fl = self.settings.task.full_load_settings
            for plan in self.plans.values():  # no full load creates the target tables: do it here
                d.ensure_target(tgt, target_spec(plan, self.settings), create=fl.create_table_if_not_exists)
            tgt.commit()  # slot creation waits for every open transaction of the cluster
            lsn = create_slot(src, self.slot)
            d.check_fence(tgt, self.fence, self.name)
            d.write_checkpoint(tgt, self.name, lsn)
            d.record_slot_lsn(tgt, self.name, lsn)
            tgt.commit()
            self._record_shapes(tgt)
            yield Handoff(False)

    def _record_shapes(self, tgt: Any, keys: list[tuple[str, str]] | None = None) -> None:
        """Write the source columns each table is planned with (see `_check_shapes`)."""
        record_shapes(self.dialect, tgt, self.name, self.plans, keys)

    def _check_shapes(self, tgt: Any) -> None:
        """`continue`: a source column the task was streaming that is gone or has another type now
        was dropped, renamed or retyped while the task was stopped. Its changes of the new shape
        cannot be applied faithfully: stop before any is (a running task catches it from the
        stream's Relation message instead)."""
        recorded = self.dialect.read_shapes(tgt, self.name)
        tgt.commit()
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

    def _check_added_tables(self, tgt: Any) -> None:
        """`continue` with a table the task did not have before: without a full load of it, its
        existing rows would never reach the target; a cdc-only task just starts streaming it."""
        fl = self.settings.task.full_load_settings
        if self.settings.task.replication_type != "full_load_and_cdc":
            for plan in self.plans.values():  # columns added on the source meanwhile are added too
                self.dialect.ensure_target(tgt, target_spec(plan, self.settings),
                                           create=fl.create_table_if_not_exists, add_missing=True)
            tgt.commit()
            return
        loaded = self.dialect.loaded_tables(tgt, self.name)
        tgt.commit()
        pending = self._pending_adds()  # loaded in step with the stream by the run's lifecycle
        added = [".".join(t.key) for t in self.settings.tables if t.key not in loaded and t.key not in pending]
        if added:
            raise TerminalError(
                f"table(s) {', '.join(added)} were added to task {self.name} after its full load: their"
                " existing rows are not on the target. Rerun with start_mode reload, or replicate them"
                " in a task of their own."
            )
        for key, plan in self.plans.items():  # columns added on the source while stopped
            if key not in pending:
                self.dialect.ensure_target(tgt, target_spec(plan, self.settings), create=False, add_missing=True)
        tgt.commit()

    def _pending_adds(self) -> set[tuple[str, str]]:
        """Tables an add-table request waits for (`engine.lifecycle` loads them in step with the stream)."""
        return {parse_table(r["table"]) for r in self.store.open_table_requests(self.name) if r["action"] == "add"}

    def _check_slot(self, status: SlotStatus | None, known: int) -> None:
        """`known`: the furthest position the target recorded for this slot (checkpoint or advance)."""
        where = ch.int_to_lsn(known)
        if status is None:
            raise SlotLost(
                f"replication slot {self.slot} is missing but task {self.name} has a checkpoint at {where}:"
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
        d = self.dialect
        with d.connect(self.target, application_name=task_app_name(self.name, "checkpoint")) as tgt:
            d.check_fence(tgt, self.fence, self.name)
            d.write_checkpoint(tgt, self.name, int(lsn or 0))
            d.record_slot_lsn(tgt, self.name, int(lsn or 0))
            tgt.commit()

    # StreamHooks: what a transport asks of the engine --------------------------------
    def new_source(self) -> ChangeSource:
        return _RecordingReader(self.source, self.slot, self.publication, max_changes=batch_size(),
                                application_name=task_app_name(self.name, "capture"), target=self.target,
                                task_name=self.name, stream=True, dialect=self.dialect, fence=self.fence,
                                on_advance=self._advanced)

    def _advanced(self, lsn: int) -> None:
        if lsn > self._advanced_lsn:
            self._advanced_lsn, self._advanced_at = lsn, time.monotonic()

    def status(self, state_: str) -> None:
        if self.on_status:
            self.on_status(state_)

    def log(self, level: str, message: str, *, table: str | None = None,
            fields: dict[str, Any] | None = None) -> None:
        self.store.log(self.name, self.run_id, level, mask(message), table=table, fields=fields)

    def flushed_past(self, lsn: int) -> bool:
        """Decoding sees only flushed WAL (asynchronous commits may lag): caught up only past it."""
        if self.flush_lsn() >= lsn:
            return True
        time.sleep(0.05)
        return False

    def flush_lsn(self) -> int:
        with self._on_source() as src:
            row = src.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        return ch.lsn_to_int(row[0]) if row else 0

    def current_lsn(self) -> int:
        with self._on_source() as src:
            row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return ch.lsn_to_int(row[0]) if row else 0

    def slot_confirmed_lsn(self) -> int:
        with self._on_source() as src:
            st = slot_status(src, self.slot)
        return int(st.confirmed_flush_lsn or 0) if st is not None else 0

    def heartbeat(self) -> None:
        """Idle: write a heartbeat into the captured database's WAL; the reader's next read
        moves the slot past it, so a busy neighbour database's WAL is not pinned.

        Skipped while the slot moved forward within the last HEARTBEAT_EVERY_S: a heartbeat
        is a non-transactional message, which reaches every slot of the database, so the
        tasks capturing one database share one (a worker with 20 idle tasks on one database
        wrote 20 every 10 s, and each task then recorded and confirmed all 20 of them)."""
        if time.monotonic() - self._advanced_at < HEARTBEAT_EVERY_S:
            return
        with self._on_source() as src:
            emit_heartbeat(src)

    def refresh_lag(self) -> None:
        with contextlib.suppress(Exception), self._on_source() as src:
            st = slot_status(src, self.slot)
            row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            if st is not None and row:
                self.counters.retained_bytes = int(st.retained_bytes or 0)
                self.counters.wal_status = st.wal_status or ""
                self.counters.lag_bytes = max(0, ch.lsn_to_int(row[0]) - (st.confirmed_flush_lsn or 0))
                self._warn_wal(st)

    def _warn_wal(self, st: SlotStatus) -> None:
        """Warn (once per state) while max_slot_wal_keep_size is about to invalidate the slot:
        it retains more WAL than may still be written before it is lost, or is unreserved."""
        danger = st.wal_status == "unreserved" or (
            st.safe_wal_size is not None and st.retained_bytes is not None and st.safe_wal_size < st.retained_bytes
        )
        warned = (st.wal_status, danger)
        if danger and self._wal_warned != warned:
            self._wal_warned = warned
            self.store.log(self.name, self.run_id, "WARNING",
                           f"replication slot {self.slot}: wal_status {st.wal_status}, only"
                           f" {max(0, int(st.safe_wal_size or 0)):,} bytes of WAL left before"
                           f" max_slot_wal_keep_size invalidates it (it retains {int(st.retained_bytes or 0):,});"
                           " the task must catch up or the slot will be lost",
                           fields={"event": "slot_warning", "slot": self.slot, "wal_status": st.wal_status,
                                   "safe_wal_size": st.safe_wal_size, "retained_bytes": st.retained_bytes})

    def dead_lettered(self, letter: DeadLetter) -> None:
        with contextlib.suppress(Exception):
            self.store.log(self.name, self.run_id, "ERROR",
                           (f"{letter.tables}: batch ending at {ch.int_to_lsn(letter.end_lsn or 0)} dead-lettered"
                            f" after {letter.attempts} attempt(s), table(s) held: {mask(letter.error)}"
                            if letter.tables else f"dead-lettered: {mask(letter.error)}"),
                           table=letter.tables if letter.tables and "," not in letter.tables else None,
                           fields={"event": "dead_letter", "tables": letter.tables, "attempts": letter.attempts,
                                   "first_lsn": ch.int_to_lsn(letter.first_lsn) if letter.first_lsn is not None else None,
                                   "end_lsn": ch.int_to_lsn(letter.end_lsn) if letter.end_lsn is not None else None,
                                   "where": letter.where})
        with contextlib.suppress(Exception):
            self.store.record_dead_letter(
                self.name, letter.tables,
                ch.int_to_lsn(letter.first_lsn) if letter.first_lsn is not None else None,
                ch.int_to_lsn(letter.end_lsn) if letter.end_lsn is not None else None,
                letter.error, letter.attempts, letter.where)
        for table in (letter.tables or "").split(","):
            if table:
                self.counters.failed[(table, "dead_letter")] += 1


def record_shapes(dialect: TargetDialect, tgt: Any, task: str, plans: dict[tuple[str, str], TablePlan],
                  keys: list[tuple[str, str]] | None = None) -> None:
    """Write the source columns each table (of `keys`, default all) is planned with; commits."""
    dialect.record_shapes(tgt, task, {
        key: [(c.name, c.pg_type) for c in plan.source.columns]
        for key, plan in plans.items() if keys is None or key in keys
    })
    tgt.commit()


def batch_size() -> int:
    return int(os.environ.get("TREMPY_BATCH_CHANGES", "20000"))


def _check_name_lengths(settings: TaskSettings) -> None:
    """Changes arrive under the source's real names: a name over 63 bytes, which PostgreSQL
    silently truncates in SQL (so a full load finds the table), would never match them."""
    for i, t in enumerate(settings.tables):
        for field, name in (("schema_name", t.schema_name), ("table_name", t.table_name)):
            if len(name.encode()) > 63:
                raise ValidationFailed(
                    f"tables[{i}].{field}: {name!r} is {len(name.encode())} bytes; PostgreSQL names"
                    " have at most 63 bytes (longer ones are truncated), name the table as the catalog does"
                )
