"""The Python API every surface calls: `Task.from_settings(...)`, `validate`, `preview`, `run`.

Magics, widgets, the CLI and the AI assistant only call these methods; the
engine lives in fullload/runner/writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from trempy_nb.connections import mask, resolve
from trempy_nb.db import connect
from trempy_nb.errors import SettingsError, TrempyError
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.settings import TaskSettings, parse_settings
from trempy_nb.validation import ValidatedTask, validate_live
from trempy_nb.writer.copy import iter_frames, select_query


@dataclass
class RunResult:
    """What a run did, per table; `stats` is the same as a Polars frame."""

    task: str
    run_id: str | None
    status: str
    tables: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    changes_applied: int = 0

    @property
    def stats(self) -> pl.DataFrame:
        rows = [
            {
                "table": f"{r.schema}.{r.table}",
                "target": r.target,
                "path": r.path,
                "rows_read": r.rows_read,
                "rows_written": r.rows_written,
                "rows_filtered": r.rows_filtered,
                "rows_failed": r.rows_failed,
                "seconds": round(r.seconds, 3),
            }
            for r in self.tables
        ]
        return pl.DataFrame(rows) if rows else pl.DataFrame()

    def __str__(self) -> str:
        lines = [f"task {self.task}: {self.status} in {self.seconds:.1f}s"]
        for r in self.tables:
            rate = r.rows_read / r.seconds if r.seconds else 0
            lines.append(
                f"  {r.schema}.{r.table} -> {r.target}: read {r.rows_read:,}, written {r.rows_written:,},"
                f" filtered {r.rows_filtered:,}, failed {r.rows_failed:,} ({rate:,.0f} rows/s, {r.path})"
            )
        if self.changes_applied:
            lines.append(f"  changes applied: {self.changes_applied:,}")
        return "\n".join(lines)


class Task:
    """A replication task: settings plus the source/target they name."""

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings
        self._validated: ValidatedTask | None = None

    # construction -----------------------------------------------------------------
    @classmethod
    def from_settings(cls, doc: dict[str, Any] | str | Path | TaskSettings) -> Task:
        """From a dict, JSON/YAML text or file path; raises SettingsError naming the field path."""
        settings = doc if isinstance(doc, TaskSettings) else parse_settings(doc)
        return cls(settings)

    @property
    def name(self) -> str:
        return self.settings.name

    def __repr__(self) -> str:
        t = self.settings.task
        return (
            f"Task({t.task_name!r}, {t.replication_type}, mode={t.cdc_settings.mode},"
            f" tables={len(self.settings.tables)}, source={mask(t.source)!r}, target={mask(t.target)!r})"
        )

    # connections ------------------------------------------------------------------
    @property
    def source_uri(self) -> str:
        return resolve(self.settings.task.source)

    @property
    def target_uri(self) -> str:
        return resolve(self.settings.task.target)

    # validation -------------------------------------------------------------------
    def validate(self, conn: Any = None) -> Task:
        """Check against the live source; raises ValidationFailed listing every problem.
        `conn`: an open source connection to use instead of a new one."""
        self._validated = validate_live(self.settings, self.source_uri, conn)
        return self

    @property
    def plans(self) -> dict[tuple[str, str], TablePlan]:
        if self._validated is None:
            self.validate()
        assert self._validated is not None
        return self._validated.plans

    def _plan_for(self, table: str | None) -> TablePlan:
        plans = self.plans
        if table is None:
            return plans[self.settings.tables[0].key]
        for key, plan in plans.items():
            if table in (".".join(key), key[1], f"{plan.target_schema}.{plan.target_table}", plan.target_table):
                return plan
        known = ", ".join(".".join(k) for k in plans)
        raise SettingsError(f"table {table!r} is not part of task {self.name} (tables: {known})")

    # preview ----------------------------------------------------------------------
    def preview(self, table: str | None = None, limit: int = 20) -> pl.DataFrame:
        """The transformed rows that a run would write, as a typed Polars frame.

        Filters are pushed into the source query with the limit, so a preview
        of a huge table costs about as much as one of a small table.
        """
        plan = self._plan_for(table)
        where = plan.filter_sql()
        clause, params = where if where else (None, None)
        query = select_query(plan.source.schema, plan.source.name, list(plan.source_columns), clause, limit)
        with connect(self.source_uri) as conn:
            frames = list(iter_frames(conn.cursor(), query, list(plan.source_columns), params))
        raw = pl.concat(frames) if frames else pl.DataFrame({c: [] for c in plan.source_columns}, schema={c: pl.String for c in plan.source_columns})
        return plan.display(plan.apply(raw))

    def estimated_rows(self, table: str | None = None) -> int:
        return self._plan_for(table).source.estimated_rows

    # runs -------------------------------------------------------------------------
    def run(self, until_caught_up: bool = True, progress: bool = True) -> RunResult:
        """Run the task and block until it is done (CDC: until caught up with the source).

        Raises on failure, so a scheduled notebook or job fails loudly.
        """
        from trempy_nb.runner import run_task

        return run_task(self, until_caught_up=until_caught_up, progress=progress)

    def start(self, until_caught_up: bool = False, progress: bool = False) -> Any:
        """Start a background runner (thread); see `runner.Runner`."""
        from trempy_nb.runner import Runner

        return Runner(self, until_caught_up=until_caught_up, progress=progress).start()

    def history(self, table: str | None, key: dict[str, Any], limit: int = 1000) -> pl.DataFrame:
        """Every version of one key in an SCD2 target (or its row in an upsert target), oldest first."""
        from psycopg import sql

        if not key:
            raise SettingsError("give the key as COLUMN=VALUE (e.g. id=42)")
        plan = self._plan_for(table)
        cols = {c.name for c in plan.target_columns}
        unknown = [k for k in key if k not in cols]
        if unknown:
            raise SettingsError(
                f"{', '.join(unknown)} not a column of {plan.target_schema}.{plan.target_table}"
                f" (key: {', '.join(plan.target_primary_key)})"
            )
        cdc = self.settings.task.cdc_settings
        where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key)
        order = (
            sql.SQL("ORDER BY {} NULLS LAST").format(sql.Identifier(cdc.scd2_settings.start_date))
            if cdc.mode == "scd2"
            else sql.SQL("")
        )
        query = sql.SQL("SELECT * FROM {} WHERE {} {} LIMIT {}").format(
            sql.Identifier(plan.target_schema, plan.target_table), where, order, sql.Literal(int(limit))
        )
        params = [v if v is None or isinstance(v, (int, float, bool)) else str(v) for v in key.values()]
        with connect(self.target_uri) as conn:
            cur = conn.execute(query, params)
            names = [d.name for d in cur.description or []]
            rows = cur.fetchall()
        try:
            return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)
        except Exception:  # exotic types: show their text
            return pl.DataFrame(
                [[None if v is None else str(v) for v in r] for r in rows],
                schema={n: pl.String for n in names},
                orient="row",
            )

    def preview_changes(self, limit: int = 50) -> pl.DataFrame:
        """The next pending changes of the task's slot, transformed, without consuming them."""
        from trempy_nb.cdc import frame_of_pending

        return frame_of_pending(self, limit)

    def stats(self) -> pl.DataFrame:
        from trempy_nb.metadata import MetadataStore

        return MetadataStore().stats(task=self.name)

    def errors(self) -> pl.DataFrame:
        from trempy_nb.metadata import MetadataStore

        return MetadataStore().errors(task=self.name)

    def dead_letters(self) -> pl.DataFrame:
        """Batches given up after max_retries (task, table, LSN range, error, attempts, time).

        With the rabbitmq transport: the task's dead-letter queue, read without consuming it;
        otherwise the metadata store's record."""
        if self.settings.task.transport == "rabbitmq":
            from trempy_nb.transport.rabbitmq import dead_letters

            return dead_letters(self.name)
        from trempy_nb.metadata import MetadataStore

        return MetadataStore().dead_letters(task=self.name)

    def replay_dead_letters(self) -> int:
        """Put the dead letters back on the queue, in order, after the cause is fixed; returns how many."""
        if self.settings.task.transport != "rabbitmq":
            raise TrempyError(f"task {self.name}: replaying dead letters needs the rabbitmq transport")
        from trempy_nb.transport.rabbitmq import replay_dead_letters

        return replay_dead_letters(self.name)

    def drop(self) -> None:
        """Remove everything the task owns on the source (slot, publication) and its state."""
        from trempy_nb.runner import drop_task

        drop_task(self)




__all__ = ["Task", "RunResult", "TrempyError"]
