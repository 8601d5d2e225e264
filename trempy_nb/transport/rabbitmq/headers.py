"""The `x-trempy-*` message headers: what a batch, a marker or a dead letter says about itself (pure).

A batch message names its task, codec version, first and end commit LSNs, its
change count, the producer session that published it and the end LSN of the
batch before it in that session (`prev-end`: a consumer drops a batch whose
predecessor is not applied as a stale copy overtaken by a republish). A split
batch carries `part`/`parts`. A *marker* says every change committed before its
`lsn` is queued ahead of it; the *final* one ends a producer's catch-up run. A
dead letter adds the reason, error, attempts and time.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from trempy_nb import changes as ch
from trempy_nb.redact import mask
from trempy_nb.transport.rabbitmq import codec

H = "x-trempy-"  # header prefix

Headers = dict[str, Any]  # AMQP table values: str, int, bytes, nested tables (pika's types)


def batch_headers(task: str, batch: ch.ChangeBatch, session: str, prev_end: int | None) -> Headers:
    headers: Headers = {
        H + "kind": "batch",
        H + "task": task,
        H + "format": codec.VERSION,
        H + "first-lsn": int(batch.first_lsn),
        H + "end-lsn": int(batch.end_lsn),
        H + "changes": int(batch.n_changes),
        H + "session": session,
    }
    if prev_end is not None:
        headers[H + "prev-end"] = int(prev_end)
    return headers


def marker_headers(task: str, lsn: int, final: bool = False) -> Headers:
    """A marker: every change committed (and flushed) before `lsn` is in the queue ahead of it.
    `final`: the end of a producer's --until-caught-up run (with the time it was published)."""
    h: Headers = {H + "kind": "marker", H + "task": task, H + "lsn": int(lsn)}
    if final:
        h |= {H + "final": 1, H + "at-ms": int(time.time() * 1000)}
    return h


def dead_letter_headers(task: str, batch: ch.ChangeBatch, n_changes: int, tables: str, reason: str,
                        error: str, attempts: int) -> Headers:
    return {
        H + "kind": "batch",
        H + "task": task,
        H + "format": codec.VERSION,
        H + "first-lsn": int(batch.first_lsn),
        H + "end-lsn": int(batch.end_lsn),
        H + "changes": int(n_changes),
        H + "tables": tables,
        H + "reason": reason,
        H + "error": mask(error)[:4000],
        H + "attempts": int(attempts),
        H + "dead-at": now_iso(),
    }


def unreadable_headers(headers: Headers, task: str, reason: str, error: str) -> Headers:
    """A message we cannot read goes to the DLX as it is, with the reason added."""
    h = {k: v for k, v in headers.items() if not k.startswith("x-death")}
    h |= {
        H + "reason": reason,
        H + "error": mask(error)[:4000],
        H + "attempts": 0,
        H + "dead-at": now_iso(),
        H + "task": task,
    }
    return h


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def kind(headers: Headers) -> str:
    value = headers.get(H + "kind", "batch")
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def part_of(headers: Headers) -> tuple[int, int]:
    """(part, parts) of a split batch; (0, 1) for a whole one (or unreadable numbers)."""
    try:
        return int(headers.get(H + "part", 0)), int(headers.get(H + "parts", 1))
    except (TypeError, ValueError):
        return 0, 1


def text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def lsn_text(v: Any) -> str | None:
    try:
        return ch.int_to_lsn(int(v)) if v is not None else None
    except (TypeError, ValueError):
        return text(v)
