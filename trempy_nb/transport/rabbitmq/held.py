"""Held tables and replay checkpoints, kept on the target (they survive restarts).

A table whose batch was dead-lettered is *held*: its later changes are
dead-lettered behind it, so its order is kept while the other tables go on.
Replayed dead letters are applied with a per-table checkpoint
(`<task>#replay:<schema>.<table>`), so a replay is exactly once. Both live on the
target, in its own database's SQL: the run's target dialect (PostgreSQL, or
MariaDB/MySQL) does the I/O.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from trempy_nb.writer.dialect import POSTGRES, TargetDialect


def replay_checkpoint_name(task: str, key: tuple[str, str]) -> str:
    return f"{task}#replay:{key[0]}.{key[1]}"


@dataclass
class Held:
    since_lsn: int
    held_upto: int
    replay_failed: bool = False


class HeldTables:
    """Tables whose changes wait behind a dead letter (kept on the target: survives restarts)."""

    def __init__(self, target: str, task: str, dialect: TargetDialect | None = None) -> None:
        self.target, self.task = target, task
        self.dialect = dialect or POSTGRES
        with self.dialect.connect(target, autocommit=True) as conn:
            self.dialect.ensure_held_table(conn)
            self.tables = {key: Held(*h) for key, h in self.dialect.read_held(conn, task).items()}

    def hold(self, key: tuple[str, str], lsn: int, replay_failed: bool | None = None) -> None:
        h = self.tables.get(key)
        h = Held(lsn, lsn) if h is None else Held(h.since_lsn, max(h.held_upto, lsn), h.replay_failed)
        if replay_failed is not None:
            h.replay_failed = replay_failed
        with self.dialect.connect(self.target, autocommit=True) as conn:
            self.dialect.write_held(conn, self.task, key, (h.since_lsn, h.held_upto, h.replay_failed))
        self.tables[key] = h

    def release(self, key: tuple[str, str]) -> None:
        with self.dialect.connect(self.target, autocommit=True) as conn:
            self.dialect.delete_held(conn, self.task, key)
        self.tables.pop(key, None)


def reset_target_state(target: str, task: str, dialect: TargetDialect | None = None) -> None:
    """start_mode reload: forget held tables and replay checkpoints of the task."""
    d = dialect or POSTGRES
    with d.connect(target, autocommit=True) as conn:
        d.ensure_held_table(conn)
        d.delete_held(conn, task)
        with contextlib.suppress(*d.errors):  # no checkpoints table yet: nothing to forget
            d.delete_stream_checkpoints(conn, task)
