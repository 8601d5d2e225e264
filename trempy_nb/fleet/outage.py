"""Riding out a lost state store: what a worker's run may skip recording, and nothing more.

A run records into the store as it goes (run start and end, a stats row and a log line per
batch, the target tables). When the store cannot be reached those calls would fail the run, and
a worker would stop applying at once although its lease is still provably valid. Through this
wrapper the records a run can do without are dropped while the store is away (counted, and
the worker says so once), so the run keeps applying until its lease clock runs out; then the
fence refuses its next commit. Records that carry data someone must act on (row errors, dead
letters) still raise.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from trempy_nb.errors import ConnectionFailed, TransientError

#: store methods a run may skip while the store is unreachable
TOLERATED = frozenset({"log", "record_stats", "start_run", "end_run", "record_targets"})
#: what an unreachable or overloaded store raises
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (ConnectionFailed, TransientError, OSError,
                                                  psycopg.OperationalError, sqlite3.OperationalError)


class OutageTolerantStore:
    """A `MetadataStore` whose TOLERATED methods return None (start_run: a fresh run id) instead of
    raising while the store is unreachable; every other attribute is the store's own."""

    def __init__(self, store: Any, on_outage: Callable[[BaseException], None] | None = None) -> None:
        self._store = store
        self._on_outage = on_outage
        self._lock = threading.Lock()
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in TOLERATED or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except OUTAGE_ERRORS as exc:
                with self._lock:
                    self.dropped += 1
                if self._on_outage is not None:
                    self._on_outage(exc)
                return uuid.uuid4().hex if name == "start_run" else None

        return call

    def __repr__(self) -> str:
        return f"OutageTolerantStore({self._store!r})"
