"""Held tables and replay checkpoints, kept on the target (they survive restarts).

A table whose batch was dead-lettered is *held*: its later changes are
dead-lettered behind it, so its order is kept while the other tables go on.
Replayed dead letters are applied with a per-table checkpoint
(`<task>#replay:<schema>.<table>`), so a replay is exactly once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from trempy_nb.db import connect
from trempy_nb.writer.ddl import STATE_SCHEMA as _STATE


def _held_ddl() -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.rabbitmq_held (task text, schema_name text, table_name text,"
        " since_lsn bigint, held_upto bigint, replay_failed boolean NOT NULL DEFAULT false,"
        " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (task, schema_name, table_name))"
    ).format(sql.Identifier(_STATE))


def replay_checkpoint_name(task: str, key: tuple[str, str]) -> str:
    return f"{task}#replay:{key[0]}.{key[1]}"


@dataclass
class Held:
    since_lsn: int
    held_upto: int
    replay_failed: bool = False


class HeldTables:
    """Tables whose changes wait behind a dead letter (kept on the target: survives restarts)."""

    def __init__(self, target: str, task: str) -> None:
        self.target, self.task = target, task
        self.tables: dict[tuple[str, str], Held] = {}
        with connect(target, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(_STATE)))
            conn.execute(_held_ddl())
            for s, t, since, upto, failed in conn.execute(
                sql.SQL(
                    "SELECT schema_name, table_name, since_lsn, held_upto, replay_failed FROM {}.rabbitmq_held"
                    " WHERE task = %s"
                ).format(sql.Identifier(_STATE)),
                (task,),
            ):
                self.tables[(s, t)] = Held(int(since), int(upto), bool(failed))

    def hold(self, key: tuple[str, str], lsn: int, replay_failed: bool | None = None) -> None:
        h = self.tables.get(key)
        h = (
            Held(lsn, lsn)
            if h is None
            else Held(h.since_lsn, max(h.held_upto, lsn), h.replay_failed)
        )
        if replay_failed is not None:
            h.replay_failed = replay_failed
        with connect(self.target, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.rabbitmq_held (task, schema_name, table_name, since_lsn, held_upto, replay_failed)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (task, schema_name, table_name) DO UPDATE"
                    " SET held_upto = EXCLUDED.held_upto, replay_failed = EXCLUDED.replay_failed,"
                    " updated_at = now()"
                ).format(sql.Identifier(_STATE)),
                (self.task, key[0], key[1], h.since_lsn, h.held_upto, h.replay_failed),
            )
        self.tables[key] = h

    def release(self, key: tuple[str, str]) -> None:
        with connect(self.target, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "DELETE FROM {}.rabbitmq_held WHERE task = %s AND schema_name = %s"
                    " AND table_name = %s"
                ).format(sql.Identifier(_STATE)),
                (self.task, *key),
            )
        self.tables.pop(key, None)


def reset_target_state(target: str, task: str) -> None:
    """start_mode reload: forget held tables and replay checkpoints of the task."""
    with connect(target, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(_STATE)))
        conn.execute(_held_ddl())
        conn.execute(
            sql.SQL("DELETE FROM {}.rabbitmq_held WHERE task = %s").format(sql.Identifier(_STATE)),
            (task,),
        )
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                sql.SQL("DELETE FROM {}.checkpoints WHERE task LIKE %s").format(
                    sql.Identifier(_STATE)
                ),
                (task.replace("_", r"\_") + "#%",),
            )

