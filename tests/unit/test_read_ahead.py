"""The local stream's reader thread (transport.local._ReadAhead) over a fake reader: no database."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from trempy_nb.errors import TransientError
from trempy_nb.transport.base import CatchUp
from trempy_nb.transport.local import _CAUGHT_UP, _ReadAhead, _ReaderContext


class FakeReader:
    def __init__(self, batches: list[Any], fail_after: int | None = None) -> None:
        self.batches = list(batches)
        self.fail_after = fail_after
        self.reads = 0
        self.confirmed: list[int] = []
        self.closed = False

    def read_batch(self, upto_lsn: int | None = None) -> Any:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise TransientError("source connection reset")
        return self.batches.pop(0) if self.batches else None

    def confirm(self, lsn: int) -> None:
        self.confirmed.append(lsn)

    def has_buffered(self, upto_lsn: int | None = None) -> bool:
        return False  # every read is a new peek: the thread advances before each

    def prefetch(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _session(catch_up: int | None = 10**9) -> Any:
    hooks = SimpleNamespace(flushed_past=lambda lsn: True, heartbeat=lambda: None)
    return _ReaderContext("t", hooks, threading.Event(), CatchUp(catch_up), 0.01)


def _batch(lsn: int) -> Any:
    return SimpleNamespace(end_lsn=lsn)


def _next(ahead: _ReadAhead) -> Any:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        item = ahead.get(timeout=0.05)
        if item is not None:
            return item
    raise AssertionError("nothing handed over")


def test_batches_in_order_then_caught_up_and_advances_only_committed() -> None:
    reader = FakeReader([_batch(1), _batch(2), _batch(3)])
    committed: deque[int] = deque()
    ahead = _ReadAhead(_session(), reader, committed)
    got = []
    for _ in range(3):
        b = _next(ahead)
        got.append(b.end_lsn)
        ahead.confirm(b.end_lsn)
    assert _next(ahead) is _CAUGHT_UP
    ahead.close(drain=True, raise_errors=True)
    assert got == [1, 2, 3]
    assert reader.confirmed[-1] == 3 and reader.confirmed == sorted(reader.confirmed)
    assert not committed and reader.closed


def test_nothing_committed_nothing_advanced() -> None:
    reader = FakeReader([_batch(1), _batch(2)])
    ahead = _ReadAhead(_session(), reader, deque())
    assert _next(ahead).end_lsn == 1
    ahead.close(drain=True, raise_errors=True)
    assert reader.confirmed == []


def test_reader_thread_error_reaches_the_applying_thread() -> None:
    reader = FakeReader([_batch(1)], fail_after=1)
    ahead = _ReadAhead(_session(), reader, deque())
    assert _next(ahead).end_lsn == 1
    with pytest.raises(TransientError, match="connection reset"):
        _next(ahead)
    ahead.close(drain=True, raise_errors=True)


def test_advance_error_reaches_the_caller_on_close() -> None:
    class Failing(FakeReader):
        def confirm(self, lsn: int) -> None:
            raise TransientError("advance failed")

    reader = Failing([])
    session = _session(catch_up=None)
    ahead = _ReadAhead(session, reader, deque())
    session.stop.set()
    ahead.confirm(5)
    with pytest.raises(TransientError, match="advance failed"):
        ahead.close(drain=True, raise_errors=True)
