"""Fault injection for the crash tests: exit hard at a named step.

A module of its own so that a full load checks its crash points without
importing change capture.
"""

from __future__ import annotations

import os


def crash_point(name: str) -> None:
    """Exit at once (status 97, no cleanup) when TREMPY_CRASH_AT names this step (tests only)."""
    if os.environ.get("TREMPY_CRASH_AT") == name:
        os._exit(97)
