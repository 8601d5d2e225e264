"""Kept for imports that predate `trempy_nb.engine` (`from trempy_nb.runner import Runner`)."""

from __future__ import annotations

from trempy_nb.engine.counters import Counters
from trempy_nb.engine.lock import task_lock
from trempy_nb.engine.runner import (
    ConsumerRunner,
    Runner,
    drop_task,
    drop_task_by_name,
    run_forever,
    run_role,
    run_task,
)
from trempy_nb.errors import SlotLost
from trempy_nb.fullload import target_spec
from trempy_nb.writer.errorpolicy import is_transient

__all__ = [
    "ConsumerRunner",
    "Counters",
    "Runner",
    "SlotLost",
    "drop_task",
    "drop_task_by_name",
    "is_transient",
    "run_forever",
    "run_role",
    "run_task",
    "target_spec",
    "task_lock",
]
