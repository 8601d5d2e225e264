"""`MetadataStore`: tasks, runs, per-table stats, logs, errors, dead letters and targets, on either backend.

Every text stored (errors, logs, payloads) goes through `mask`. Task settings are
stored as given, except that a `source`/`target` URI with a literal password is first
saved as a connection (password encrypted) and replaced by that connection's name
(`<task>-source`, `<task>-target`): masking it would lose the password and break the
stored task, while a saved name is part of the settings vocabulary already and resolves
back to the same URI. The fleet's part of the API (desired state, workers, leases) is
`store.fleet.FleetMixin`.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import polars as pl

from trempy_nb.connections import has_literal_password, protect
from trempy_nb.errors import SettingsError
from trempy_nb.redact import mask
from trempy_nb.store.backend import Backend, Runner
from trempy_nb.store.fleet import FleetMixin
from trempy_nb.store.lifecycle import LifecycleMixin
from trempy_nb.store.location import resolve_location
from trempy_nb.store.postgres import PostgresBackend
from trempy_nb.store.schema import COUNTERS, FRAMES, LOG_LEVELS, TARGET_FIELDS, RunKind, RunStatus
from trempy_nb.store.sqlite import SqliteBackend

__all__ = ["MetadataStore", "mask_value"]


def mask_value(value: Any) -> Any:
    """Mask every string in a JSON-like value (keys too), so stored payloads leak nothing."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {mask(str(k)): mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [mask_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask(str(value))  # dates, Decimals, bytes...: their text form, masked


def _level_name(level: str | int) -> str:
    return (level if isinstance(level, str) else logging.getLevelName(level)).upper()


def _like_escape(text: str) -> str:
    """`text` as a literal inside a LIKE pattern whose ESCAPE is a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: a level's number in SQL, so "WARNING and above" is one comparison (unknown levels count as INFO)
_LEVELNO = "CASE level " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in LOG_LEVELS.items()) + " ELSE 20 END"


class MetadataStore(FleetMixin, LifecycleMixin):
    """The state store: SQLite under $TREMPY_HOME by default, PostgreSQL for a fleet (same API, same tables).

    `location`: None (`$TREMPY_METADATA_URL`, else `$TREMPY_HOME/metadata.sqlite3`), a file path,
    a `postgresql://` URL or a saved connection name (`store.location.resolve_location`)."""

    def __init__(self, location: str | Path | None = None, *, timeout: float = 30.0) -> None:
        where = resolve_location(location)
        self.kind = where.kind
        self.timeout = timeout
        self._b: Backend
        if where.kind == "sqlite":
            self._b = SqliteBackend(Path(where.target), timeout=timeout)
            self.path: Path | None = Path(where.target)
        else:
            self._b = PostgresBackend.shared(where.target, timeout=timeout)
            self.path = None
        super().__init__()

    # ------------------------------------------------------------------ plumbing

    @property
    def backend(self) -> Backend:
        return self._b

    @property
    def location(self) -> str:
        """Where the store is: a file path, or the PostgreSQL URL with its password masked."""
        return self._b.describe()

    def _conn(self) -> Any:
        """SQLite only: this thread's sqlite3 connection (tests and tools inspecting the file)."""
        if not isinstance(self._b, SqliteBackend):
            raise TypeError("a PostgreSQL store has no single connection; use store.backend.read()")
        return self._b.conn()

    def _now(self) -> Any:
        return self._b.now()

    def _frame(self, kind: str, sql: str, params: tuple[Any, ...] = (), run: Runner | None = None) -> pl.DataFrame:
        """A query's rows as a frame of FRAMES[kind]'s types (timestamps parsed from either backend)."""
        schema = FRAMES[kind]
        if run is None:
            with self._b.read() as r:
                cur = r.execute(sql, params)
                rows = cur.fetchall()
                names = [d[0] for d in cur.description]
        else:
            cur = run.execute(sql, params)
            rows, names = cur.fetchall(), [d[0] for d in cur.description]
        ts = pl.Datetime("us", "UTC")
        if not self._b.text_times:
            return pl.DataFrame([tuple(r) for r in rows], schema={n: schema[n] for n in names}, orient="row")
        text_schema = {n: (pl.String if schema[n] == ts else schema[n]) for n in names}
        df = pl.DataFrame([tuple(r) for r in rows], schema=text_schema, orient="row")
        return df.with_columns(
            pl.col(n).str.to_datetime(time_unit="us", time_zone="UTC") for n in names if schema[n] == ts
        )

    def close(self) -> None:
        """Close every connection (call once no thread uses the store any more)."""
        self._b.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetadataStore({self.location!r})"

    # ------------------------------------------------------------------ tasks

    def _stored_settings(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings as stored: literal passwords moved to saved connections."""
        stored: dict[str, Any] = json.loads(json.dumps(settings, default=str))
        section = stored.get("task")
        holder: dict[str, Any] = section if isinstance(section, dict) else stored
        for key in ("source", "target"):
            ref = holder.get(key)
            if isinstance(ref, str):
                holder[key] = protect(ref, f"{name}-{key}")
        return stored

    def save_task(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Store a task's settings (literal passwords moved to saved connections); returns what was stored."""
        stored = self._stored_settings(name, settings)
        text = json.dumps(stored, sort_keys=False)
        with self._b.write() as run:
            run.execute(
                "INSERT INTO tasks (name, settings, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings, "
                "updated_at = excluded.updated_at, settings_version = tasks.settings_version + "
                "(CASE WHEN tasks.settings = excluded.settings THEN 0 ELSE 1 END)",
                (name, text, self._now()),
            )
        return stored

    def load_task(self, name: str) -> dict[str, Any]:
        """The settings saved under `name`; SettingsError listing saved tasks if unknown."""
        with self._b.read() as run:
            row = run.execute("SELECT settings FROM tasks WHERE name = ?", (name,)).fetchone()
            if row is None:
                names = [r[0] for r in run.execute("SELECT name FROM tasks ORDER BY name").fetchall()]
                raise SettingsError(f"unknown task {name!r}; saved tasks: {', '.join(names) or 'none'}")
        loaded: dict[str, Any] = json.loads(row[0])
        return loaded

    def delete_task(self, name: str) -> bool:
        """Forget a task's settings (its runs and stats stay as history); True if it existed."""
        with self._b.write() as run:
            return run.execute("DELETE FROM tasks WHERE name = ?", (name,)).rowcount > 0

    def list_tasks(self) -> pl.DataFrame:
        """Saved tasks (name, updated_at), by name."""
        return self._frame("tasks", "SELECT name, updated_at FROM tasks ORDER BY name")

    def task_names(self) -> list[str]:
        """Every task this store knows: saved ones and those with a recorded run, by name."""
        with self._b.read() as run:
            rows = run.execute("SELECT name FROM tasks UNION SELECT task FROM runs ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ targets

    def record_targets(self, task: str, target: str, tables: list[dict[str, Any]]) -> None:
        """Replace what a run of `task` writes where: one row per source table (TARGET_FIELDS).

        `history` reads it to find a task's target tables and keys by name alone. `target` is
        kept as written when it holds no literal password (a saved connection name, a
        `${VAR}` reference or a password-less URI), else masked: never a password.
        """
        ref = mask(target) if has_literal_password(target) else target
        unknown = {k for t in tables for k in t} - set(TARGET_FIELDS)
        if unknown:
            raise ValueError(f"unknown target fields {sorted(unknown)}; known: {', '.join(TARGET_FIELDS)}")
        now = self._now()
        rows = [
            (task, ref, *(json.dumps(t[k]) if isinstance(t.get(k), (list, tuple)) else t.get(k) for k in TARGET_FIELDS), now)
            for t in tables
        ]
        with self._b.write() as run:
            run.execute("DELETE FROM task_targets WHERE task = ?", (task,))
            if rows:
                run.executemany(
                    f"INSERT INTO task_targets (task, target, {', '.join(TARGET_FIELDS)}, updated_at) "  # noqa: S608
                    f"VALUES (?, ?, {', '.join('?' for _ in TARGET_FIELDS)}, ?)",
                    rows,
                )

    def targets(self, task: str) -> pl.DataFrame:
        """The target tables the latest run of `task` recorded (`columns`, `key_columns`: JSON lists)."""
        cols = ", ".join(FRAMES["task_targets"])
        return self._frame(
            "task_targets",
            f"SELECT {cols} FROM task_targets WHERE task = ? ORDER BY source_schema, source_table",  # noqa: S608
            (task,),
        )

    # ------------------------------------------------------------------ runs

    def start_run(self, task: str, kind: RunKind) -> str:
        """Open a run in status 'running' and return its id."""
        if kind not in get_args(RunKind):
            raise ValueError(f"run kind must be one of {get_args(RunKind)}, not {kind!r}")
        run_id = uuid.uuid4().hex
        with self._b.write() as run:
            run.execute(
                "INSERT INTO runs (run_id, task, kind, started_at, status) VALUES (?, ?, ?, ?, 'running')",
                (run_id, task, kind, self._now()),
            )
        return run_id

    def end_run(self, run_id: str, status: RunStatus, error: str | BaseException | None = None) -> None:
        """Close a run with its final status and (masked) error."""
        if status not in get_args(RunStatus) or status == "running":
            raise ValueError(f"final run status must be succeeded, failed or stopped, not {status!r}")
        with self._b.write() as run:
            cur = run.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ?",
                (status, self._now(), mask(error) if error is not None else None, run_id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no run {run_id!r}")

    def runs(self, task: str | None = None) -> pl.DataFrame:
        """Runs, newest first."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        # two runs opened in the same microsecond: SQLite's insertion order, else the id
        tiebreak = "rowid DESC" if self._b.dialect.name == "sqlite" else "run_id DESC"
        return self._frame(
            "runs",
            "SELECT run_id, task, kind, started_at, ended_at, status, error FROM runs "  # noqa: S608
            f"{where} ORDER BY started_at DESC, {tiebreak}",
            params,
        )

    # ------------------------------------------------------------------ stats

    def record_stats(self, run_id: str, task: str, schema: str, table: str, operation: str, **counters: float) -> None:
        """Add counters (rows_read, rows_written, rows_filtered, rows_failed, duration_s) to a table's row."""
        unknown = set(counters) - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown counters {sorted(unknown)}; known: {', '.join(COUNTERS)}")
        values = [counters.get(c, 0) or 0 for c in COUNTERS]
        add = ", ".join(f"{c} = table_stats.{c} + excluded.{c}" for c in COUNTERS)
        with self._b.write() as run:
            run.execute(
                'INSERT INTO table_stats (run_id, task, "schema", "table", operation, '  # noqa: S608
                f"{', '.join(COUNTERS)}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f'ON CONFLICT (run_id, "schema", "table", operation) DO UPDATE SET {add}, '
                "updated_at = excluded.updated_at",
                (run_id, task, schema, table, operation, *values, self._now()),
            )

    def stats(self, task: str | None = None, run_id: str | None = None) -> pl.DataFrame:
        """Per-table counters, by run then table."""
        conds, params = [], []
        if task:
            conds.append("task = ?")
            params.append(task)
        if run_id:
            conds.append("run_id = ?")
            params.append(run_id)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        return self._frame(
            "table_stats",
            'SELECT run_id, task, "schema", "table", operation, rows_read, rows_written, '  # noqa: S608
            f"rows_filtered, rows_failed, duration_s, updated_at FROM table_stats {where} "
            'ORDER BY run_id, "schema", "table", operation',
            tuple(params),
        )

    # ------------------------------------------------------------------ logs

    def log(
        self,
        task: str | None,
        run_id: str | None,
        level: str | int,
        message: str,
        *,
        table: str | None = None,
        worker: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Store one (masked) log line; `table` is schema.table, `fields` any JSON-able extras (masked)."""
        extra = json.dumps(mask_value(fields), default=str) if fields else None
        with self._b.write() as run:
            run.execute(
                'INSERT INTO logs (time, task, run_id, level, message, "table", worker, fields) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self._now(), task, run_id, _level_name(level), mask(message), table, worker, extra),
            )

    def logs(self, task: str | None = None, limit: int = 200) -> pl.DataFrame:
        """The latest `limit` log lines, oldest first (reads like a log)."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "logs",
            "SELECT time, task, run_id, level, message FROM ("  # noqa: S608
            f"SELECT id, time, task, run_id, level, message FROM logs {where} "
            "ORDER BY id DESC LIMIT ?) AS latest ORDER BY id",
            (*params, int(limit)),
        )

    def search_logs(
        self,
        task: str | None = None,
        *,
        level: str | int | None = None,
        grep: str | None = None,
        table: str | None = None,
        since: datetime | None = None,
        after_id: int | None = None,
        limit: int = 200,
    ) -> pl.DataFrame:
        """The newest `limit` log lines matching every filter given, in id order.

        level: that level and above; grep: a case-insensitive substring of the message;
        table: `schema.table`, or a bare table name matching it in any schema; since: lines
        at or after that instant; after_id: lines after that id (to follow a log)."""
        conds: list[str] = []
        params: list[Any] = []
        if task:
            conds.append("task = ?")
            params.append(task)
        if level is not None:
            name = _level_name(level)
            if name not in LOG_LEVELS:
                raise SettingsError(f"unknown log level {level!r}; levels: {', '.join(LOG_LEVELS)}")
            conds.append(f"{_LEVELNO} >= ?")
            params.append(LOG_LEVELS[name])
        if grep:
            conds.append("lower(message) LIKE ? ESCAPE '\\'")
            params.append(f"%{_like_escape(grep.lower())}%")
        if table:
            if "." in table:
                conds.append('"table" = ?')
                params.append(table)
            else:
                conds.append('("table" = ? OR "table" LIKE ? ESCAPE \'\\\')')
                params.extend([table, "%." + _like_escape(table)])
        if since is not None:
            if since.tzinfo is None:
                raise ValueError("since must be an aware datetime (UTC or with an offset)")
            conds.append("time >= ?")
            params.append(self._b.param_time(since))
        if after_id is not None:
            conds.append("id > ?")
            params.append(int(after_id))
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        cols = 'id, time AS ts, level, task, "table", run_id, worker, message, fields'
        return self._frame(
            "log_search",
            f"SELECT {cols} FROM (SELECT * FROM logs {where} ORDER BY id DESC LIMIT ?) AS latest ORDER BY id",  # noqa: S608
            (*params, max(0, int(limit))),
        )

    def delete_logs(self, *, before: datetime, limit: int = 500) -> int:
        """Delete up to `limit` of the oldest log lines written before `before`; returns how many.

        Log retention (trempy_nb.ops.retention) calls it in a loop of small batches, so no
        transaction holds the store's write lock for long."""
        if before.tzinfo is None:
            raise ValueError("before must be an aware datetime (UTC or with an offset)")
        with self._b.write() as run:
            return int(run.execute(
                "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE time < ? ORDER BY id LIMIT ?)",
                (self._b.param_time(before), max(0, int(limit))),
            ).rowcount)

    # ------------------------------------------------------------------ errors and dead letters

    def record_error(
        self,
        task: str | None,
        run_id: str | None,
        schema: str | None,
        table: str | None,
        operation: str | None,
        error: str | BaseException,
        payload: dict[str, Any] | None = None,
        key: dict[str, Any] | None = None,
    ) -> None:
        """Store a failed change (operation insert/update/delete) with its key, (masked) error and payload."""
        text = json.dumps(mask_value(payload)) if payload is not None else None
        key_text = json.dumps(mask_value(key)) if key is not None else None
        with self._b.write() as run:
            run.execute(
                'INSERT INTO errors (time, task, run_id, "schema", "table", operation, "key", error, payload) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._now(), task, run_id, schema, table, operation, key_text, mask(error), text),
            )

    def errors(self, task: str | None = None) -> pl.DataFrame:
        """Recorded row errors, oldest first; `key` and `payload` are JSON text."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "errors",
            'SELECT time, task, run_id, "schema", "table", operation, "key", error, payload '  # noqa: S608
            f"FROM errors {where} ORDER BY id",
            params,
        )

    def record_dead_letter(
        self,
        task: str,
        table: str | None,
        first_lsn: str | None,
        end_lsn: str | None,
        error: str | BaseException,
        attempts: int,
        payload_ref: str | None = None,
    ) -> None:
        """Store a batch given up after `attempts` retries; `payload_ref` says where its body lives."""
        with self._b.write() as run:
            run.execute(
                'INSERT INTO dead_letters (time, task, "table", first_lsn, end_lsn, error, '
                "attempts, payload_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._now(),
                    task,
                    table,
                    first_lsn,
                    end_lsn,
                    mask(error),
                    int(attempts),
                    mask(payload_ref) if payload_ref is not None else None,
                ),
            )

    def dead_letters(self, task: str | None = None) -> pl.DataFrame:
        """Dead-lettered batches, oldest first."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "dead_letters",
            'SELECT time, task, "table", first_lsn, end_lsn, error, attempts, payload_ref '  # noqa: S608
            f"FROM dead_letters {where} ORDER BY id",
            params,
        )
