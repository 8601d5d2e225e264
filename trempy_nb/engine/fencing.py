"""Takeover of a fenced task: evict the previous owner's sessions, store the new epoch on the target.

`evict` terminates, on the source, the previous owner's task-lock session, the
walsender holding the task's slot (pg_replication_slots.active_pid) and its
snapshot and other sessions (by application_name `trempy_nb:<task>:...`), and on
the target its sessions (by application_name on PostgreSQL; by the session
registry on MariaDB). A frozen (SIGSTOPped) process keeps its sockets open, so
without this its locks, slot and row locks would stay held and the new owner
would wait forever; terminating the server side rolls its transactions back.

`claim` then stores the new epoch (`TargetDialect.claim_target`): every later write
of an older epoch is refused in its own transaction (`errors.Fenced`). The claim
waits for the fence row's lock, which an in-flight write of the zombie holds:
it evicts again and retries while that lock is held.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import psycopg

from trempy_nb.capture.slot import slot_name
from trempy_nb.db import connect, task_app_name, task_app_prefix
from trempy_nb.errors import Fenced, TrempyError
from trempy_nb.transport.base import Role
from trempy_nb.writer import sessions
from trempy_nb.writer.dialect import POSTGRES, TargetDialect

#: application_name suffix of a rabbitmq consumer's target connections (the transport's `sink_name`
#: and its held-table connections): a producer's takeover spares them, a consumer's takes only them
CONSUMER_NAME = "consume"


def evict(task: str, source_uri: str | None, target_uri: str | None, keep_pids: Iterable[int] = (), *,
          role: Role = "both", dialect: TargetDialect | None = None, keep_pid: int | None = None) -> dict[str, list[int]]:
    """Terminate the previous owner's sessions of `task` (in `role`) on source and target; returns
    {"source": pids, "target": ids} terminated. `keep_pids` (and `keep_pid`) are spared."""
    keep = [*keep_pids, *([keep_pid] if keep_pid is not None else [])]
    out: dict[str, list[int]] = {"source": [], "target": []}
    prefix = task_app_prefix(task)
    consumer = task_app_name(task, CONSUMER_NAME)
    if source_uri and role != "consumer":
        with connect(source_uri, autocommit=True, application_name=task_app_name(task, "evict")) as src:
            pids = set(sessions.named_pids(src, sessions.like_prefix(prefix),
                                           unlike=sessions.like_prefix(consumer), keep=keep))
            pids |= _slot_and_lock_holders(src, task)
            pids -= {int(p) for p in keep}
            out["source"] = sessions.terminate(src, sorted(pids))
    if target_uri:
        d = dialect if dialect is not None else POSTGRES
        like, unlike = ((sessions.like_prefix(consumer), None) if role == "consumer"
                        else (sessions.like_prefix(prefix), sessions.like_prefix(consumer) if role == "producer" else None))
        conn = d.connect(target_uri, autocommit=True, application_name=task_app_name(task, "evict"))
        try:
            out["target"] = d.evict(conn, like, unlike=unlike, keep=keep)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    return out


def _slot_and_lock_holders(src: psycopg.Connection, task: str) -> set[int]:
    """The walsender holding the task's slot and the session holding its task lock (whatever their
    application_name: an older version's, or a hand-made one)."""
    pids: set[int] = set()
    row = src.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot_name(task),)).fetchone()
    if row and row[0]:
        pids.add(int(row[0]))
    # the task lock: pg_try_advisory_lock(hashtext('trempy:<task>')), one bigint key split in two
    rows = src.execute(
        "SELECT l.pid FROM pg_locks l, (SELECT hashtext(%s)::bigint AS k) h WHERE l.locktype = 'advisory'"
        " AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.objsubid = 1 AND l.classid::bigint = ((h.k >> 32) & 4294967295)"
        " AND l.objid::bigint = (h.k & 4294967295) AND l.pid <> pg_backend_pid()",
        (f"trempy:{task}",),
    ).fetchall()
    pids |= {int(r[0]) for r in rows}
    return pids


def claim(dialect: TargetDialect, target_uri: str, task: str, key: str, epoch: int, *,
          source_uri: str | None = None, role: Role = "both", wait_s: float = 30.0) -> None:
    """Store `epoch` for `key` on the target (`Fenced` when a newer one is there). A zombie's
    in-flight write holds the fence row: evict again and retry until `wait_s`."""
    deadline = time.monotonic() + wait_s
    retry_on: tuple[type[BaseException], ...] = (*dialect.errors, TrempyError)
    while True:
        conn = dialect.connect(target_uri, application_name=task_app_name(task, "claim"))
        try:
            dialect.lock_timeout(conn, 2.0)  # a zombie's lock is evicted, not waited for
            dialect.claim_target(conn, key, epoch)
            return
        except Fenced:
            raise
        except retry_on as exc:
            if time.monotonic() > deadline:
                raise Fenced(f"task {task}: cannot store epoch {epoch} on the target: {exc}") from exc
            evict(task, source_uri, target_uri, [dialect.backend_id(conn)], role=role, dialect=dialect)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        time.sleep(0.2)
