"""What a run tells the state store about itself, so every surface sees every task.

A run outside the fleet (a notebook kernel, a `trempy-nb run` process, a scheduled job)
reports its actual state, lag and changes applied every few seconds, with the host and pid
it runs on; `%trempy status`, `trempy-nb status` and the fleet dashboard on any machine then
show it as they show a worker's task. A fleet worker reports for its own runs (it knows the
lease), so a fenced run does not report twice.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Protocol

from trempy_nb.engine.counters import Counters

#: how often a run looks at its figures; an unchanged state is written again only every IDLE_S
EVERY_S = 2.0
IDLE_S = 15.0


class Reported(Protocol):
    """What the reporter reads of a runner."""

    status: str
    counters: Counters
    error: BaseException | None


def actual_state(runner_status: str, lag_s: float, role: str = "both",
                 catching_up_after_s: float = 30.0) -> str:
    """The store's actual state (pending, loading, streaming, catching_up, stopped, failed) of a
    runner's status; streaming far behind the source is `catching_up`. A consumer has no slot
    to prepare: once running it is consuming (streaming)."""
    if runner_status == "running" and role == "consumer":
        runner_status = "streaming"
    if runner_status == "full_load":
        return "loading"
    if runner_status == "streaming":
        return "catching_up" if lag_s > catching_up_after_s else "streaming"
    if runner_status in ("stopped", "succeeded"):
        return "stopped"
    if runner_status == "failed":
        return "failed"
    return "pending"


def owner_label(host: str, pid: int) -> str:
    """The owner name of a run outside the fleet (a worker's is its --name)."""
    return f"run@{host}:{pid}"


class StateReporter:
    """A daemon thread reporting `runner` of `task` in `role` to `store` until `close()`."""

    def __init__(self, store: Any, task: str, role: str, runner: Reported) -> None:
        self.store, self.task, self.role, self.runner = store, task, role, runner
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker = owner_label(self.host, self.pid)
        self._done = threading.Event()
        self._last: tuple[Any, ...] | None = None
        self._at = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"trempy-report-{task}", daemon=True)

    def start(self) -> StateReporter:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop reporting and write the final state (stopped or failed, with the error)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.report(final=True)

    def _loop(self) -> None:
        while not self._done.wait(EVERY_S):
            self.report()

    def report(self, *, final: bool = False) -> None:
        c = self.runner.counters
        state = actual_state(self.runner.status, float(c.lag_seconds), self.role)
        error = self.runner.error
        figures = (state, int(c.lag_bytes), round(float(c.lag_seconds), 1), int(c.changes))
        now = time.monotonic()
        if not final and figures == self._last and now - self._at < IDLE_S:
            return
        try:
            self.store.report(self.task, role=self.role, state=state, worker=self.worker,
                              error=str(error) if error is not None else ("" if state != "failed" else None),
                              lag_bytes=figures[1], lag_s=round(float(c.lag_seconds), 3),
                              changes_applied=figures[3], host=self.host, pid=self.pid)
        except Exception:  # noqa: BLE001, S110 - reporting never stops a run; the next round retries
            return
        self._last, self._at = figures, now
