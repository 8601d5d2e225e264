"""Per-table lifecycle in the state store: requests a user makes of a running task, each table's state,
and the last diff result per table.

A request (add a table, resync, pause, resume) is a row in `table_requests`: any process may write
it (CLI, notebook, Python), and the task's owner (the runner holding the task, in any process or a
fleet worker) takes it at a batch boundary and carries it out: requested -> running -> done | failed.
The owner polls with one indexed query (`open_table_requests`) about once a second. A request of a
task that is running nowhere waits for its next run. `table_state` says what each table is doing
(streaming, loading, resyncing, paused) for the dashboard; `table_diffs` keeps the last diff of each
table (`Task.diff`).
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from trempy_nb.redact import mask
from trempy_nb.store.backend import Backend, Runner
from trempy_nb.store.schema import REQUEST_STATES, TABLE_ACTIONS, TABLE_STATES

__all__ = ["OPEN_STATES", "LifecycleMixin"]

#: requests the owner still has to carry out ('running' ones of a dead owner are taken up again)
OPEN_STATES = ("requested", "running")
_REQUEST_COLUMNS = "id, task, \"table\", action, options, state, error, message, requested_at, started_at, ended_at"


class LifecycleMixin:
    """Lifecycle methods of MetadataStore (the facade provides the backend and the frame reader)."""

    _b: Backend

    # provided by the facade
    def _frame(self, kind: str, sql: str, params: tuple[Any, ...] = (), run: Runner | None = None) -> pl.DataFrame:
        raise NotImplementedError

    # ------------------------------------------------------------------ requests

    def request_table(self, task: str, table: str, action: str, options: dict[str, Any] | None = None) -> int:
        """Record a request for the task's owner; returns its id."""
        if action not in TABLE_ACTIONS:
            raise ValueError(f"table action must be one of {', '.join(TABLE_ACTIONS)}, not {action!r}")
        with self._b.write() as run:
            row = run.execute(
                'INSERT INTO table_requests (task, "table", action, options, state, requested_at) '
                "VALUES (?, ?, ?, ?, 'requested', ?) RETURNING id",
                (task, table, action, json.dumps(options) if options else None, self._b.now()),
            ).fetchone()
        return int(row[0])

    def open_table_requests(self, task: str) -> list[dict[str, Any]]:
        """The task's requested or running requests, oldest first (the owner's poll: one indexed query)."""
        with self._b.read() as run:
            cur = run.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM table_requests WHERE task = ? AND state IN (?, ?) ORDER BY id",  # noqa: S608
                (task, *OPEN_STATES),
            )
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = [dict(zip(names, r, strict=True)) for r in rows]
        for r in out:
            r["options"] = json.loads(r["options"]) if r["options"] else {}
        return out

    def table_request(self, request_id: int) -> dict[str, Any] | None:
        """One request as a dict (None when unknown)."""
        with self._b.read() as run:
            cur = run.execute(f"SELECT {_REQUEST_COLUMNS} FROM table_requests WHERE id = ?", (int(request_id),))  # noqa: S608
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
        return dict(zip(names, row, strict=True)) if row else None

    def start_table_request(self, request_id: int) -> None:
        """The owner took the request up."""
        with self._b.write() as run:
            run.execute(
                "UPDATE table_requests SET state = 'running', started_at = COALESCE(started_at, ?) WHERE id = ?",
                (self._b.now(), int(request_id)),
            )

    def end_table_request(self, request_id: int, state: str, *, message: str | None = None,
                          error: str | None = None) -> None:
        """The request is done or failed (with a masked message or error)."""
        if state not in REQUEST_STATES or state in OPEN_STATES:
            raise ValueError(f"a finished request is done or failed, not {state!r}")
        with self._b.write() as run:
            run.execute(
                "UPDATE table_requests SET state = ?, message = ?, error = ?, ended_at = ? WHERE id = ?",
                (state, mask(message) if message else None, mask(error) if error else None, self._b.now(),
                 int(request_id)),
            )

    def table_requests(self, task: str | None = None, limit: int = 50) -> pl.DataFrame:
        """The latest requests, newest first."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "table_requests",
            f"SELECT {_REQUEST_COLUMNS} FROM table_requests {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
            (*params, int(limit)),
        )

    # ------------------------------------------------------------------ table state

    def set_table_state(self, task: str, table: str, state: str, *, request_id: int | None = None,
                        detail: str | None = None) -> None:
        """What a table of the task is doing now (streaming, loading, resyncing, paused)."""
        if state not in TABLE_STATES:
            raise ValueError(f"table state must be one of {', '.join(TABLE_STATES)}, not {state!r}")
        with self._b.write() as run:
            run.execute(
                'INSERT INTO table_state (task, "table", state, request_id, detail, updated_at) VALUES (?, ?, ?, ?, ?, ?) '
                'ON CONFLICT (task, "table") DO UPDATE SET state = excluded.state, request_id = excluded.request_id, '
                "detail = excluded.detail, updated_at = excluded.updated_at",
                (task, table, state, request_id, mask(detail) if detail else None, self._b.now()),
            )

    def table_states(self, task: str | None = None) -> pl.DataFrame:
        """Each table's lifecycle state (tables never touched by a lifecycle action have no row: streaming)."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "table_state",
            f'SELECT task, "table", state, request_id, detail, updated_at FROM table_state {where} '  # noqa: S608
            'ORDER BY task, "table"',
            params,
        )

    # ------------------------------------------------------------------ diff results

    def record_diff(self, task: str, table: str, target: str, *, source_rows: int | None, target_rows: int | None,
                    missing: int, extra: int, different: int, repaired: int, summary: str | None = None) -> None:
        """The last diff of one table (replaces the previous one)."""
        with self._b.write() as run:
            run.execute(
                'INSERT INTO table_diffs (task, "table", target, source_rows, target_rows, missing, extra, different, '
                "repaired, summary, diffed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                'ON CONFLICT (task, "table") DO UPDATE SET target = excluded.target, '
                "source_rows = excluded.source_rows, target_rows = excluded.target_rows, missing = excluded.missing, "
                "extra = excluded.extra, different = excluded.different, repaired = excluded.repaired, "
                "summary = excluded.summary, diffed_at = excluded.diffed_at",
                (task, table, target, source_rows, target_rows, int(missing), int(extra), int(different),
                 int(repaired), mask(summary) if summary else None, self._b.now()),
            )

    def table_diffs(self, task: str | None = None) -> pl.DataFrame:
        """The last diff result of each table."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "table_diffs",
            'SELECT task, "table", target, source_rows, target_rows, missing, extra, different, repaired, '  # noqa: S608
            f'summary, diffed_at FROM table_diffs {where} ORDER BY task, "table"',
            params,
        )
