"""The fencing token of a task's writes: who may write to the target, as plain data (no I/O).

A worker that owns a task through a lease runs it with `Fence(lease.epoch, valid)`.
Every target transaction that writes the task's data checks, in that same
transaction, that the target's stored epoch for the task is not newer than
`epoch` and that `valid()` still holds, and stores `epoch` (`writer.state.check_fence`,
`writer.mariadb.state.check_fence`). A worker frozen past its lease wakes up with
an older epoch than the one its successor stored at takeover (`claim_target`), so
its late write is rolled back (`errors.Fenced`) instead of applied twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trempy_nb.errors import Fenced


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Fence:
    """`epoch`: the lease's epoch (monotonic per task and role). `valid`: the worker's local proof that
    its lease is still within its ttl since the last successful renewal. `key`: the target row it
    guards (the runner sets it from the task and role, `fence_key`; empty = the task name)."""

    epoch: int
    valid: Callable[[], bool] = _always
    key: str = ""


def fence_key(task: str, role: str = "both") -> str:
    """The target row of a task's fence: one per lease (the task for role both, `<task>:<role>` else),
    as producer and consumer of one task hold separate leases with separate epochs."""
    return task if role == "both" else f"{task}:{role}"


def lost_message(key: str, stored: int | None, epoch: int) -> str:
    """The one line a fenced copy stops with."""
    task, _, role = key.partition(":")
    who = f"task {task}" + (f" ({role})" if role else "")
    if stored is not None and stored > epoch:
        return f"{who}: lease lost to epoch {stored}; this copy (epoch {epoch}) stops"
    return f"{who}: lease of epoch {epoch} expired (not renewed within its ttl); this copy stops"


def must_claim(fence: Fence, key: str, stored: int | None) -> bool:
    """The rule every target applies inside the writing transaction, once it holds the lock on the
    fence row of `key` (`stored`: its epoch, None without a row): `Fenced` when a newer epoch is
    stored or the lease is no longer valid; True when this fence's epoch is still to be stored."""
    if stored is not None and stored > fence.epoch:
        raise Fenced(lost_message(key, stored, fence.epoch))
    if not fence.valid():
        raise Fenced(lost_message(key, None, fence.epoch))
    return stored != fence.epoch
