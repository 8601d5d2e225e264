"""Held tables and replay checkpoints, kept on the target (they survive restarts).

A table whose batch was dead-lettered is *held*: its later changes are
dead-lettered behind it, so its order is kept while the other tables go on.
Replayed dead letters are applied with a per-table checkpoint
(`<task>#replay:<schema>.<table>`), so a replay is exactly once. Both live on the
target, in its own database's SQL: the run's target dialect (PostgreSQL, or
MariaDB/MySQL) does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from trempy_nb.db import task_app_name
from trempy_nb.writer.dialect import POSTGRES, TargetDialect
from trempy_nb.writer.fence import Fence

#: the application_name suffix of these connections: the consumer's (a producer's takeover spares them)
APP = "consume-held"


def replay_checkpoint_name(task: str, key: tuple[str, str]) -> str:
    return f"{task}#replay:{key[0]}.{key[1]}"


@dataclass
class Held:
    since_lsn: int
    held_upto: int
    replay_failed: bool = False


class HeldTables:
    """Tables whose changes wait behind a dead letter (kept on the target: survives restarts)."""

    def __init__(self, target: str, task: str, dialect: TargetDialect | None = None,
                 fence: Fence | None = None) -> None:
        self.target, self.task, self.fence = target, task, fence
        self.dialect = dialect or POSTGRES
        with self.dialect.connect(target, autocommit=True, application_name=task_app_name(task, APP)) as conn:
            self.dialect.ensure_held_table(conn)
            self.tables = {key: Held(*h) for key, h in self.dialect.read_held(conn, task).items()}

    def hold(self, key: tuple[str, str], lsn: int, replay_failed: bool | None = None) -> None:
        h = self.tables.get(key)
        h = Held(lsn, lsn) if h is None else Held(h.since_lsn, max(h.held_upto, lsn), h.replay_failed)
        if replay_failed is not None:
            h.replay_failed = replay_failed
        d = self.dialect
        with d.connect(self.target, autocommit=True, application_name=task_app_name(self.task, APP)) as conn, \
                d.fenced(conn, self.fence, self.task):
            d.write_held(conn, self.task, key, (h.since_lsn, h.held_upto, h.replay_failed))
        self.tables[key] = h

    def release(self, key: tuple[str, str]) -> None:
        d = self.dialect
        with d.connect(self.target, autocommit=True, application_name=task_app_name(self.task, APP)) as conn, \
                d.fenced(conn, self.fence, self.task):
            d.delete_held(conn, self.task, key)
        self.tables.pop(key, None)


def reset_target_state(target: str, task: str, dialect: TargetDialect | None = None,
                       fence: Fence | None = None) -> None:
    """start_mode reload: forget held tables and replay checkpoints of the task."""
    d = dialect or POSTGRES
    with d.connect(target, autocommit=True, application_name=task_app_name(task, "reset")) as conn:
        d.ensure_held_table(conn)
        d.ensure_state_tables(conn)  # the checkpoints table too: the deletes below go in one transaction
        with d.fenced(conn, fence, task):
            d.delete_held(conn, task)
            d.delete_stream_checkpoints(conn, task)
