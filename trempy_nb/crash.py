"""Fault injection for the crash tests: exit hard at a named step.

A module of its own so that a full load checks its crash points without
importing change capture.
"""

from __future__ import annotations

import os
import signal
import threading


def crash_point(name: str) -> None:
    """Exit at once (status 97, no cleanup) when TREMPY_CRASH_AT names this step (tests only)."""
    if os.environ.get("TREMPY_CRASH_AT") == name:
        os._exit(97)


_paused: set[str] = set()


def pause_point(name: str) -> None:
    """Freeze this whole process (SIGSTOP to itself) the first time it reaches the step that
    TREMPY_CRASH_AT names as `pause:<step>`: a test then acts while it is frozen there (a zombie
    inside a transaction) and SIGCONTs it (tests only)."""
    if os.environ.get("TREMPY_CRASH_AT") == f"pause:{name}" and name not in _paused:
        _paused.add(name)
        # to this thread: a process-directed SIGSTOP may be taken by another thread, and this one
        # would run on (and commit) for a few milliseconds before the whole process stops
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
