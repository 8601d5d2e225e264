"""What a task did and what it wrote: runs, per-table stats, recorded errors, versions of a key.

One implementation for every surface: `trempy-nb runs/stats/errors/history` and the
notebook's `%trempy runs/stats/errors/history` both call these functions, which return
Polars frames. `json_text` and `table_text` turn a frame into the CLI's two outputs.

Where the data comes from: runs, stats and errors from the metadata store
($TREMPY_HOME); history from the target table itself. To find a task's target tables
and keys by its name alone, each run records them when it starts (`record_targets`):
the target as written when it holds no password (a saved connection name or a
`${VAR}` URI), masked otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.connections import has_literal_password, is_mariadb_uri, mask, resolve
from trempy_nb.db import connect
from trempy_nb.errors import SettingsError, TrempyError, UnknownTask
from trempy_nb.metadata import MetadataStore
from trempy_nb.rowframes import frame_of_rows

if TYPE_CHECKING:
    from trempy_nb.pipeline.plan import TablePlan
    from trempy_nb.settings import TaskSettings

__all__ = [
    "TargetTable",
    "UnknownTask",
    "check_known",
    "errors",
    "history",
    "json_text",
    "parse_key",
    "pick_target",
    "record_targets",
    "recorded_targets",
    "runs",
    "stats",
    "table_text",
    "targets_of",
]


def check_known(store: MetadataStore, name: str) -> None:
    """Raise UnknownTask, listing the known task names, unless `name` is saved or has run."""
    known = store.task_names()
    if name not in known:
        raise UnknownTask(
            f"unknown task {name!r}; known tasks: {', '.join(known) or 'none'}"
            f" (in {store.path.parent})"
        )


# --------------------------------------------------------------------------- tables


def _table_pairs(store: MetadataStore, task: str, table: str) -> set[tuple[str, str | None]]:
    """(table, schema or None) pairs `table` may be recorded under: as written, and the other
    side (source <-> target) of the task's recorded tables, since stats name the source table
    and errors the target table."""
    schema, _, name = table.rpartition(".")
    pairs: set[tuple[str, str | None]] = {(name, schema or None)}
    for t in recorded_targets(store, task):
        if t.matches(table):
            pairs |= {(t.source_table, t.source_schema), (t.target_table, t.target_schema)}
    return pairs


def _filter_table(
    frame: pl.DataFrame, store: MetadataStore, task: str, table: str | None
) -> pl.DataFrame:
    if not table:
        return frame
    cond = pl.lit(False)
    for name, schema in _table_pairs(store, task, table):
        one = pl.col("table") == name
        cond = cond | (one & (pl.col("schema") == schema) if schema else one)
    return frame.filter(cond)


# --------------------------------------------------------------------------- runs, stats, errors


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit <= 0:
        raise SettingsError(f"--limit must be a positive number, not {limit}")


def runs(store: MetadataStore, task: str, limit: int | None = None) -> pl.DataFrame:
    """The task's runs, newest first (at most `limit`)."""
    _check_limit(limit)
    frame = store.runs(task=task)
    return frame.head(limit) if limit is not None else frame


def stats(
    store: MetadataStore, task: str, table: str | None = None, run_id: str | None = None
) -> pl.DataFrame:
    """Per-table counters of the task's runs (one row per run, table and operation)."""
    return _filter_table(store.stats(task=task, run_id=run_id), store, task, table)


def errors(
    store: MetadataStore, task: str, table: str | None = None, limit: int | None = None
) -> pl.DataFrame:
    """Recorded row errors, oldest first; with `limit`, the latest `limit` of them."""
    _check_limit(limit)
    frame = _filter_table(store.errors(task=task), store, task, table)
    return frame.tail(limit) if limit is not None else frame


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetTable:
    """Where one source table of a task lands, and how to find the versions of a key there."""

    target: str  # connection reference: saved name or URI, as recorded
    source_schema: str
    source_table: str
    target_schema: str
    target_table: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    mode: str  # 'upsert' | 'scd2'
    start_col: str = "scd_start_date"
    end_col: str = "scd_end_date"
    current_col: str = "scd_current"

    @property
    def name(self) -> str:
        return f"{self.source_schema}.{self.source_table}"

    def matches(self, table: str) -> bool:
        """`table` names it: source schema.table or table, target schema.table or table."""
        return table in (
            self.name,
            self.source_table,
            f"{self.target_schema}.{self.target_table}",
            self.target_table,
        )


def targets_of(
    settings: TaskSettings, plans: Mapping[tuple[str, str], TablePlan]
) -> list[TargetTable]:
    """The target tables of a validated task, in its tables' order."""
    cdc = settings.task.cdc_settings
    scd = cdc.scd2_settings
    return [
        TargetTable(
            target=settings.task.target,
            source_schema=key[0],
            source_table=key[1],
            target_schema=plan.target_schema,
            target_table=plan.target_table,
            columns=plan.target_column_names,
            key_columns=tuple(plan.target_primary_key),
            mode=cdc.mode,
            start_col=scd.start_date,
            end_col=scd.end_date,
            current_col=scd.current,
        )
        for key, plan in plans.items()
    ]


def record_targets(
    store: MetadataStore, settings: TaskSettings, plans: Mapping[tuple[str, str], TablePlan]
) -> None:
    """Record, when a run starts, where the task writes (what `history NAME` needs)."""
    tables = [
        {
            "source_schema": t.source_schema,
            "source_table": t.source_table,
            "target_schema": t.target_schema,
            "target_table": t.target_table,
            "columns": list(t.columns),
            "key_columns": list(t.key_columns),
            "mode": t.mode,
            "start_col": t.start_col,
            "end_col": t.end_col,
            "current_col": t.current_col,
        }
        for t in targets_of(settings, plans)
    ]
    store.record_targets(settings.name, settings.task.target, tables)


def recorded_targets(store: MetadataStore, task: str) -> list[TargetTable]:
    """The target tables the task's latest run recorded (empty if it never ran).

    A target recorded masked (written with a literal password) is replaced by the saved
    task's target when there is one: saving moved that password into a saved connection."""
    frame = store.targets(task)
    target = frame["target"][0] if frame.height else ""
    if frame.height and has_literal_password(target):
        try:
            saved = store.load_task(task).get("task", {}).get("target")
        except SettingsError:
            saved = None
        if isinstance(saved, str) and not has_literal_password(saved):
            target = saved
    return [
        TargetTable(
            target=target,
            source_schema=r["source_schema"],
            source_table=r["source_table"],
            target_schema=r["target_schema"],
            target_table=r["target_table"],
            columns=tuple(json.loads(r["columns"])),
            key_columns=tuple(json.loads(r["key_columns"])),
            mode=r["mode"],
            start_col=r["start_col"],
            end_col=r["end_col"],
            current_col=r["current_col"],
        )
        for r in frame.iter_rows(named=True)
    ]


def pick_target(task: str, targets: Sequence[TargetTable], table: str | None) -> TargetTable:
    """The target named by `table` (any of its four names), or the first one when None."""
    if not targets:
        raise SettingsError(
            f"task {task} has no recorded run: run it first, or give its settings file"
        )
    if table is None:
        return targets[0]
    for t in targets:
        if t.matches(table):
            return t
    known = ", ".join(t.name for t in targets)
    raise SettingsError(f"table {table!r} is not part of task {task} (tables: {known})")


def parse_key(items: Sequence[str], target: TargetTable) -> dict[str, str]:
    """`--key` values into {column: value}.

    `COLUMN=VALUE` names a column of the target (repeat it for a composite key); a bare
    VALUE is the value of the table's key when it has exactly one key column. Text before
    a first '=' that looks like a column name is one (a typo is an error, not a value),
    so a value holding '=' is written after its column: `--key code=a=b`.
    """
    key: dict[str, str] = {}
    if not items:
        raise SettingsError(_key_help(target, "give the key"))
    for item in items:
        column, sep, value = item.partition("=")
        named = bool(sep) and _COLUMN_RE.fullmatch(column) is not None
        if named and column not in target.columns:
            raise SettingsError(
                f"{column!r} is not a column of {target.target_schema}.{target.target_table}"
                f" ({_key_help(target, 'key')})"
            )
        if not named:
            if len(target.key_columns) != 1 or len(items) != 1:
                raise SettingsError(_key_help(target, f"{item!r} is not COLUMN=VALUE"))
            column, value = target.key_columns[0], item
        if column in key:
            raise SettingsError(f"--key {column} is given twice")
        key[column] = value
    return key


_COLUMN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _key_help(target: TargetTable, lead: str) -> str:
    cols = target.key_columns
    where = f"{target.target_schema}.{target.target_table}"
    if len(cols) == 1:
        return f"{lead}: --key VALUE or --key {cols[0]}=VALUE (key of {where}: {cols[0]})"
    if cols:
        return f"{lead}: " + " ".join(f"--key {c}=VALUE" for c in cols) + f" (key of {where})"
    return f"{lead}: --key COLUMN=VALUE ({where} has no key columns)"


def history(
    target: TargetTable, key: Mapping[str, Any], limit: int = 1000, uri: str | None = None
) -> pl.DataFrame:
    """Every version of one key in an SCD2 target (or its row in an upsert target), oldest first.

    `uri` overrides the recorded connection reference (a settings file's resolved target).
    """
    if not key:
        raise SettingsError("give the key as COLUMN=VALUE (e.g. id=42)")
    _check_limit(limit)
    where_name = f"{target.target_schema}.{target.target_table}"
    unknown = [k for k in key if k not in target.columns]
    if unknown:
        raise SettingsError(
            f"{', '.join(unknown)} not a column of {where_name} (key: {', '.join(target.key_columns)})"
        )
    if uri is None:
        if has_literal_password(target.target):
            raise SettingsError(
                f"the target of {target.name} was given with a literal password, which is never"
                f" recorded ({mask(target.target)}): give the task's settings file instead of its"
                " name, or make the target a saved connection (trempy-nb connect add)"
            )
        uri = resolve(target.target, mariadb=True)
    if is_mariadb_uri(uri):
        names, rows = _mariadb_reader()(uri, target.target_schema, target.target_table, key,
                                        target.start_col if target.mode == "scd2" else None, int(limit))
        return frame_of_rows(names, rows)
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key)
    order = (
        sql.SQL("ORDER BY {} NULLS LAST").format(sql.Identifier(target.start_col))
        if target.mode == "scd2"
        else sql.SQL("")
    )
    query = sql.SQL("SELECT * FROM {} WHERE {} {} LIMIT {}").format(
        sql.Identifier(target.target_schema, target.target_table),
        where,
        order,
        sql.Literal(int(limit)),
    )
    params = [v if v is None or isinstance(v, (int, float, bool)) else str(v) for v in key.values()]
    with connect(uri) as conn:
        try:
            cur = conn.execute(query, params)
        except psycopg.errors.DataError as exc:  # '--key abc' for an integer key, and the like
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SettingsError(
                f"key {dict(key)} does not fit {where_name}: {mask(first)}"
            ) from None
        except psycopg.errors.UndefinedTable:
            raise TrempyError(
                f"{where_name} does not exist on the target (has the task run yet?)"
            ) from None
        names = [d.name for d in cur.description or []]
        oids = [d.type_code for d in cur.description or []]
        rows = cur.fetchall()
    return frame_of_rows(names, rows, oids)


# --------------------------------------------------------------------------- output


def plain(value: Any) -> Any:
    """A JSON-ready, masked value: ISO-8601 datetimes, Decimals as strings (exact), bytes as
    PostgreSQL's hex text, UUIDs as text, durations in seconds."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {mask(str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, pl.Series)):
        return [plain(v) for v in value]
    return mask(str(value))


def records(frame: pl.DataFrame, json_columns: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The frame's rows as masked plain dicts; `json_columns` hold JSON text, embedded parsed."""
    embed = set(json_columns) & set(frame.columns)
    out = []
    for row in frame.iter_rows(named=True):
        item = {k: plain(v) for k, v in row.items()}
        for k in embed:
            if isinstance(item[k], str):
                try:
                    item[k] = json.loads(item[k])
                except json.JSONDecodeError:
                    pass
        out.append(item)
    return out


def json_text(frame: pl.DataFrame, json_columns: Iterable[str] = ()) -> str:
    """A JSON array of objects, one per row (what `--json` prints)."""
    return json.dumps(records(frame, json_columns), indent=2, ensure_ascii=False)


def _cell(value: Any, width: int) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())  # one line per row: newlines of error messages folded
    return text if len(text) <= width else text[: width - 1] + "…"


def table_text(frame: pl.DataFrame, max_width: int = 100) -> str:
    """A readable aligned table (numbers right-aligned, cells cut at `max_width`), masked."""
    if not frame.columns:
        return "(no rows)"
    names = frame.columns
    numeric = {c for c, t in frame.schema.items() if t.is_numeric()}
    cells = [[_cell(plain(v), max_width) for v in row] for row in frame.iter_rows()]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if n in numeric else v.ljust(w)
            for v, w, n in zip(values, widths, names, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    if not cells:
        out.append("(no rows)")
    return "\n".join(out)


def _mariadb_reader() -> Any:
    """`writer.mariadb.read.key_rows`; its driver is the optional extra `trempy_nb[mariadb]`, imported
    only when a MariaDB target is read (so PostgreSQL-only installs never need it)."""
    try:
        from trempy_nb.writer.mariadb.read import key_rows
    except ImportError as exc:
        raise SettingsError(f"a MariaDB/MySQL target needs its driver: pip install 'trempy_nb[mariadb]' ({exc})") from None
    return key_rows


#: one row per table of a task: its lifecycle state and its last diff (the dashboard, `Task.table_states`)
LIFECYCLE_SCHEMA: dict[str, Any] = {
    "table": pl.String, "state": pl.String, "since": pl.Datetime("us", "UTC"), "detail": pl.String,
    "last_diff": pl.String, "diffed_at": pl.Datetime("us", "UTC"),
}


def table_lifecycle(store: MetadataStore, task: str, tables: Sequence[str]) -> pl.DataFrame:
    """Each table's lifecycle state (no row in the store: streaming) and its last diff result."""
    states = {r["table"]: r for r in store.table_states(task).iter_rows(named=True)}
    diffs = {r["table"]: r for r in store.table_diffs(task).iter_rows(named=True)}
    rows = []
    for name in dict.fromkeys([*tables, *states]):
        st, df = states.get(name), diffs.get(name)
        last = None
        if df is not None:
            left = int(df["missing"]) + int(df["extra"]) + int(df["different"]) - int(df["repaired"])
            last = "equal" if left <= 0 and not df["repaired"] else (
                f"repaired {df['repaired']}" if left <= 0 else
                f"{df['missing']} missing, {df['extra']} extra, {df['different']} different")
        rows.append({"table": name, "state": st["state"] if st else "streaming",
                     "since": st["updated_at"] if st else None, "detail": st["detail"] if st else None,
                     "last_diff": last, "diffed_at": df["diffed_at"] if df else None})
    return pl.DataFrame(rows, schema=LIFECYCLE_SCHEMA)
