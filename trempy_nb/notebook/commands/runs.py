"""Runs: start (optionally waiting), status, stats, stop, errors, dead letters, logs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import polars as pl

from trempy_nb import reports
from trempy_nb.errors import AlreadyRunning, SettingsError, UnknownTask
from trempy_nb.notebook.commands import fleet
from trempy_nb.notebook.commands.session import SESSION, _store, get_task
from trempy_nb.notebook.render import KeyValues, Note, RunView


def start(name: str, until_caught_up: bool = False) -> Any:
    """Start the task's background runner (one per task in a session)."""
    task = get_task(name)
    current = SESSION.runners.get(name)
    if current is not None and current.running:
        raise AlreadyRunning(
            f"task {name} is already running in this session (%trempy stop {name})"
        )
    from trempy_nb.engine.runner import Runner

    runner = Runner(task, until_caught_up=until_caught_up, progress=False).start()
    SESSION.runners[name] = runner
    return runner


def submit(name: str, replace: bool = False) -> Note:
    """`%trempy run NAME --detach`: the task goes to the state store desired-running; a worker
    (an existing one, or a local one started now that outlives the kernel) runs it."""
    placement = get_task(name).submit(replace=replace)
    return Note(placement.message, "ok")


def progress_line(runner: Any) -> str:
    """One line of text with the runner's figures (headless progress)."""
    c = runner.counters
    parts = [f"{runner.task.name}: {runner.status}"]
    total = sum(c.full_load_total.values())
    done = sum(c.full_load_rows.values())
    if total or done:
        parts.append(f"full load {done:,}/{max(total, done):,} rows")
    parts.append(f"changes {c.changes:,}")
    if c.history:
        parts.append(f"lag {c.lag_seconds:.1f} s")
    elapsed = time.time() - runner.started_at if runner.started_at else 0.0
    parts.append(f"{elapsed:.0f} s")
    return " | ".join(parts)


def wait(
    runner: Any,
    progress_interval: float = 10.0,
    echo: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> Any:
    """Block until the runner ends; print a throttled progress line; re-raise its error."""
    last = time.monotonic()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while runner.running:
            runner._thread.join(0.2) if getattr(runner, "_thread", None) else time.sleep(0.2)
            now = time.monotonic()
            if echo is not None and progress_interval > 0 and now - last >= progress_interval:
                echo(progress_line(runner))
                last = now
            if deadline is not None and now > deadline:
                runner.stop()
                raise TimeoutError(f"task {runner.task.name} did not finish within {timeout:.0f} s")
    except KeyboardInterrupt:
        return runner.stop()
    return runner.wait()


def run(
    name: str,
    wait_done: bool = True,
    until_caught_up: bool = True,
    progress_interval: float = 0.0,
    echo: Callable[[str], None] | None = None,
) -> Any:
    """Start the task; with wait_done, block and return the RunResult (raises on failure)."""
    runner = start(name, until_caught_up=until_caught_up)
    if not wait_done:
        return runner
    return wait(runner, progress_interval, echo)


def _runner(name: str) -> Any:
    runner = SESSION.runners.get(name)
    if runner is None:
        get_task(name)  # unknown task -> its own message
        raise SettingsError(f"task {name} has no runner in this session (%trempy run {name})")
    return runner


def status(name: str | None = None) -> Any:
    """This kernel's runners and every task of the state store as a frame, or one task's figures."""
    if name is None:
        return fleet.status_frame()
    if name not in SESSION.runners:
        return fleet.store_task_status(name)
    runner = _runner(name)
    c = runner.counters
    rows: list[tuple[str, Any]] = [
        ("status", runner.status),
        ("running", runner.running),
        ("changes applied", f"{c.changes:,}"),
        ("batches", f"{c.batches:,}"),
        ("lag", f"{c.lag_seconds:.2f} s, {c.lag_bytes:,} bytes"),
        ("slot", f"{c.wal_status or '-'}, {c.retained_bytes:,} bytes retained"),
    ]
    for table, total in c.full_load_total.items():
        rows.append((f"full load {table}", f"{c.full_load_rows.get(table, 0):,} / ~{total:,}"))
    if runner.error is not None:
        rows.append(("error", str(runner.error)))
    return KeyValues(f"task {name}", rows)


def stop(name: str, when_caught_up: bool = False) -> Any:
    """Stop the runner after its current batch (or once caught up); re-raises its error.

    A task with no runner in this kernel is set desired-stopped in the state store: the worker
    or process that owns it drains and stops it."""
    if name not in SESSION.runners:
        if when_caught_up:
            raise SettingsError(f"--when-caught-up stops a runner of this kernel; task {name} has none"
                                f" (%trempy stop {name} asks its owner to stop)")
        if name not in SESSION.tasks:
            return fleet.stop_in_store(name)  # UnknownTask lists the store's tasks
        try:
            return fleet.stop_in_store(name)
        except UnknownTask:  # defined here only, never saved nor run
            raise SettingsError(f"task {name} has no runner in this session (%trempy run {name})") from None
    runner = _runner(name)
    result = runner.stop_when_caught_up() if when_caught_up else runner.stop()
    dash = SESSION.dashboards.get(name)
    if dash is not None:
        dash.refresh()
    return RunView(result) if result is not None else Note(f"task {name} stopped", "ok")


def _known(name: str) -> None:
    """A task of this session, or one the metadata store knows (saved, or run from anywhere)."""
    if name not in SESSION.tasks:
        reports.check_known(_store(), name)


def stats(name: str, table: str | None = None) -> pl.DataFrame:
    """Per-table counters recorded by the task's runs."""
    _known(name)
    return reports.stats(_store(), name, table=table)


def errors(name: str, table: str | None = None, limit: int | None = None) -> pl.DataFrame:
    """Rows that failed and were recorded, oldest first (with limit: the latest ones)."""
    _known(name)
    return reports.errors(_store(), name, table=table, limit=limit)


def dead_letters(name: str) -> pl.DataFrame:
    """Batches given up after max_retries (Task.dead_letters, else the metadata store's)."""
    task = get_task(name)
    method = getattr(task, "dead_letters", None)
    if callable(method):
        return method()
    return _store().dead_letters(task=name)


def replay_dead_letters(name: str) -> Note:
    """Put the task's dead letters back on its queue (rabbitmq), once their cause is fixed."""
    count = get_task(name).replay_dead_letters()
    if not count:
        return Note(f"no dead letters to replay for task {name}")
    return Note(
        f"replayed {count:,} dead-lettered batch(es) of task {name}: the consumer applies them"
        " again (a running task now; otherwise at its next run)",
        "ok",
    )


def runs(name: str, limit: int | None = None) -> pl.DataFrame:
    """The task's runs, newest first."""
    _known(name)
    return reports.runs(_store(), name, limit=limit)
