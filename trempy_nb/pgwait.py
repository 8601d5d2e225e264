"""Waiting on libpq connections: the one place that blocks on a PostgreSQL socket.

Why one module: the replication stream (`capture/stream.py`) and the COPY
pumps (`writer/copy.py`) drive libpq directly (`conn.pgconn`), so they wait on
its socket themselves instead of letting psycopg do it. Keeping that waiting
here means the protocol code around it only ever asks "is there input?" and
"is the output sent?", and one fix (here: `poll`, so a process holding more
than 1024 descriptors still works, where `select` raises) serves every caller.
The model is psycopg's own `psycopg/waiting.py`.

A leaf module: it imports nothing from trempy_nb, so any layer (capture, the
writer, a COPY package) can use it without an import cycle.
"""

from __future__ import annotations

import math
import select

from psycopg import pq

__all__ = ["wait", "receive", "flush"]

_HAS_POLL = hasattr(select, "poll")  # not on Windows: `select` there
_IN = select.POLLIN if _HAS_POLL else 0
_OUT = select.POLLOUT if _HAS_POLL else 0
_ANY = (_IN | _OUT | select.POLLERR | select.POLLHUP | select.POLLNVAL) if _HAS_POLL else 0


def wait(
    read: pq.abc.PGconn | None = None,
    write: pq.abc.PGconn | None = None,
    timeout: float | None = None,
) -> tuple[bool, bool]:
    """Block until `read`'s socket has input or `write`'s can take output, at most `timeout`
    seconds (None: no limit). Returns (readable, writable).

    An error or hang-up on a socket counts as ready, so the caller's next libpq
    call (`consume_input`, `flush`) meets the error and raises it.
    """
    rfd = read.socket if read is not None else None
    wfd = write.socket if write is not None else None
    if not _HAS_POLL:
        rl, wl, _ = select.select(
            [] if rfd is None else [rfd], [] if wfd is None else [wfd], [], timeout
        )
        return bool(rl), bool(wl)
    poller = select.poll()
    masks: dict[int, int] = {}
    if rfd is not None:
        masks[rfd] = _IN
    if wfd is not None:
        masks[wfd] = masks.get(wfd, 0) | _OUT
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    readable = writable = False
    for fd, events in poller.poll(ms):
        if fd == rfd and events & (_ANY & ~_OUT):
            readable = True
        if fd == wfd and events & (_ANY & ~_IN):
            writable = True
    return readable, writable


def receive(pg: pq.abc.PGconn, timeout: float | None = None) -> bool:
    """Wait (at most `timeout`) for input on `pg`, then let libpq read it in.

    Returns whether input arrived; what it was is then for `get_copy_data` or
    `get_result` to say. A broken connection raises from `consume_input`.
    """
    readable, _ = wait(pg, None, timeout)
    if readable:
        pg.consume_input()
    return readable


def flush(pg: pq.abc.PGconn) -> None:
    """Send everything libpq holds for `pg`, waiting while the socket is full."""
    while pg.flush() == 1:
        wait(None, pg)
