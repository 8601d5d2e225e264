"""Asking a task for a per-table lifecycle action (add-table, resync, pause-table, resume-table).

The request is checked here (the table must be in the task, or for add-table exist on the source and
be ready for CDC), recorded in the state store, and carried out by the task's owner wherever it runs
(`engine.lifecycle`). This side never touches the stream: it says who will carry the request out, or
that it waits for the task's next run. add-table also writes the table into the task's stored settings
at once, so every later run of the stored task (a worker, `%trempy run NAME`) has it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from trempy_nb.connections import is_mariadb_uri
from trempy_nb.db import connect
from trempy_nb.engine.lifecycle import parse_table, table_name
from trempy_nb.engine.lock import lock_held
from trempy_nb.errors import SettingsError, TerminalError, UnknownTable
from trempy_nb.metadata import MetadataStore
from trempy_nb.settings import TaskSettings, parse_settings
from trempy_nb.validation import validate_live
from trempy_nb.writer import state

ACTIONS = {"add-table": "add", "resync": "resync", "pause-table": "pause", "resume-table": "resume"}


@dataclass(frozen=True)
class Requested:
    """A recorded request: its id, and who will carry it out (None: nobody runs the task now)."""

    id: int
    task: str
    table: str
    action: str
    owner: str | None
    message: str
    settings: TaskSettings  # the task's settings after the request (add-table: with the table)


def owner_of(store: MetadataStore, task: str, source_uri: str) -> str | None:
    """Who runs the task now: a fleet worker with a live lease, or a runner holding the task's lock."""
    for row in _fleet_rows(store, task):
        if row.get("worker") and row.get("lease_expires_in_s") is not None:
            return _worker_text(row)
    try:
        held = lock_held(source_uri, task)
    except Exception:  # the source is unreachable: nobody can be seen running it
        held = False
    return "a runner holding its lock" if held else None


def leased_owner(store: MetadataStore, task: str) -> str | None:
    """The fleet worker holding a live lease on the task (worker, host, pid), or None."""
    for row in _fleet_rows(store, task):
        if row.get("worker") and row.get("lease_expires_in_s") is not None:
            return _worker_text(row)
    return None


def _fleet_rows(store: MetadataStore, task: str) -> list[dict[str, Any]]:
    try:
        return store.fleet_status(task)
    except SettingsError:  # a task run but never saved: no fleet row
        return []


def _worker_text(row: dict[str, Any]) -> str:
    where = f" on {row['host']}" if row.get("host") else ""
    pid = f", pid {row['pid']}" if row.get("pid") is not None else ""
    return f"worker {row['worker']}{where}{pid}"


def check_table(settings: TaskSettings, table: str) -> tuple[str, str]:
    """The key of a table of the task, or UnknownTable naming the task's tables (exit 2)."""
    key = parse_table(table)
    if key not in {t.key for t in settings.tables}:
        known = ", ".join(".".join(t.key) for t in settings.tables)
        raise UnknownTable(f"table {table} is not in task {settings.name}; its tables: {known}")
    return key


def request(settings: TaskSettings, source_uri: str, target_uri: str, action: str, table: str, *,
            options: dict[str, Any] | None = None, store: MetadataStore | None = None) -> Requested:
    """Check and record one lifecycle request for the task's owner (see the module docstring)."""
    store = store or MetadataStore()
    name = settings.name
    if action not in ACTIONS.values():
        raise SettingsError(f"unknown table action {action!r}; known: {', '.join(ACTIONS.values())}")
    if settings.task.replication_type == "full_load":
        raise SettingsError(f"task {name} is full_load only: per-table lifecycle acts on a streaming task"
                            " (rerun it to reload)")
    if is_mariadb_uri(target_uri):
        raise SettingsError(f"task {name}: per-table lifecycle needs a PostgreSQL target (its held changes and"
                            " load points live in the target's trempy schema)")
    if action == "add":
        key = parse_table(table)
        if key in {t.key for t in settings.tables} and _loaded(target_uri, name, key):
            raise SettingsError(f"table {table_name(key)} is already in task {name} and loaded"
                                f" (trempy-nb resync {name} {table_name(key)} reloads it)")
        if key not in {t.key for t in settings.tables}:
            doc = settings.to_dict()
            doc["tables"] = [*doc["tables"], {"schema_name": key[0], "table_name": key[1]}]
            settings = parse_settings(doc)
        validate_live(settings, source_uri)  # the table exists and can be streamed: refused before anything
        store.save_task(name, settings.to_dict())
    else:
        key = check_table(settings, table)
    owner = owner_of(store, name, source_uri)
    rid = store.request_table(name, table_name(key), action, options)
    if owner is not None:
        message = f"{action} {table_name(key)} requested (#{rid}): task {name} runs ({owner}), which carries it out"
    elif action == "add":
        message = (f"{table_name(key)} added to task {name}'s stored settings (#{rid}); the task is not running:"
                   " its next run loads the table in step with its stream, then streams it")
    else:
        message = (f"{action} {table_name(key)} requested (#{rid}); task {name} is not running: the request waits"
                   " for its next run")
    return Requested(rid, name, table_name(key), action, owner, message, settings)


def _loaded(target_uri: str, task: str, key: tuple[str, str]) -> bool:
    try:
        with connect(target_uri) as tgt:
            return key in state.loaded_tables(tgt, task) if state.state_tables_exist(tgt) else False
    except Exception:  # an unreachable target: let the owner decide
        return False


def wait(store: MetadataStore, request_id: int, timeout: float) -> dict[str, Any]:
    """Wait until the request is done or failed (or `timeout` s passed); returns it. A failed one raises."""
    deadline = time.monotonic() + timeout
    while True:
        req = store.table_request(request_id)
        if req is None:
            raise TerminalError(f"no table request #{request_id}")
        if req["state"] == "failed":
            raise TerminalError(f"{req['action']} {req['table']} failed: {req['error']}")
        if req["state"] == "done" or time.monotonic() >= deadline:
            return req
        time.sleep(0.2)
