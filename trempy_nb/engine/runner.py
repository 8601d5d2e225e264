"""The run lifecycle: the one place where capture, pipeline, transport and writer are wired together.

A `Runner` runs a task in a background thread, in a role:

- `both` (the default): take the task lock, validate, prepare the slot
  (`session.CdcSession.prepare`), full-load in the slot's exported snapshot when
  CDC follows, then stream through the task's transport into the applier until
  stopped or caught up;
- `producer` (rabbitmq, `trempy-nb run --role producer`): the same, the
  transport publishing only;
- `consumer` (rabbitmq, `--role consumer`): no lock, no slot (the producer holds
  those): apply from the queue only.

The transport is looked up once per run by the settings' name
(`transport.registry.lookup`). A runner never dies silently: its exception is
kept, shown in `status`, recorded in the metadata store and re-raised by
`wait()`/`stop()`; `finally` releases the task lock and connections.

With a `fence` (a worker's lease, `writer.fence`), the run first takes the task
over (`engine.fencing`): it evicts the previous owner's sessions, stores its epoch
on the target, then takes the task lock (retrying while the evicted session goes
away); every target write of the run checks that epoch in its own transaction.
A copy that lost its lease fails with `Fenced` ("lease lost to epoch N").
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from trempy_nb.capture.slot import drop_task_objects
from trempy_nb.connections import is_mariadb_uri, resolve
from trempy_nb.crash import crash_point
from trempy_nb.db import connect, task_app_name
from trempy_nb.engine import fencing
from trempy_nb.engine.counters import Counters
from trempy_nb.engine.lock import task_lock
from trempy_nb.engine.progress import Progress
from trempy_nb.engine.reporting import StateReporter
from trempy_nb.engine.result import RunnableTask, RunResult
from trempy_nb.errors import Fenced, SettingsError, TerminalError, TrempyError
from trempy_nb.fullload import TableLoadResult, run_full_load
from trempy_nb.metadata import MetadataStore, RunStatus
from trempy_nb.ops.retention import prune_soon
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.redact import mask
from trempy_nb.reports import record_targets
from trempy_nb.settings import TaskSettings, parse_settings
from trempy_nb.transport.base import Role, StreamContext, Transport
from trempy_nb.transport.registry import lookup
from trempy_nb.writer.dialect import POSTGRES, TargetDialect
from trempy_nb.writer.errorpolicy import BadRow
from trempy_nb.writer.fence import Fence, fence_key, lost_message

#: How long a fenced run retries the task lock while the evicted owner's session goes away (s)
LOCK_WAIT_S = 15.0

if TYPE_CHECKING:
    from trempy_nb.engine.applier import ChangeApplier
    from trempy_nb.engine.lifecycle import TableLifecycle
    from trempy_nb.engine.session import CdcSession

#: The full load of one target dialect (`fullload.run_full_load`, `fullload.mariadb.run_full_load_mariadb`)
FullLoad = Callable[..., list[TableLoadResult]]


class Runner:
    """A task running in a background thread, in a role (see the module docstring)."""

    def __init__(self, task: RunnableTask, *, until_caught_up: bool = False, progress: bool = False,
                 role: Role = "both", transport: Transport | None = None, fence: Fence | None = None,
                 store: MetadataStore | None = None) -> None:
        self.task = task
        #: the metadata store the run records into (default: `MetadataStore()`); a fleet worker
        #: passes one that rides out a lost state store (`fleet.outage.OutageTolerantStore`)
        self._store = store
        #: the lease's fencing token, bound to this task and role's row on the target
        self.fence = (dataclasses.replace(fence, key=fence_key(task.name, role))
                      if fence is not None and not fence.key else fence)
        self.until_caught_up = until_caught_up
        self.progress = progress
        self.role: Role = role
        self.counters = Counters()
        self.status = "created"
        self.error: BaseException | None = None
        self.result: RunResult | None = None
        self.run_id: str | None = None
        self.started_at = 0.0
        self._transport = transport
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: CdcSession | None = None
        self._catch_up_requested = False
        self._fresh_load = False  # this run full-loaded the task (a pending add-table of it is done)

    def _set_status(self, status: str) -> None:
        if self.status not in ("failed", "succeeded", "stopped"):
            self.status = status

    # lifecycle ---------------------------------------------------------------------
    def start(self) -> Runner:
        self._thread = threading.Thread(target=self._main, name=f"trempy-{self.task.name}", daemon=True)
        self.status = "starting"
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> RunResult | None:
        """Ask the runner to stop after the current batch, wait, and re-raise its error if any."""
        self._stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> RunResult | None:
        if self._thread:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result

    def stop_when_caught_up(self, timeout: float | None = None) -> RunResult | None:
        """Apply every change committed at the source before this call, then stop."""
        self.until_caught_up = True
        self._catch_up_requested = True
        if self._session is not None:
            self._session.catch_up.target = self._session.current_lsn()
        self._stop.set()
        return self.wait(timeout)

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def stats(self) -> pl.DataFrame:
        return self.counters.frame()

    def _main(self) -> None:
        store = self._store if self._store is not None else MetadataStore()
        t0 = time.perf_counter()
        kind = self.task.settings.task.replication_type
        run_id = self.run_id = store.start_run(self.task.name, kind)
        prune_soon(store)  # log retention, on a thread of its own: the run never waits on it
        store.log(self.task.name, run_id, "INFO", f"run started: {kind}, role {self.role}",
                  fields={"event": "run_start", "kind": kind, "role": self.role})
        # a fleet worker reports its fenced runs itself; any other run reports on its own
        reporter = StateReporter(store, self.task.name, self.role, self).start() if self.fence is None else None
        try:
            self.status = "running"
            tables, changes = self._run(store, run_id)
            final: RunStatus = "stopped" if self._stop.is_set() and not self.until_caught_up else "succeeded"
            self.status = final = "succeeded" if kind == "full_load" else final
            seconds = time.perf_counter() - t0
            self.result = RunResult(self.task.name, run_id, final, tables, seconds, changes)
            store.end_run(run_id, final)
            store.log(self.task.name, run_id, "INFO",
                      f"run {final}: {len(tables)} table(s) loaded, {changes:,} change(s) applied in {seconds:.1f} s",
                      fields={"event": "run_end", "status": final, "tables": len(tables), "changes": changes,
                              "seconds": round(seconds, 3)})
        except BaseException as exc:  # kept and re-raised by wait(); never swallowed
            self.error = exc if isinstance(exc, TrempyError) else TrempyError(mask(f"{type(exc).__name__}: {exc}"))
            self.error = self._fenced(self.error)
            self.status = "failed"
            try:
                store.end_run(run_id, "failed", mask(str(self.error)))
                store.log(self.task.name, run_id, "ERROR", mask(str(self.error)),
                          fields={"event": "run_end", "status": "failed", "error_type": type(exc).__name__,
                                  "seconds": round(time.perf_counter() - t0, 3)})
            except Exception:  # noqa: S110 - the original error matters more
                pass
        finally:
            if reporter is not None:
                reporter.close()

    def _fenced(self, error: TrempyError) -> TrempyError:
        """A fenced run that failed for another reason (its connections were evicted, its slot is
        another's) while a newer epoch holds the target: it lost its lease, and says so."""
        fence = self.fence
        if fence is None or isinstance(error, Fenced):
            return error
        stored: int | None = None
        with contextlib.suppress(Exception):
            d = target_dialect(self.task.target_uri)
            conn = d.connect(self.task.target_uri, application_name=task_app_name(self.task.name, "fence"))
            try:
                stored = d.read_fence(conn, fence.key)
            finally:
                conn.close()
        if (stored is not None and stored > fence.epoch) or not fence.valid():
            fenced = Fenced(lost_message(fence.key, stored, fence.epoch))
            fenced.__cause__ = error
            return fenced
        return error

    def _take_over(self, dialect: TargetDialect) -> None:
        """A fenced run: evict the previous owner, store this run's epoch on the target."""
        fence = self.fence
        if fence is None:
            return
        task = self.task
        source = task.source_uri if self.role != "consumer" else None
        fencing.evict(task.name, source, task.target_uri, role=self.role, dialect=dialect)
        fencing.claim(dialect, task.target_uri, task.name, fence.key, fence.epoch, source_uri=source, role=self.role)

    def _evict_lock_holder(self, keep: int) -> None:
        """The task lock is still held: the evicted owner's session may be on its way out, or another
        copy took it since: evict again (sparing our lock session)."""
        fencing.evict(self.task.name, self.task.source_uri, None, [keep], role=self.role)

    # the work ----------------------------------------------------------------------
    def _run(self, store: MetadataStore, run_id: str) -> tuple[list[TableLoadResult], int]:
        task = self.task
        settings = task.settings
        rtype = settings.task.replication_type
        if self.fence is not None:
            self._take_over(target_dialect(task.target_uri))
        if self.role == "consumer":
            return [], self._consume(store, run_id)
        source, target = task.source_uri, task.target_uri
        wait = LOCK_WAIT_S if self.fence is not None else 0.0
        with task_lock(source, task.name, wait_s=wait,
                       on_busy=self._evict_lock_holder if self.fence is not None else None) as lock:
            task.validate(lock)  # on the lock's connection: one connection (and login) fewer
            plans = task.plans
            record_targets(store, settings, plans)  # what `history NAME` reads
            if rtype == "full_load":
                self.status = "full_load"
                return self._full_load(store, run_id, plans, source, target, None, None), 0
            session = self._new_session(store, run_id, plans)
            try:
                if self._catch_up_requested:
                    session.catch_up.target = session.current_lsn()
                tables: list[TableLoadResult] = []
                with session.prepare() as handoff:
                    if handoff.needs_full_load:
                        self.status = "full_load"
                        crash_point("full_load_start")
                        tables = self._full_load(store, run_id, plans, source, target, handoff.snapshot,
                                                 handoff.lsn, handoff.ts)
                        self._fresh_load = True
                        crash_point("full_load_before_checkpoint")
                        session.mark_loaded(handoff.lsn)
                changes = self._stream(session, run_id)
                return tables, changes
            finally:
                session.close()

    def _consume(self, store: MetadataStore, run_id: str) -> int:
        """The consumer side alone: no slot, no task lock (the producer holds those)."""
        plans = self.task.plans
        record_targets(store, self.task.settings, plans)  # what `history NAME` reads
        session = self._new_session(store, run_id, plans)
        try:
            with session.dialect.connect(self.task.target_uri,
                                         application_name=task_app_name(self.task.name, "consume-setup")) as tgt:
                session.dialect.ensure_state_tables(tgt)
                tgt.commit()
            return self._stream(session, run_id)
        finally:
            session.close()

    def _new_session(self, store: MetadataStore, run_id: str, plans: dict[tuple[str, str], TablePlan]) -> CdcSession:
        # lazy: start-up speed, as the issue of whole-command speed asks. A full-load-only run never
        # loads the slot session and change reader (their vectorised tuples pull in numpy, pyarrow).
        from trempy_nb.engine.session import CdcSession

        session = CdcSession(self.task, plans, self.task.source_uri, self.task.target_uri, store=store,
                             run_id=run_id, counters=self.counters, stop=self._stop,
                             dialect=target_dialect(self.task.target_uri), fence=self.fence)
        session.on_status = self._set_status
        if self.role == "consumer":
            session.control_name = f"{fencing.CONSUMER_NAME}-control"
        self._session = session
        return session

    def _stream(self, session: CdcSession, run_id: str) -> int:
        """Hand the stream to the task's transport, the applier as its sink (not for a producer)."""
        settings = self.task.settings
        transport = self._transport or lookup(settings.task.transport)
        sink = None
        if self.role != "producer":
            from trempy_nb.engine.applier import ChangeApplier  # lazy: as in _new_session

            sink = ChangeApplier(self.task.name, settings, session.plans, session.source, session.target,
                                 store=session.store, run_id=run_id, counters=self.counters,
                                 connection_name=transport.sink_name, dialect=session.dialect, fence=self.fence)
        ctx = StreamContext(self.task.name, settings, session.target, session, self._stop, session.catch_up,
                            until_caught_up=self.until_caught_up, dialect=session.dialect, fence=self.fence)
        lifecycle = self._lifecycle(session, sink, run_id) if sink is not None else None
        try:
            return transport.run(self.role, ctx, sink)
        finally:
            if lifecycle is not None:
                lifecycle.close()
            if sink is not None:
                sink.close()

    def _lifecycle(self, session: CdcSession, sink: ChangeApplier, run_id: str) -> TableLifecycle | None:
        """The owner's per-table lifecycle (add-table, resync, pause, resume; `engine.lifecycle`): a run
        that reads the slot and applies (role both) into PostgreSQL."""
        if self.role != "both" or session.dialect.name != "postgresql":
            return None
        from trempy_nb.engine.lifecycle import TableLifecycle  # lazy: as in _new_session

        def on_settings(settings: TaskSettings) -> None:
            session.settings = sink.settings = settings

        lifecycle = TableLifecycle(self.task.name, session.settings, session.plans, session.source, session.target,
                                   store=session.store, run_id=run_id, dialect=session.dialect, fence=self.fence,
                                   plan_for=sink.plan_for_shape, on_settings=on_settings,
                                   fresh_load=self._fresh_load)
        sink.lifecycle = lifecycle.start()
        return lifecycle

    def _full_load(self, store: MetadataStore, run_id: str, plans: dict[tuple[str, str], TablePlan], source: str,
                   target: str, snapshot: str | None, lsn: int | None,
                   load_ts: datetime | None = None) -> list[TableLoadResult]:
        bars = Progress(plans, enabled=self.progress, counters=self.counters)

        def on_row_error(bad: BadRow) -> None:
            store.record_error(self.task.name, run_id, bad.schema, bad.table, bad.operation, bad.error,
                               bad.payload, key=bad.key)

        started: set[tuple[str, str]] = set()

        def on_progress(key: tuple[str, str], n: int) -> None:
            if key not in started:  # the table's first rows: its start, once
                started.add(key)
                store.log(self.task.name, run_id, "INFO", f"full load of {key[0]}.{key[1]} started",
                          table=f"{key[0]}.{key[1]}", fields={"event": "full_load_table_start"})
            bars.update(key, n)

        def on_done(r: TableLoadResult) -> None:
            crash_point("full_load_after_table")  # this table committed, the others maybe not
            store.record_stats(run_id, self.task.name, r.schema, r.table, "full_load",
                               rows_read=r.rows_read, rows_written=r.rows_written,
                               rows_filtered=r.rows_filtered, rows_failed=r.rows_failed,
                               duration_s=r.seconds)
            rate = r.rows_written / r.seconds if r.seconds > 0 else None
            store.log(self.task.name, run_id, "WARNING" if r.rows_failed else "INFO",
                      f"full load of {r.schema}.{r.table} done: {r.rows_written:,} row(s) written in {r.seconds:.1f} s"
                      + (f" ({rate:,.0f} rows/s)" if rate is not None else "")
                      + (f", {r.rows_failed:,} rejected (see errors)" if r.rows_failed else ""),
                      table=f"{r.schema}.{r.table}",
                      fields={"event": "full_load_table_end", "rows_read": r.rows_read, "rows_written": r.rows_written,
                              "rows_filtered": r.rows_filtered, "rows_failed": r.rows_failed,
                              "seconds": round(r.seconds, 3), "rows_per_s": round(rate, 1) if rate is not None else None})
            bars.done((r.schema, r.table))

        load = _mariadb_full_load() if is_mariadb_uri(target) else run_full_load
        try:
            return load(self.task.settings, plans, source, target, snapshot=snapshot,
                        snapshot_lsn=lsn, load_ts=load_ts, progress=on_progress, on_row_error=on_row_error,
                        on_table_done=on_done, fence=self.fence)
        finally:
            bars.close()


def target_dialect(target: str) -> TargetDialect:
    """The run's target dialect, chosen once from the resolved target URI (the engine asks no more)."""
    if not is_mariadb_uri(target):
        return POSTGRES
    try:
        # lazy: the MariaDB driver is the optional extra trempy_nb[mariadb], imported only for such targets
        from trempy_nb.writer.mariadb.dialect import MARIADB
    except ImportError as exc:
        raise SettingsError(f"a MariaDB/MySQL target needs its driver: pip install 'trempy_nb[mariadb]' ({exc})") from None
    return MARIADB


def _mariadb_full_load() -> FullLoad:
    """The MariaDB target's full load (`fullload.mariadb.run_full_load_mariadb`, the same arguments
    and results as `run_full_load`). Its driver is the optional extra `trempy_nb[mariadb]`: imported
    only when a MariaDB target is used, so PostgreSQL-only installs never need it."""
    try:
        from trempy_nb.fullload.mariadb import run_full_load_mariadb
    except ImportError as exc:
        raise SettingsError(f"a MariaDB/MySQL target needs its driver: pip install 'trempy_nb[mariadb]' ({exc})") from None
    return run_full_load_mariadb


class ConsumerRunner(Runner):
    """The rabbitmq consumer side alone in a background thread (`Runner` in role consumer);
    `wait`/`stop` return the changes applied."""

    def __init__(self, task: RunnableTask, *, until_caught_up: bool = False, url: str | None = None,
                 prefetch: int | None = None) -> None:
        # lazy: start-up speed (pika and the broker modules load only for rabbitmq runs)
        from trempy_nb.transport.rabbitmq import RabbitMqTransport

        super().__init__(task, until_caught_up=until_caught_up, role="consumer",
                         transport=RabbitMqTransport(url, prefetch))

    @property
    def applied(self) -> int:
        return self.result.changes_applied if self.result is not None else 0

    def stop(self, timeout: float = 60.0) -> int:  # type: ignore[override]
        super().stop(timeout)
        return self.applied

    def wait(self, timeout: float | None = None) -> int:  # type: ignore[override]
        super().wait(timeout)
        return self.applied


def run_task(task: RunnableTask, until_caught_up: bool = True, progress: bool = True) -> RunResult:
    """Blocking run: what `Task.run()` and `trempy-nb run` use. Raises on failure."""
    runner = Runner(task, until_caught_up=until_caught_up, progress=progress).start()
    try:
        result = runner.wait()
    except KeyboardInterrupt:
        result = runner.stop()
    assert result is not None
    return result


def run_forever(task: RunnableTask, progress: bool = True) -> RunResult:
    """CDC until SIGINT/SIGTERM, then stop cleanly after the current batch."""
    runner = Runner(task, until_caught_up=False, progress=progress).start()
    try:
        while runner.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    result = runner.stop()
    assert result is not None
    return result


def run_role(task: RunnableTask, role: str, until_caught_up: bool = False, progress: bool = True) -> int:
    """`trempy-nb run SETTINGS --role producer|consumer`: one side of the rabbitmq transport alone."""
    if role not in ("producer", "consumer"):
        raise TerminalError(f"unknown role {role!r} (producer or consumer)")
    if task.settings.task.transport != "rabbitmq":
        raise TerminalError(
            f"--role needs transport rabbitmq (task {task.name} uses {task.settings.task.transport})"
        )
    if role == "producer":
        runner = Runner(task, until_caught_up=until_caught_up, progress=progress, role="producer").start()
        try:
            result = runner.wait()
        except KeyboardInterrupt:
            result = runner.stop()
        return 0 if result is not None else 1
    consumer = ConsumerRunner(task, until_caught_up=until_caught_up).start()
    try:
        consumer.wait()
    except KeyboardInterrupt:
        consumer.stop()
    return 0


def dead_letters(task: RunnableTask) -> pl.DataFrame:
    """The rabbitmq transport: the task's dead-letter queue, read without consuming it;
    otherwise the metadata store's record of batches given up."""
    if task.settings.task.transport == "rabbitmq":
        # lazy: start-up speed (pika and the broker modules load only for rabbitmq tasks)
        from trempy_nb.transport.rabbitmq import dead_letters as queued

        return queued(task.name)
    return MetadataStore().dead_letters(task=task.name)


def replay_dead_letters(task: RunnableTask) -> int:
    """Put the dead letters back on the queue, in order; returns how many (rabbitmq only)."""
    if task.settings.task.transport != "rabbitmq":
        raise TrempyError(f"task {task.name}: replaying dead letters needs the rabbitmq transport")
    # lazy: start-up speed (pika and the broker modules load only for rabbitmq tasks)
    from trempy_nb.transport.rabbitmq import replay_dead_letters as replay

    return replay(task.name)


def drop_task(task: RunnableTask) -> None:
    """Remove the task's slot, publication, checkpoint and broker objects."""
    drop_task_by_name(task.name, source=task.settings.task.source, target=task.settings.task.target)


def drop_task_by_name(name: str, source: str | None, target: str | None) -> None:
    """`trempy-nb drop NAME|SETTINGS`: what `drop_task` does, from a name (or a settings file)."""
    if Path(name).suffix.lower() in (".json", ".yaml", ".yml"):
        settings = parse_settings(name)
        name, source, target = settings.name, settings.task.source, settings.task.target
    if source:
        with connect(resolve(source), autocommit=True) as conn:
            drop_task_objects(conn, name)
    if target:
        uri = resolve(target, mariadb=True)
        dialect = target_dialect(uri)
        with dialect.connect(uri) as conn:
            with contextlib.suppress(*dialect.errors):
                dialect.reset_checkpoint(conn, name)
                conn.commit()
    with contextlib.suppress(ImportError, TrempyError):
        # lazy: start-up speed (pika loads only when there may be broker objects to drop)
        from trempy_nb.transport.rabbitmq import delete_topology

        delete_topology(name)
