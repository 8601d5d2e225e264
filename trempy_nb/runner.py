"""Runners: the only place where capture, pipeline and writer are wired together.

A `Runner` runs a task in a background thread: full load (in one exported
snapshot when CDC follows), then the change stream until stopped or caught up.
It never dies silently: its exception is kept, shown in `status`, recorded in
the metadata store and re-raised by `wait()`/`stop()`. `finally` releases
the task lock and connections.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg

from trempy_nb.connections import is_mariadb_uri, mask, resolve
from trempy_nb.crash import crash_point
from trempy_nb.db import connect
from trempy_nb.errors import AlreadyRunning, SettingsError, SlotLost, TrempyError
from trempy_nb.fullload import TableLoadResult, run_full_load, target_spec
from trempy_nb.reports import record_targets
from trempy_nb.writer.errorpolicy import is_transient  # re-exported (__all__)

if TYPE_CHECKING:
    from trempy_nb.task import RunResult, Task


def _store() -> Any:
    from trempy_nb.metadata import MetadataStore

    return MetadataStore()


@dataclass
class Counters:
    """Live counters a dashboard reads (per table and operation)."""

    read: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    applied: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    filtered: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    changes: int = 0
    last_lsn: int = 0
    lag_bytes: int = 0
    lag_seconds: float = 0.0
    wal_status: str = ""
    retained_bytes: int = 0
    full_load_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    full_load_total: dict[str, int] = field(default_factory=dict)
    history: list[tuple[float, int, float]] = field(default_factory=list)  # (time, changes, lag s)

    def frame(self) -> pl.DataFrame:
        keys = sorted(set(self.read) | set(self.applied) | set(self.failed) | set(self.filtered))
        return pl.DataFrame(
            {
                "table": [k[0] for k in keys],
                "operation": [k[1] for k in keys],
                "read": [self.read.get(k, 0) for k in keys],
                "applied": [self.applied.get(k, 0) for k in keys],
                "filtered": [self.filtered.get(k, 0) for k in keys],
                "failed": [self.failed.get(k, 0) for k in keys],
            },
            schema={"table": pl.String, "operation": pl.String, "read": pl.Int64,
                    "applied": pl.Int64, "filtered": pl.Int64, "failed": pl.Int64},
        )


@contextlib.contextmanager
def task_lock(source_uri: str, task: str) -> Iterator[psycopg.Connection]:
    """A session advisory lock on the source: one runner per task, across processes and machines."""
    conn = connect(source_uri, autocommit=True, application_name=f"trempy_nb:{task}:lock")
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"trempy:{task}",)).fetchone()
        if not row or not row[0]:
            raise AlreadyRunning(f"task {task} is already running elsewhere (another runner holds its lock)")
        yield conn
    finally:
        conn.close()


class Runner:
    """A task running in a background thread."""

    def __init__(self, task: Task, *, until_caught_up: bool = False, progress: bool = False) -> None:
        self.task = task
        self.until_caught_up = until_caught_up
        self.progress = progress
        self.counters = Counters()
        self.status = "created"
        self.error: BaseException | None = None
        self.result: RunResult | None = None
        self.run_id: str | None = None
        self.started_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self._catch_up_requested = False

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
            self._session.catch_up_target = self._session._current_lsn()
        self._stop.set()
        return self.wait(timeout)

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def stats(self) -> pl.DataFrame:
        return self.counters.frame()

    def _main(self) -> None:
        from trempy_nb.task import RunResult

        store = _store()
        t0 = time.perf_counter()
        kind = self.task.settings.task.replication_type
        self.run_id = store.start_run(self.task.name, kind)
        try:
            self.status = "running"
            tables, changes = self._run(store)
            self.status = "stopped" if self._stop.is_set() and not self.until_caught_up else "succeeded"
            self.status = "succeeded" if kind == "full_load" else self.status
            self.result = RunResult(self.task.name, self.run_id, self.status, tables,
                                    time.perf_counter() - t0, changes)
            store.end_run(self.run_id, self.status)
        except BaseException as exc:  # kept and re-raised by wait(); never swallowed
            self.error = exc if isinstance(exc, TrempyError) else TrempyError(mask(f"{type(exc).__name__}: {exc}"))
            self.status = "failed"
            try:
                store.end_run(self.run_id, "failed", mask(str(self.error)))
                store.log(self.task.name, self.run_id, "ERROR", mask(str(self.error)))
            except Exception:  # noqa: S110 - the original error matters more
                pass

    # the work ----------------------------------------------------------------------
    def _run(self, store: Any) -> tuple[list[TableLoadResult], int]:
        task = self.task
        settings = task.settings
        source, target = task.source_uri, task.target_uri
        rtype = settings.task.replication_type
        if is_mariadb_uri(target) and rtype != "full_load":
            raise SettingsError(f"task.target {mask(settings.task.target)}: a MariaDB/MySQL target takes"
                                " replication_type full_load for now (its CDC apply is not wired into runs yet)")
        with task_lock(source, task.name) as lock:
            task.validate(lock)  # on the lock's connection: one connection (and login) fewer
            plans = task.plans
            record_targets(store, settings, plans)  # what `history NAME` reads
            if rtype == "full_load":
                self.status = "full_load"
                return self._full_load(store, plans, source, target, None, None), 0
            from trempy_nb.cdc import CdcSession

            session = CdcSession(task, plans, source, target, store=store, run_id=self.run_id,
                                 counters=self.counters, stop=self._stop)
            session.on_status = self._set_status
            self._session = session
            try:
                if self._catch_up_requested:
                    session.catch_up_target = session._current_lsn()
                tables: list[TableLoadResult] = []
                with session.prepare() as handoff:
                    if handoff.needs_full_load:
                        self.status = "full_load"
                        crash_point("full_load_start")
                        tables = self._full_load(store, plans, source, target, handoff.snapshot, handoff.lsn,
                                                 handoff.ts)
                        crash_point("full_load_before_checkpoint")
                        session.mark_loaded(handoff.lsn)
                changes = session.stream(until_caught_up=self.until_caught_up)
                return tables, changes
            finally:
                session.close()

    def _full_load(self, store: Any, plans: dict, source: str, target: str,
                   snapshot: str | None, lsn: int | None, load_ts: Any = None) -> list[TableLoadResult]:
        bars = _Progress(self.task, plans, enabled=self.progress, counters=self.counters)

        def on_row_error(bad: Any) -> None:  # a writer.errorpolicy.BadRow
            store.record_error(self.task.name, self.run_id, bad.schema, bad.table, bad.operation, bad.error,
                               bad.payload, key=bad.key)

        def on_done(r: TableLoadResult) -> None:
            crash_point("full_load_after_table")  # this table committed, the others maybe not
            store.record_stats(self.run_id, self.task.name, r.schema, r.table, "full_load",
                               rows_read=r.rows_read, rows_written=r.rows_written,
                               rows_filtered=r.rows_filtered, rows_failed=r.rows_failed,
                               duration_s=r.seconds)
            bars.done((r.schema, r.table))

        load = _mariadb_full_load() if is_mariadb_uri(target) else run_full_load
        try:
            return load(self.task.settings, plans, source, target, snapshot=snapshot,
                        snapshot_lsn=lsn, load_ts=load_ts, progress=bars.update, on_row_error=on_row_error,
                        on_table_done=on_done)
        finally:
            bars.close()


def _mariadb_full_load() -> Any:
    """The MariaDB target's full load; its driver is the optional extra `trempy_nb[mariadb]`, imported
    only when a MariaDB target is used (so PostgreSQL-only installs never need it)."""
    try:
        from trempy_nb.fullload_mariadb import run_full_load_mariadb
    except ImportError as exc:
        raise SettingsError(f"a MariaDB/MySQL target needs its driver: pip install 'trempy_nb[mariadb]' ({exc})") from None
    return run_full_load_mariadb


class _Progress:
    """Full-load progress per table. On a terminal or in a notebook: one tqdm bar per table (a
    widget in notebooks, text elsewhere). Non-interactive (stderr not a terminal, outside a
    notebook: cron, CI, a pipe): a plain line per table every `TREMPY_PROGRESS_S` seconds (5),
    and one when it is done, never a carriage return."""

    def __init__(self, task: Task, plans: dict, enabled: bool, counters: Counters) -> None:
        self.bars: dict[tuple[str, str], Any] = {}
        self.counters = counters
        self.lock = threading.Lock()
        self.lines: _ProgressLines | None = None
        for key, plan in plans.items():
            counters.full_load_total[".".join(key)] = plan.source.estimated_rows
        if enabled and not _interactive():
            self.lines = _ProgressLines({k: p.source.estimated_rows for k, p in plans.items()})
        elif enabled:
            from tqdm.auto import tqdm  # start-up speed: only interactive runs draw bars

            for i, (key, plan) in enumerate(plans.items()):
                total = plan.source.estimated_rows or None
                self.bars[key] = tqdm(total=total, desc=".".join(key), unit="rows", position=i,
                                      leave=True, mininterval=0.5, dynamic_ncols=True)

    def update(self, key: tuple[str, str], n: int) -> None:
        crash_point("full_load_middle")  # rows read and written, the table's transaction open
        with self.lock:
            self.counters.full_load_rows[".".join(key)] += n
            if self.lines is not None:
                self.lines.update(key, n)
            bar = self.bars.get(key)
            if bar is not None:
                if bar.total is not None and bar.n + n > bar.total:
                    bar.total = bar.n + n
                bar.update(n)

    def done(self, key: tuple[str, str]) -> None:
        if self.lines is not None:
            with self.lock:
                self.lines.done(key)
        bar = self.bars.get(key)
        if bar is not None:
            bar.total = bar.n
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _interactive() -> bool:
    """A terminal on stderr, or a notebook kernel (its bars are widgets)."""
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    return "ipykernel" in sys.modules


class _ProgressLines:
    """`schema.table: 420,000/1,000,000 rows (42%), 210,000 rows/s` on stderr, every few seconds."""

    def __init__(self, totals: dict[tuple[str, str], int], every_s: float | None = None) -> None:
        self.every_s = float(os.environ.get("TREMPY_PROGRESS_S", "5")) if every_s is None else every_s
        self.totals = dict(totals)
        self.rows: dict[tuple[str, str], int] = defaultdict(int)
        self.started: dict[tuple[str, str], float] = {}
        self.last: dict[tuple[str, str], float] = {}
        self.t0 = time.monotonic()

    def update(self, key: tuple[str, str], n: int) -> None:
        now = time.monotonic()
        self.started.setdefault(key, self.t0)
        self.rows[key] += n
        if now - self.last.get(key, self.t0) >= self.every_s:
            self.last[key] = now
            self._print(key, now)

    def done(self, key: tuple[str, str]) -> None:
        self.totals[key] = self.rows[key]
        self._print(key, time.monotonic(), " done")

    def _print(self, key: tuple[str, str], now: float, suffix: str = "") -> None:
        n, total = self.rows[key], self.totals.get(key) or 0
        secs = now - self.started.get(key, self.t0)
        of = f"/{total:,} rows ({min(100, 100 * n // total)}%)" if total >= n and total else " rows"
        rate = f", {n / secs:,.0f} rows/s" if secs > 0 else ""
        print(f"{'.'.join(key)}: {n:,}{of}{rate}{suffix}", file=sys.stderr, flush=True)


def run_task(task: Task, until_caught_up: bool = True, progress: bool = True) -> RunResult:
    """Blocking run: what `Task.run()` and `trempy-nb run` use. Raises on failure."""
    runner = Runner(task, until_caught_up=until_caught_up, progress=progress).start()
    try:
        result = runner.wait()
    except KeyboardInterrupt:
        result = runner.stop()
    assert result is not None
    return result


def run_forever(task: Task, progress: bool = True) -> RunResult:
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


def run_role(task: Task, role: str, until_caught_up: bool = False, progress: bool = True) -> int:
    """The rabbitmq transport's producer or consumer side alone."""
    from trempy_nb.transport.rabbitmq import run_role as _run_role

    return _run_role(task, role, until_caught_up=until_caught_up, progress=progress)


def drop_task(task: Task) -> None:
    """Remove the task's slot, publication, checkpoint and broker objects."""
    drop_task_by_name(task.name, source=task.settings.task.source, target=task.settings.task.target)


def drop_task_by_name(name: str, source: str | None, target: str | None) -> None:
    from pathlib import Path

    if Path(name).suffix.lower() in (".json", ".yaml", ".yml"):
        from trempy_nb.task import Task

        t = Task.from_settings(name)
        name, source, target = t.name, t.settings.task.source, t.settings.task.target
    if source:
        from trempy_nb.capture.slot import drop_task_objects

        with connect(resolve(source), autocommit=True) as conn:
            drop_task_objects(conn, name)
    if target:
        from trempy_nb.writer.checkpoint import reset_checkpoint

        with connect(resolve(target)) as conn:
            with contextlib.suppress(psycopg.Error):
                reset_checkpoint(conn, name)
                conn.commit()
    with contextlib.suppress(ImportError, TrempyError):
        from trempy_nb.transport.rabbitmq import delete_topology

        delete_topology(name)


__all__ = ["Runner", "run_task", "run_forever", "drop_task", "SlotLost", "is_transient", "target_spec"]
