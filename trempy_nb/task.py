"""The Python API every surface calls: `Task.from_settings(...)`, `validate`, `preview`, `run`.

Magics, widgets, the CLI and the AI assistant only call these methods; the
engine (`trempy_nb/engine/`) runs them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import polars as pl

from trempy_nb.connections import mask, resolve
from trempy_nb.db import connect
from trempy_nb.engine.result import RunResult
from trempy_nb.errors import OwnedElsewhere, SettingsError, TrempyError
from trempy_nb.fleet import Placement, place
from trempy_nb.pgcopy.copyio import iter_frames, select_query
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.rowframes import frame_of_rows
from trempy_nb.settings import TaskSettings, parse_settings
from trempy_nb.validation import ValidatedTask, validate_live
from trempy_nb.writer.history import (
    CHANGED_COLUMN,
    HistoryTable,
    as_of_query,
    changes_query,
    instants_query,
    parse_time,
)


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
        return resolve(self.settings.task.target, mariadb=True)

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

    def submit(self, replace: bool = False, spawn: bool = True) -> Placement:
        """A detached run: store the task desired-running in the state store, for the fleet's
        workers to claim (docs/fleet.md). When no worker is alive (and `spawn`), start a local
        `trempy-nb worker` that outlives this process. The `Placement`'s `message` says which.
        Changed settings of a running task are refused (`TaskRunning`) unless `replace`."""
        from trempy_nb.metadata import (
            MetadataStore,  # lazy: start-up speed (validate/preview need no store)
        )

        store = MetadataStore()
        store.submit(self.name, self.settings.to_dict(), replace=replace)
        return place(store, self.name, spawn=spawn)

    def history(self, table: str | None, key: dict[str, Any], limit: int = 1000) -> pl.DataFrame:
        """Every version of one key in an SCD2 target (or its row in an upsert target), oldest first."""
        from trempy_nb import reports  # lazy: start-up speed (validate/preview need no store)

        plan = self._plan_for(table)
        target = reports.targets_of(self.settings, {plan.source.key: plan})[0]
        return reports.history(target, key, limit=limit, uri=self.target_uri)

    # time travel (SCD2 targets) --------------------------------------------------------
    def _history_table(self, table: str | None, verb: str) -> HistoryTable:
        cdc = self.settings.task.cdc_settings
        if cdc.mode != "scd2":
            raise SettingsError(
                f"{verb} needs an SCD2 target: task {self.name} writes in {cdc.mode} mode"
                " (cdc_settings.mode), which keeps only the current rows, not their history"
            )
        plan = self._plan_for(table)
        names = cdc.scd2_settings
        return HistoryTable(
            schema=plan.target_schema,
            table=plan.target_table,
            key=plan.target_primary_key,
            columns=plan.target_column_names,
            start=names.start_date,
            end=names.end_date,
            current=names.current,
        )

    def as_of(self, ts: Any, table: str | None = None, limit: int | None = None) -> pl.DataFrame:
        """The target table as it was at `ts` (SCD2): the versions with start <= ts and
        (end > ts or current), data columns only, ordered by key.

        `ts`: a datetime, an ISO string or a relative time (`-1d`, `-2h`, `-30m`); `table`:
        source or target name (default: the task's first table); `limit` bounds the rows.
        """
        when = parse_time(ts)  # bad input fails before any connection
        hist = self._history_table(table, "as-of")
        return self._target_frame(as_of_query(hist, limit), {"ts": when})

    def changes(
        self, since: Any, until: Any = None, table: str | None = None, limit: int | None = None
    ) -> pl.DataFrame:
        """One row per key that changed between `since` and `until` (default: now) in an
        SCD2 target: key columns, `operation` (insert/update/delete), `changed_at` (its
        last change in the interval), `changed_columns`, and `<col>_before`/`<col>_after`
        for the columns that changed. Times as in `as_of`.
        """
        start = parse_time(since)  # bad input fails before any connection
        end = None if until is None else parse_time(until)
        hist = self._history_table(table, "changes")
        if end is not None and end < start:
            raise SettingsError(
                f"until ({end.isoformat()}) is before since ({start.isoformat()})"
            )
        frame = self._target_frame(changes_query(hist, limit), {"since": start, "until": end})
        return frame.with_columns(pl.col(CHANGED_COLUMN).cast(pl.List(pl.String)))

    def history_instants(self, table: str | None = None, limit: int = 200) -> list[Any]:
        """The latest `limit` instants at which an SCD2 target table changed, oldest first."""
        hist = self._history_table(table, "history")
        with connect(self.target_uri) as conn:
            rows = conn.execute(instants_query(hist, limit)).fetchall()
        return [r[0] for r in reversed(rows)]

    def _target_frame(self, query: Any, params: Any) -> pl.DataFrame:
        with connect(self.target_uri) as conn:
            cur = conn.execute(query, params)
            names = [d.name for d in cur.description or []]
            oids = [d.type_code for d in cur.description or []]
            rows = cur.fetchall()
        return frame_of_rows(names, rows, oids)

    # reconciliation --------------------------------------------------------------------
    def diff(self, table: str | None = None, repair: bool = False, chunk_rows: int | None = None,
             wait: float | None = None) -> pl.DataFrame:
        """Compare the target with the source through the task's plan, by key (docs/reconcile.md).

        One row per differing key: `table`, `target`, `key` (a JSON object), `kind` (`missing`,
        `extra`, `different`) and `columns` (the differing columns); an empty frame when equal.
        `repair=True` fixes those keys on the target (logged); a second diff then returns no rows.
        """
        from trempy_nb.reconcile.chunks import frame  # lazy: start-up speed

        return frame(self.diff_tables(table, repair=repair, chunk_rows=chunk_rows, wait=wait))

    def diff_tables(self, table: str | None = None, repair: bool = False, chunk_rows: int | None = None,
                    wait: float | None = None) -> list[Any]:
        """`diff` per table, with its counts and route (reconcile.chunks.TableDiff), for reports."""
        from trempy_nb.engine.tablectl import leased_owner  # lazy: start-up speed
        from trempy_nb.metadata import MetadataStore  # lazy: start-up speed
        from trempy_nb.reconcile.run import DiffOptions, diff_tables

        plans = [self._plan_for(table)] if table is not None else list(self.plans.values())
        defaults = DiffOptions()
        options = DiffOptions(chunk_rows=chunk_rows or defaults.chunk_rows,
                              wait_seconds=defaults.wait_seconds if wait is None else wait, repair=repair)
        store = MetadataStore()
        if repair:
            owner = leased_owner(store, self.name)
            if owner is not None:
                raise OwnedElsewhere(
                    f"task {self.name} runs elsewhere under a live lease ({owner}): repair refused, as its"
                    " target belongs to that owner. Diff without --repair, or stop the task first"
                    f" (trempy-nb stop {self.name}) and repair once its lease is released")
        out = diff_tables(self.settings, plans, self.source_uri, self.target_uri, options,
                          log=lambda level, message: store.log(self.name, None, level, message))
        for t in out:  # the last result per table, for the dashboard
            c = t.counts()
            with contextlib.suppress(Exception):
                store.record_diff(self.name, t.table, t.target, source_rows=t.source_rows, target_rows=t.target_rows,
                                  missing=c["missing"], extra=c["extra"], different=c["different"],
                                  repaired=t.repaired, summary=t.summary())
        return out

    # per-table lifecycle on a running task (docs/lifecycle.md) -------------------------------
    def add_table(self, table: str, wait: float | None = None) -> dict[str, Any]:
        """Add `schema.table` to the task: to its stored settings and publication, loaded from a snapshot
        in step with the stream by the task's owner, then streamed. See `_lifecycle` for `wait`."""
        return self._lifecycle("add", table, None, wait)

    def resync(self, table: str, baseline: bool = False, wait: float | None = None) -> dict[str, Any]:
        """Reload one table from a fresh snapshot while the others stream. Upsert: truncated and reloaded in
        one transaction. SCD2: history kept (versions that differ or are gone closed, the source's opened at
        the resync time), or with `baseline=True` rebuilt as a new baseline (truncate + load)."""
        return self._lifecycle("resync", table, {"baseline": True} if baseline else None, wait)

    def pause_table(self, table: str, wait: float | None = None) -> dict[str, Any]:
        """Hold one table's changes durably on the target, in order (the stream and the slot go on)."""
        return self._lifecycle("pause", table, None, wait)

    def resume_table(self, table: str, wait: float | None = None) -> dict[str, Any]:
        """Apply a paused table's held changes in order, then stream it again."""
        return self._lifecycle("resume", table, None, wait)

    def _lifecycle(self, action: str, table: str, options: dict[str, Any] | None,
                   wait: float | None) -> dict[str, Any]:
        """Record the request for the task's owner; `wait` seconds: wait for it to be done (a failed
        request raises). Returns the request (id, state, message, owner)."""
        from trempy_nb.engine import tablectl  # lazy: start-up speed
        from trempy_nb.metadata import MetadataStore  # lazy: start-up speed

        store = MetadataStore()
        req = tablectl.request(self.settings, self.source_uri, self.target_uri, action, table, options=options,
                               store=store)
        self.settings = req.settings
        self._validated = None
        out: dict[str, Any] = {"id": req.id, "task": req.task, "table": req.table, "action": action,
                               "owner": req.owner, "state": "requested", "message": req.message}
        if wait and req.owner is not None:
            done = tablectl.wait(store, req.id, wait)
            out.update(state=done["state"], message=done["message"] or req.message)
        return out

    def table_states(self) -> pl.DataFrame:
        """Per-table lifecycle state (streaming, loading, resyncing, paused) and the last diff of each table."""
        from trempy_nb import reports  # lazy: start-up speed
        from trempy_nb.metadata import MetadataStore  # lazy: start-up speed

        return reports.table_lifecycle(MetadataStore(), self.name, [".".join(t.key) for t in self.settings.tables])

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
