"""A fenced run in a process of its own, as a worker would start it (tests/integration/test_fencing.py).

    python -m tests.fence_proc SETTINGS EPOCH

Runs `Runner(task, fence=Fence(EPOCH))` until SIGTERM (then stops after the batch, exit 0), or
until it fails: the error goes to stderr and the exit status is 3. A full_load task ends by itself.
"""

from __future__ import annotations

import signal
import sys
import time

from trempy_nb.engine.runner import Runner
from trempy_nb.task import Task
from trempy_nb.writer.fence import Fence


def main() -> int:
    path, epoch = sys.argv[1], int(sys.argv[2])
    runner = Runner(Task.from_settings(path), fence=Fence(epoch)).start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while runner.running and not stop:
        time.sleep(0.1)
    try:
        runner.stop(timeout=60) if stop else runner.wait()
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    print(f"DONE: {runner.status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
