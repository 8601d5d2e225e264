"""Tasks: define, show, load, validate, preview, preview-changes, history, drop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from trempy_nb.connections import has_literal_password
from trempy_nb.errors import SettingsError
from trempy_nb.notebook.commands.session import SESSION, _store, get_task, put_task
from trempy_nb.notebook.render import Note, TaskView, Titled
from trempy_nb.settings import load_document
from trempy_nb.task import Task


def define_task(
    doc: dict[str, Any] | str | Path,
    name: str | None = None,
    *,
    validate: bool = True,
    save: bool = True,
) -> Task:
    """Parse a settings document (dict, JSON/YAML text, file), validate it live, keep it.

    `name` overrides task.task_name. The task is kept in the session and, with
    save=True, in $TREMPY_HOME (any literal password moved to a saved connection).
    """
    data = load_document(doc)
    if name:
        if not isinstance(data.get("task"), dict):
            raise SettingsError("task: missing (the document needs a task section)")
        data = {**data, "task": {**data["task"], "task_name": name}}
    task = Task.from_settings(data)
    if validate:
        task.validate()
    return put_task(task, save=save)


def load_task(path: str | Path, name: str | None = None, validate: bool = True) -> Task:
    """A settings file into the session (what a scheduled notebook does)."""
    return define_task(Path(path), name, validate=validate, save=True)


def literal_password_refs(task: Task) -> list[str]:
    """Which of source/target are written with a literal password (to warn about)."""
    t = task.settings.task
    return [
        k for k, ref in (("source", t.source), ("target", t.target)) if has_literal_password(ref)
    ]


def show_task(name: str) -> TaskView:
    task = get_task(name)
    runner = SESSION.runners.get(name)
    status = f"runner {runner.status}" if runner is not None else ""
    return TaskView(task.settings.to_dict(), status)


def list_tasks() -> pl.DataFrame:
    """Tasks of this session and saved ones: name, in_session, saved, runner status."""
    saved = set(_store().list_tasks()["name"].to_list())
    names = sorted(saved | set(SESSION.tasks))
    return pl.DataFrame(
        {
            "task": names,
            "in_session": [n in SESSION.tasks for n in names],
            "saved": [n in saved for n in names],
            "runner": [SESSION.runners[n].status if n in SESSION.runners else "" for n in names],
        },
        schema={
            "task": pl.String,
            "in_session": pl.Boolean,
            "saved": pl.Boolean,
            "runner": pl.String,
        },
    )


def validate(name: str) -> Note:
    task = get_task(name).validate()
    s = task.settings
    return Note(
        f"task {name} is valid: {len(s.tables)} table(s), {s.task.replication_type},"
        f" {s.task.cdc_settings.mode}",
        "ok",
    )


def _find_plan(task: Task, table: str | None) -> Any:
    plans = task.plans
    if table is None:
        return plans[task.settings.tables[0].key]
    for key, plan in plans.items():
        if table in (
            ".".join(key),
            key[1],
            f"{plan.target_schema}.{plan.target_table}",
            plan.target_table,
        ):
            return plan
    known = ", ".join(".".join(k) for k in plans)
    raise SettingsError(f"table {table!r} is not part of task {task.name} (tables: {known})")


def preview(name: str, table: str | None = None, limit: int = 20) -> pl.DataFrame:
    """The rows a run would write (filters pushed into the source query with the limit)."""
    return get_task(name).preview(table, limit=limit)


def preview_caption(name: str, table: str | None, frame: pl.DataFrame, limit: int) -> str:
    task = get_task(name)
    plan = _find_plan(task, table)
    total = task.estimated_rows(".".join(plan.source.key))
    filtered = " before filters" if task.settings.filters_for(plan.source.key) else ""
    return (
        f"showing {frame.height:,} of ~{total:,} rows{filtered} of {plan.source.qualified}"
        f" -> {plan.target_schema}.{plan.target_table} (limit {limit})"
    )


def preview_view(name: str, table: str | None = None, limit: int = 20) -> Titled:
    frame = preview(name, table, limit)
    return Titled(preview_caption(name, table, frame, limit), frame, max_rows=limit)


def preview_changes(name: str, limit: int = 50) -> pl.DataFrame:
    """Pending changes of the task's slot, transformed, without consuming them."""
    from trempy_nb.engine.pending import frame_of_pending

    return frame_of_pending(get_task(name), limit=limit)


def history(name: str, table: str, key: dict[str, Any], limit: int = 1000) -> pl.DataFrame:
    """Every version of one key in an SCD2 target (or its row in an upsert target), oldest first."""
    return get_task(name).history(table, key, limit=limit)


def diff(name: str, table: str | None = None, repair: bool = False) -> tuple[pl.DataFrame, list[Any]]:
    """The task's differing keys (docs/reconcile.md) and each table's outcome (its `summary()`)."""
    tables = get_task(name).diff_tables(table, repair=repair)
    from trempy_nb.reconcile.chunks import frame  # lazy: start-up speed

    return frame(tables), tables


def as_of(name: str, ts: Any, table: str | None = None, limit: int | None = None) -> pl.DataFrame:
    """An SCD2 target table as it was at `ts` (ISO text, datetime or `-1d`)."""
    return get_task(name).as_of(ts, table, limit=limit)


def changes(
    name: str,
    since: Any,
    until: Any = None,
    table: str | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """Keys of an SCD2 target that changed between `since` and `until` (default: now)."""
    return get_task(name).changes(since, until, table, limit=limit)


def drop(name: str) -> Note:
    """Stop its runner, remove the task's slot, publication and state, forget it."""
    task = get_task(name)
    runner = SESSION.runners.pop(name, None)
    if runner is not None and runner.running:
        try:
            runner.stop()
        except Exception:  # noqa: S110 - dropping anyway
            pass
    dash = SESSION.dashboards.pop(name, None)
    if dash is not None:
        dash.close()
    task.drop()
    SESSION.tasks.pop(name, None)
    _store().delete_task(name)
    return Note(f"dropped task {name}: slot, publication and state removed", "ok")
