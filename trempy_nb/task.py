"""The Python API every surface calls: `Task.from_settings(...)`, `validate`, `preview`, `run`.

Magics, widgets, the CLI and the AI assistant only call these methods; the
engine (`trempy_nb/engine/`) runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from trempy_nb.connections import mask, resolve
from trempy_nb.db import connect
from trempy_nb.engine.result import RunResult
from trempy_nb.errors import SettingsError, TrempyError
from trempy_nb.pgcopy.copyio import iter_frames, select_query
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.settings import TaskSettings, parse_settings
from trempy_nb.validation import ValidatedTask, validate_live


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
    def validate(self) -> Task:
        """Check against the live source; raises ValidationFailed listing every problem."""
        self._validated = validate_live(self.settings, self.source_uri)
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
        from trempy_nb.engine.runner import (
            run_task,  # lazy: start-up speed (validate/preview run nothing)
        )

        return run_task(self, until_caught_up=until_caught_up, progress=progress)

    def start(self, until_caught_up: bool = False, progress: bool = False) -> Any:
        """Start a background runner (thread); see `engine.runner.Runner`."""
        from trempy_nb.engine.runner import (
            Runner,  # lazy: start-up speed (validate/preview run nothing)
        )

        return Runner(self, until_caught_up=until_caught_up, progress=progress).start()

    def history(self, table: str | None, key: dict[str, Any], limit: int = 1000) -> pl.DataFrame:
        """Every version of one key in an SCD2 target (or its row in an upsert target), oldest first."""
        from trempy_nb import reports  # lazy: start-up speed (validate/preview need no store)

        plan = self._plan_for(table)
        target = reports.targets_of(self.settings, {plan.source.key: plan})[0]
        return reports.history(target, key, limit=limit, uri=self.target_uri)

    def preview_changes(self, limit: int = 50) -> pl.DataFrame:
        """The next pending changes of the task's slot, transformed, without consuming them."""
        from trempy_nb.engine.pending import frame_of_pending  # lazy: start-up speed

        return frame_of_pending(self, limit)

    def stats(self, table: str | None = None) -> pl.DataFrame:
        """Per-table counters recorded by the task's runs (see `reports.stats`)."""
        from trempy_nb import reports  # lazy: start-up speed (validate/preview need no store)
        from trempy_nb.metadata import MetadataStore  # lazy: start-up speed

        return reports.stats(MetadataStore(), self.name, table=table)

    def errors(self, table: str | None = None, limit: int | None = None) -> pl.DataFrame:
        """Rows that failed and were recorded, oldest first (see `reports.errors`)."""
        from trempy_nb import reports  # lazy: start-up speed (validate/preview need no store)
        from trempy_nb.metadata import MetadataStore  # lazy: start-up speed

        return reports.errors(MetadataStore(), self.name, table=table, limit=limit)

    def dead_letters(self) -> pl.DataFrame:
        """Batches given up after max_retries (task, table, LSN range, error, attempts, time).

        With the rabbitmq transport: the task's dead-letter queue, read without consuming it;
        otherwise the metadata store's record."""
        from trempy_nb.engine.runner import dead_letters  # lazy: start-up speed

        return dead_letters(self)

    def replay_dead_letters(self) -> int:
        """Put the dead letters back on the queue, in order, after the cause is fixed; returns how many."""
        from trempy_nb.engine.runner import replay_dead_letters  # lazy: start-up speed

        return replay_dead_letters(self)

    def drop(self) -> None:
        """Remove everything the task owns on the source (slot, publication) and its state."""
        from trempy_nb.engine.runner import drop_task  # lazy: start-up speed

        drop_task(self)




__all__ = ["Task", "RunResult", "TrempyError"]
