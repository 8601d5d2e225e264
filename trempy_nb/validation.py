"""Validation against the live source: runs before anything is written.

`parse_settings` checks the document alone; this module checks it against the
source catalog (tables exist and have a key, columns exist, operators fit the
column types, transformations fit their place in the order) by compiling one
plan per table. It collects every problem, each led by its field path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psycopg

from trempy_nb import catalog
from trempy_nb.catalog import TableInfo
from trempy_nb.connections import mask, resolve
from trempy_nb.db import connect
from trempy_nb.errors import SettingsError, TrempyError, ValidationFailed
from trempy_nb.pipeline.plan import TablePlan, compile_plan
from trempy_nb.settings import TaskSettings


@dataclass(frozen=True)
class ValidatedTask:
    settings: TaskSettings
    plans: dict[tuple[str, str], TablePlan]


def validate_with_catalog(settings: TaskSettings, tables: dict[tuple[str, str], TableInfo | None]) -> tuple[dict[tuple[str, str], TablePlan], list[str]]:
    """Pure part: compile a plan per table from known catalog entries; collect problems."""
    problems: list[str] = []
    plans: dict[tuple[str, str], TablePlan] = {}
    for i, ref in enumerate(settings.tables):
        info = tables.get(ref.key)
        if info is None:
            problems.append(f"tables[{i}]: table {ref.schema_name}.{ref.table_name} does not exist on the source")
            continue
        try:
            plan = compile_plan(settings, info)
        except SettingsError as exc:
            problems.extend(str(exc).split("\n"))
            continue
        if not plan.target_primary_key and (settings.task.replication_type != "full_load" or _needs_key(settings)):
            problems.append(
                f"tables[{i}]: table {info.qualified} has no primary key or replica identity index, and"
                f" {settings.task.cdc_settings.mode} needs one: add a primary key on the source,"
                " or an add_primary_key transformation"
            )
            continue
        plans[ref.key] = plan
    targets: dict[tuple[str, str], str] = {}
    for key, plan in plans.items():
        tk = (plan.target_schema, plan.target_table)
        if tk in targets:
            problems.append(
                f"transformations: tables {targets[tk]} and {'.'.join(key)} both land in {tk[0]}.{tk[1]}"
            )
        targets[tk] = ".".join(key)
    return plans, problems


def _needs_key(settings: TaskSettings) -> bool:
    """A full load needs a key unless it truncates first (plain insert) in upsert mode."""
    fl = settings.task.full_load_settings
    return settings.task.cdc_settings.mode == "scd2" or not fl.truncate_before_insert


def describe_tables(conn: psycopg.Connection, settings: TaskSettings) -> dict[tuple[str, str], TableInfo | None]:
    """Every table of the task, in one catalog query."""
    return catalog.describe_tables(conn, [ref.key for ref in settings.tables])


def validate_settings(settings: TaskSettings, source_uri: str | None = None) -> list[str]:
    """Every problem of `settings` against the live source, each led by a field path ([] = valid)."""
    try:
        uri = source_uri or resolve(settings.task.source)
        with connect(uri) as conn:
            tables = describe_tables(conn, settings)
            problems = validate_with_catalog(settings, tables)[1]
            if settings.task.replication_type != "full_load":
                problems.extend(_cdc_problems(conn, settings))
            return problems
    except TrempyError as exc:
        return [f"task.source: {mask(str(exc))}"]


def _cdc_problems(conn: psycopg.Connection, settings: TaskSettings) -> list[str]:
    # lazy: start-up speed (importing capture loads the decoder stack; a full-load task needs none)
    from trempy_nb.capture.slot import check_prerequisites

    try:
        check_prerequisites(conn, [t.key for t in settings.tables])
    except ValidationFailed as exc:
        return [f"task.replication_type: {exc}"]
    return []


def validate_live(settings: TaskSettings, source_uri: str, conn: psycopg.Connection | None = None) -> ValidatedTask:
    """Validate and compile, or raise ValidationFailed listing every problem. `conn`: a source
    connection to use (a run validates on the connection holding its task lock)."""
    with contextlib.nullcontext(conn) if conn is not None else connect(source_uri) as c:
        tables = describe_tables(c, settings)
        plans, problems = validate_with_catalog(settings, tables)
        if settings.task.replication_type != "full_load":
            problems.extend(_cdc_problems(c, settings))
    if problems:
        raise ValidationFailed("\n".join(problems))
    return ValidatedTask(settings=settings, plans=plans)
