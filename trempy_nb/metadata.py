"""Metadata store: tasks, runs, per-table stats, logs, errors and dead letters.

SQLite at `$TREMPY_HOME/metadata.sqlite3` by default: nothing to install, one
file a notebook, a background runner and a scheduled job can all share. WAL
mode lets readers (the dashboard) run while a runner writes; each thread gets
its own connection and every write is one short `BEGIN IMMEDIATE`
transaction with a generous busy timeout, so several threads and processes
can write safely.

Every text stored (errors, logs, payloads) goes through `connections.mask`.
Task settings are stored as given, except that a `source`/`target` URI with a
literal password is first saved as a connection (password encrypted) and
replaced by that connection's name (`<task>-source`, `<task>-target`): masking
it would lose the password and break the stored task, while a saved name is
part of the settings vocabulary already and resolves back to the same URI.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import polars as pl

from trempy_nb.connections import has_literal_password, home, mask, protect
from trempy_nb.errors import SettingsError

__all__ = ["COUNTERS", "TARGET_FIELDS", "MetadataStore", "RunKind", "RunStatus"]

# a full_load_and_cdc task records one run spanning both phases (the runner passes
# the task's replication_type), so that name is a run kind too
RunKind = Literal["full_load", "cdc", "full_load_and_cdc"]
RunStatus = Literal["running", "succeeded", "failed", "stopped"]
COUNTERS = ("rows_read", "rows_written", "rows_filtered", "rows_failed", "duration_s")

SCHEMA_VERSION = 2  # 2: errors."key"
_DDL = f"""
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in get_args(RunKind))})),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in get_args(RunStatus))})),
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task, started_at);
CREATE TABLE IF NOT EXISTS table_stats (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    "schema" TEXT NOT NULL,
    "table" TEXT NOT NULL,
    operation TEXT NOT NULL,
    rows_read INTEGER NOT NULL DEFAULT 0,
    rows_written INTEGER NOT NULL DEFAULT 0,
    rows_filtered INTEGER NOT NULL DEFAULT 0,
    rows_failed INTEGER NOT NULL DEFAULT 0,
    duration_s REAL NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, "schema", "table", operation)
);
CREATE INDEX IF NOT EXISTS table_stats_task ON table_stats (task);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    task TEXT,
    run_id TEXT,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_task ON logs (task, id);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    task TEXT,
    run_id TEXT,
    "schema" TEXT,
    "table" TEXT,
    operation TEXT,
    error TEXT NOT NULL,
    payload TEXT,
    "key" TEXT
);
CREATE INDEX IF NOT EXISTS errors_task ON errors (task, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    task TEXT NOT NULL,
    "table" TEXT,
    first_lsn TEXT,
    end_lsn TEXT,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    payload_ref TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_task ON dead_letters (task, id);
CREATE TABLE IF NOT EXISTS task_targets (
    task TEXT NOT NULL,
    source_schema TEXT NOT NULL,
    source_table TEXT NOT NULL,
    target TEXT NOT NULL,
    target_schema TEXT NOT NULL,
    target_table TEXT NOT NULL,
    columns TEXT NOT NULL,
    key_columns TEXT NOT NULL,
    mode TEXT NOT NULL,
    start_col TEXT,
    end_col TEXT,
    current_col TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (task, source_schema, source_table)
);
"""

_S = pl.String
_TS = pl.Datetime("us", "UTC")
_FRAMES: dict[str, dict[str, Any]] = {
    "runs": {
        "run_id": _S,
        "task": _S,
        "kind": _S,
        "started_at": _TS,
        "ended_at": _TS,
        "status": _S,
        "error": _S,
    },
    "table_stats": {
        "run_id": _S,
        "task": _S,
        "schema": _S,
        "table": _S,
        "operation": _S,
        "rows_read": pl.Int64,
        "rows_written": pl.Int64,
        "rows_filtered": pl.Int64,
        "rows_failed": pl.Int64,
        "duration_s": pl.Float64,
        "updated_at": _TS,
    },
    "logs": {"time": _TS, "task": _S, "run_id": _S, "level": _S, "message": _S},
    "errors": {
        "time": _TS,
        "task": _S,
        "run_id": _S,
        "schema": _S,
        "table": _S,
        "operation": _S,
        "key": _S,
        "error": _S,
        "payload": _S,
    },
    "dead_letters": {
        "time": _TS,
        "task": _S,
        "table": _S,
        "first_lsn": _S,
        "end_lsn": _S,
        "error": _S,
        "attempts": pl.Int64,
        "payload_ref": _S,
    },
    "tasks": {"name": _S, "updated_at": _TS},
    "task_targets": {
        "task": _S,
        "source_schema": _S,
        "source_table": _S,
        "target": _S,
        "target_schema": _S,
        "target_table": _S,
        "columns": _S,
        "key_columns": _S,
        "mode": _S,
        "start_col": _S,
        "end_col": _S,
        "current_col": _S,
        "updated_at": _TS,
    },
}

# the columns of a task_targets row a caller gives (task and updated_at are the store's)
TARGET_FIELDS = tuple(k for k in _FRAMES["task_targets"] if k not in ("task", "target", "updated_at"))


def _retry_locked(fn: Any, timeout: float) -> Any:
    """Run `fn`, retrying while SQLite reports the database locked/busy (bounded by `timeout`).

    Schema creation and the WAL switch can fail at once with "database is locked" when another
    connection is doing the same (not every lock wait goes through the busy timeout)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _now() -> str:
    """UTC ISO-8601 with microseconds: sorts as text, parses as a Polars datetime."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _mask_value(value: Any) -> Any:
    """Mask every string in a JSON-like value (keys too), so stored payloads leak nothing."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {mask(str(k)): _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask(str(value))  # dates, Decimals, bytes...: their text form, masked


class MetadataStore:
    """Runs, stats, logs, errors and task settings in one SQLite file, safe across threads and processes."""

    def __init__(self, path: str | Path | None = None, *, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else home() / "metadata.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        conn = self._conn()

        def create() -> None:
            try:
                conn.executescript(f"BEGIN IMMEDIATE; {_DDL}")
                columns = {r[1] for r in conn.execute("PRAGMA table_info(errors)")}
                if "key" not in columns:  # a store made before version 2
                    conn.execute('ALTER TABLE errors ADD COLUMN "key" TEXT')
                conn.execute("PRAGMA user_version = " + str(int(SCHEMA_VERSION)))  # PRAGMA takes no parameters; a constant
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        _retry_locked(create, self.timeout)

    # ------------------------------------------------------------------ plumbing

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection: sqlite3 connections must not be shared between threads."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = " + str(int(self.timeout * 1000)))  # an int; pragmas take no parameters
            # switching to WAL takes an exclusive lock and does not wait on the busy handler: two
            # stores opened at the same instant (two runner threads) would get "database is locked"
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), self.timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _frame(self, kind: str, sql: str, params: tuple[Any, ...] = ()) -> pl.DataFrame:
        schema = _FRAMES[kind]
        cur = self._conn().execute(sql, params)
        rows = cur.fetchall()
        names = [d[0] for d in cur.description]
        text_schema = {n: (pl.String if schema[n] == _TS else schema[n]) for n in names}
        df = pl.DataFrame(rows, schema=text_schema, orient="row")
        return df.with_columns(
            pl.col(n).str.to_datetime(time_unit="us", time_zone="UTC")
            for n in names
            if schema[n] == _TS
        )

    def close(self) -> None:
        """Close every thread's connection (call once no thread uses the store any more)."""
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetadataStore({str(self.path)!r})"

    # ------------------------------------------------------------------ tasks

    def save_task(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Store a task's settings (literal passwords moved to saved connections); returns what was stored."""
        stored = json.loads(json.dumps(settings, default=str))
        holder = stored.get("task") if isinstance(stored.get("task"), dict) else stored
        for key in ("source", "target"):
            ref = holder.get(key)
            if isinstance(ref, str):
                holder[key] = protect(ref, f"{name}-{key}")
        text = json.dumps(stored, sort_keys=False)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tasks (name, settings, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings, "
                "updated_at = excluded.updated_at",
                (name, text, _now()),
            )
        return stored

    def load_task(self, name: str) -> dict[str, Any]:
        """The settings saved under `name`; SettingsError listing saved tasks if unknown."""
        row = self._conn().execute("SELECT settings FROM tasks WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [r[0] for r in self._conn().execute("SELECT name FROM tasks ORDER BY name")]
            raise SettingsError(f"unknown task {name!r}; saved tasks: {', '.join(names) or 'none'}")
        return json.loads(row[0])

    def delete_task(self, name: str) -> bool:
        """Forget a task's settings (its runs and stats stay as history); True if it existed."""
        with self._write() as conn:
            return conn.execute("DELETE FROM tasks WHERE name = ?", (name,)).rowcount > 0

    def list_tasks(self) -> pl.DataFrame:
        """Saved tasks (name, updated_at), by name."""
        return self._frame("tasks", "SELECT name, updated_at FROM tasks ORDER BY name")

    def task_names(self) -> list[str]:
        """Every task this store knows: saved ones and those with a recorded run, by name."""
        rows = self._conn().execute(
            "SELECT name FROM tasks UNION SELECT task FROM runs ORDER BY 1"
        ).fetchall()
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
        now = _now()
        rows = [
            (task, ref, *(json.dumps(t[k]) if isinstance(t.get(k), (list, tuple)) else t.get(k) for k in TARGET_FIELDS), now)
            for t in tables
        ]
        with self._write() as conn:
            conn.execute("DELETE FROM task_targets WHERE task = ?", (task,))
            conn.executemany(
                f"INSERT INTO task_targets (task, target, {', '.join(TARGET_FIELDS)}, updated_at) "  # noqa: S608
                f"VALUES (?, ?, {', '.join('?' for _ in TARGET_FIELDS)}, ?)",
                rows,
            )

    def targets(self, task: str) -> pl.DataFrame:
        """The target tables the latest run of `task` recorded (`columns`, `key_columns`: JSON lists)."""
        cols = ", ".join(_FRAMES["task_targets"])
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
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, task, kind, started_at, status) "
                "VALUES (?, ?, ?, ?, 'running')",
                (run_id, task, kind, _now()),
            )
        return run_id

    def end_run(
        self, run_id: str, status: RunStatus, error: str | BaseException | None = None
    ) -> None:
        """Close a run with its final status and (masked) error."""
        if status not in get_args(RunStatus) or status == "running":
            raise ValueError(
                f"final run status must be succeeded, failed or stopped, not {status!r}"
            )
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ?",
                (status, _now(), mask(error) if error is not None else None, run_id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no run {run_id!r}")

    def runs(self, task: str | None = None) -> pl.DataFrame:
        """Runs, newest first."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "runs",
            "SELECT run_id, task, kind, started_at, ended_at, status, error FROM runs "  # noqa: S608
            f"{where} ORDER BY started_at DESC, rowid DESC",
            params,
        )

    # ------------------------------------------------------------------ stats

    def record_stats(
        self,
        run_id: str,
        task: str,
        schema: str,
        table: str,
        operation: str,
        **counters: float,
    ) -> None:
        """Add counters (rows_read, rows_written, rows_filtered, rows_failed, duration_s) to a table's row."""
        unknown = set(counters) - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown counters {sorted(unknown)}; known: {', '.join(COUNTERS)}")
        values = [counters.get(c, 0) or 0 for c in COUNTERS]
        with self._write() as conn:
            conn.execute(
                'INSERT INTO table_stats (run_id, task, "schema", "table", operation, '
                "rows_read, rows_written, rows_filtered, rows_failed, duration_s, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                'ON CONFLICT (run_id, "schema", "table", operation) DO UPDATE SET '
                "rows_read = rows_read + excluded.rows_read, "
                "rows_written = rows_written + excluded.rows_written, "
                "rows_filtered = rows_filtered + excluded.rows_filtered, "
                "rows_failed = rows_failed + excluded.rows_failed, "
                "duration_s = duration_s + excluded.duration_s, "
                "updated_at = excluded.updated_at",
                (run_id, task, schema, table, operation, *values, _now()),
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

    # ------------------------------------------------------------------ logs and errors

    def log(self, task: str | None, run_id: str | None, level: str | int, message: str) -> None:
        """Store one (masked) log line."""
        lvl = level if isinstance(level, str) else _level_name(level)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO logs (time, task, run_id, level, message) VALUES (?, ?, ?, ?, ?)",
                (_now(), task, run_id, lvl.upper(), mask(message)),
            )

    def logs(self, task: str | None = None, limit: int = 200) -> pl.DataFrame:
        """The latest `limit` log lines, oldest first (reads like a log)."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "logs",
            "SELECT time, task, run_id, level, message FROM ("  # noqa: S608
            f"SELECT id, time, task, run_id, level, message FROM logs {where} "
            "ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*params, int(limit)),
        )

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
        text = json.dumps(_mask_value(payload)) if payload is not None else None
        key_text = json.dumps(_mask_value(key)) if key is not None else None
        with self._write() as conn:
            conn.execute(
                'INSERT INTO errors (time, task, run_id, "schema", "table", operation, "key", error, payload) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_now(), task, run_id, schema, table, operation, key_text, mask(error), text),
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
        with self._write() as conn:
            conn.execute(
                'INSERT INTO dead_letters (time, task, "table", first_lsn, end_lsn, error, '
                "attempts, payload_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _now(),
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


def _level_name(level: int) -> str:
    return logging.getLevelName(level)
