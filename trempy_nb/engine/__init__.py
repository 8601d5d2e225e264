"""The engine: where a run happens (lock, slot session and hand-off, full load, stream, apply).

    runner    Runner (roles both/producer/consumer), run_task, run_forever, run_role, drop_task
    session   CdcSession: the slot's lifecycle, the full-load hand-off, the StreamHooks of a run
    applier   ChangeApplier: the ChangeSink (plan per shape, apply in one transaction, counters)
    counters  Counters: live per-table counters for dashboards
    lock      task_lock: one runner per task, across processes
    fencing   evict, claim: a fenced takeover (evict the previous owner, store the new epoch)
    progress  full-load progress (bars / lines)
    pending   frame_of_pending: a stopped task's next changes, without consuming them
    result    RunResult, and RunnableTask (what the engine needs of a task)
    reporting StateReporter: a run outside the fleet reports its state, lag and changes to the store

The engine imports transports (looked up by name in `transport.registry`),
capture, fullload, pipeline and writer; none of them imports the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trempy_nb.lazyattrs import lazy_getattr

if TYPE_CHECKING:
    from trempy_nb.engine.applier import ChangeApplier
    from trempy_nb.engine.counters import Counters
    from trempy_nb.engine.fencing import claim, evict
    from trempy_nb.engine.lock import task_lock
    from trempy_nb.engine.pending import frame_of_pending
    from trempy_nb.engine.result import RunnableTask, RunResult
    from trempy_nb.engine.runner import (
        ConsumerRunner,
        Runner,
        drop_task,
        drop_task_by_name,
        run_forever,
        run_role,
        run_task,
    )
    from trempy_nb.engine.session import CdcSession, Handoff

# lazy: start-up speed (`task` imports `engine.result`; the run machinery loads when a run starts)
_LAZY = {
    "ChangeApplier": "applier",
    "Counters": "counters",
    "claim": "fencing",
    "evict": "fencing",
    "task_lock": "lock",
    "frame_of_pending": "pending",
    "RunResult": "result",
    "RunnableTask": "result",
    "ConsumerRunner": "runner",
    "Runner": "runner",
    "drop_task": "runner",
    "drop_task_by_name": "runner",
    "run_forever": "runner",
    "run_role": "runner",
    "run_task": "runner",
    "CdcSession": "session",
    "Handoff": "session",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "CdcSession",
    "ChangeApplier",
    "ConsumerRunner",
    "Counters",
    "Handoff",
    "RunResult",
    "RunnableTask",
    "Runner",
    "claim",
    "drop_task",
    "evict",
    "drop_task_by_name",
    "frame_of_pending",
    "run_forever",
    "run_role",
    "run_task",
    "task_lock",
]
