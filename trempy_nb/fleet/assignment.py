"""One (task, role) a worker holds: its lease, the lease's local clock, the current runner and
its restart bookkeeping. Plain state the supervisor loop drives (`fleet.worker`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from trempy_nb.fleet.policy import Failures, LeaseClock


class LeaseLike(Protocol):
    """What the worker reads of the store's `Lease` (task, role, worker, epoch, ttl_s)."""

    task: str
    role: str
    worker: str
    epoch: int
    ttl_s: float


class RunnerLike(Protocol):
    """What the worker needs of an `engine.runner.Runner`."""

    status: str
    error: BaseException | None
    counters: Any

    @property
    def running(self) -> bool: ...

    def start(self) -> Any: ...

    def stop(self, timeout: float = 60.0) -> Any: ...


#: why an assignment is being stopped
STOP_DESIRED, STOP_DRAIN, STOP_LOST, STOP_FAILED = "desired", "drain", "lost", "failed"


@dataclass
class Assignment:
    task: str
    role: str
    lease: Any
    clock: LeaseClock
    runner: RunnerLike | None = None
    failures: Failures = field(default_factory=Failures)
    started_at: float = 0.0
    starts: int = 0
    stopping: str | None = None  # STOP_* once a stop was asked for
    state: str = "pending"
    reported: tuple[Any, ...] = ()  # the figures last reported, and when (monotonic)
    reported_at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.role)

    @property
    def epoch(self) -> int:
        return int(self.lease.epoch)

    def alive(self) -> bool:
        return self.runner is not None and self.runner.running

    def up_for(self, now: float | None = None) -> float:
        return ((time.monotonic() if now is None else now) - self.started_at) if self.started_at else 0.0
