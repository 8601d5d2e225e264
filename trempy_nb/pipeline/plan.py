"""One table's pipeline, validated and compiled once: filters, renames, value steps.

`compile_plan` walks the table's transformations in application order while
tracking the column set and types, so every mistake is refused before any
data moves, with the field path of the rule at fault. The resulting
`TablePlan` is what the snapshot reader, the change applier and `preview()`
share: a raw-text frame in, a raw-text frame out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from psycopg import sql

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.changes import META_COLUMNS, OP, UNCHANGED
from trempy_nb.errors import ValidationFailed
from trempy_nb.pgtypes import numeric_scale, polars_dtype, type_category
from trempy_nb.pipeline.filters import (
    CompiledFilter,
    combine,
    combine_sql,
    compile_filters,
    parse_time,
    predicate_sql,
)
from trempy_nb.pipeline.transformations import (
    BatchContext,
    Step,
    compile_value_step,
    parse_datetime_like,
)
from trempy_nb.settings import TaskSettings


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class TablePlan:
    """The compiled pipeline of one source table (see module docstring)."""

    source: TableInfo
    target_schema: str
    target_table: str
    target_columns: tuple[ColumnInfo, ...]
    target_primary_key: tuple[str, ...]
    source_columns: tuple[str, ...]
    passthrough: bool
    filters: tuple[CompiledFilter, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()  # (source name, target name), renamed columns only
    steps: tuple[Step, ...] = ()
    clock: Callable[[], dt.datetime] = field(default=_utcnow, compare=False, repr=False)

    # -- names ---------------------------------------------------------------------------
    @property
    def target_key(self) -> tuple[str, str]:
        return (self.target_schema, self.target_table)

    @property
    def target_column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.target_columns)

    @property
    def rename_map(self) -> dict[str, str]:
        """Source name -> target name of every renamed column."""
        return dict(self.renames)

    def target_name(self, source_column: str) -> str:
        return self.rename_map.get(source_column, source_column)

    # -- what the plan reads and writes (pipeline/copylayout.py lays out the COPYs from these) --
    def source_column(self, name: str) -> str | None:
        """The source column a column of the plan's output carries (`name` after renames), or
        None for a column a step creates."""
        for source, target in self.renames:
            if target == name:
                return source
        renamed = {source for source, _ in self.renames}
        return name if name in self.source_columns and name not in renamed else None

    @property
    def writes(self) -> frozenset[str]:
        """The columns steps write, modified or created (names after renames: renames come first)."""
        return frozenset(step.column for step in self.steps)

    @property
    def reads(self) -> frozenset[str]:
        """The source columns a filter or a step reads."""
        found = {f.column.name for f in self.filters}
        for step in self.steps:
            for name in (*step.inputs, step.column):
                source = self.source_column(name)
                if source is not None:
                    found.add(source)
        return frozenset(found)

    @property
    def decimal_inputs(self) -> dict[str, int]:
        """Source columns only exact math reads (no filter, no other step), each with the one
        scale every such step reads it at: they may reach the plan as Decimal values."""
        filtered = {f.column.name for f in self.filters}
        found: dict[str, int] = {}
        for col in self.source_columns:
            scales = {step.decimal_scale(name) for step in self.steps
                      for name in step.inputs if self.source_column(name) == col}
            if col not in filtered and len(scales) == 1 and (scale := scales.pop()) is not None:
                found[col] = scale
        return found

    @property
    def decimal_results(self) -> tuple[str, ...]:
        """Columns exact math writes that no later step reads or rewrites: they may stay Decimal
        for their only reader, the COPY binary encoder (BatchContext.decimals)."""
        return tuple(
            step.column for k, step in enumerate(self.steps)
            if step.decimal_result
            and not any(step.column in (*later.inputs, later.column) for later in self.steps[k + 1:])
        )

    # -- rows ----------------------------------------------------------------------------
    def predicate(self) -> pl.Expr:
        """All filters as one boolean expression over source (raw-text) columns: AND of the
        or_groups, OR inside one."""
        return combine(self.filters)

    def context(self) -> BatchContext:
        return BatchContext(now=self.clock())

    def apply(self, df: pl.DataFrame, ctx: BatchContext | None = None) -> pl.DataFrame:
        """Full-load rows: filter, rename, transform; exactly the target columns, raw text."""
        self._require_columns(df)
        frame = df.select(self.source_columns)
        if self.filters:
            frame = frame.filter(self.predicate())
        frame = self._transform(frame, ctx)
        return frame.select(self.target_column_names)

    def apply_some(self, df: pl.DataFrame, ctx: BatchContext | None = None) -> pl.DataFrame:
        """Full-load rows when only the columns the plan reads come as text (copylayout.py):
        filter, rename, transform; other columns ride along untouched."""
        lazy = df.lazy().filter(self.predicate()) if self.filters else df.lazy()
        if self.renames:
            lazy = lazy.rename({s: t for s, t in self.renames if s in df.columns})
        return self._transform_steps(lazy, ctx)

    def apply_changes(self, df: pl.DataFrame, ctx: BatchContext | None = None) -> pl.DataFrame:
        """CDC rows with the meta columns of trempy_nb.changes.

        A non-delete row that fails the filters (grouped: `filters.combine`) becomes a delete of its key
        (its other columns set to NULL); deletes pass through unfiltered. A
        filter on a column listed as unchanged (TOASTed, value not sent) cannot
        be evaluated and counts as passing. Meta columns are kept, with the
        names in UNCHANGED renamed along with the data columns.
        """
        self._require_columns(df)
        meta = [c for c in df.columns if c in META_COLUMNS]
        frame = df.select([*self.source_columns, *meta])
        if self.filters:
            frame = self._filter_changes(frame)
        if self.renames and UNCHANGED in frame.columns:
            mapping = self.rename_map
            frame = frame.with_columns(
                pl.col(UNCHANGED).list.eval(
                    pl.element().replace(list(mapping), list(mapping.values()))
                )
            )
        frame = self._transform(frame, ctx)
        return frame.select([*self.target_column_names, *meta])

    def _filter_changes(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Move-out and move-in: a non-delete row that fails the grouped predicate (AND of
        the or_groups, OR inside one) becomes a delete of its key; one that passes is
        written (an insert on the target when its previous version had moved out)."""
        passes = combine(self.filters, _passes_if_unchanged if UNCHANGED in frame.columns else None)
        if OP not in frame.columns:
            raise ValueError(f"change frame of {self.source.qualified} has no {OP} column")
        to_delete = (pl.col(OP) != "D") & ~passes
        key = set(self.source.key_columns)
        nulled = [
            pl.when(to_delete).then(pl.lit(None, dtype=pl.String)).otherwise(pl.col(c)).alias(c)
            for c in self.source_columns
            if key and c not in key
        ]
        return frame.with_columns(
            *nulled, pl.when(to_delete).then(pl.lit("D")).otherwise(pl.col(OP)).alias(OP)
        )

    def _transform(self, frame: pl.DataFrame, ctx: BatchContext | None) -> pl.DataFrame:
        if self.renames:
            frame = frame.rename(self.rename_map)
        return self._transform_steps(frame, ctx)

    def _transform_steps(self, frame: pl.DataFrame | pl.LazyFrame, ctx: BatchContext | None) -> pl.DataFrame:
        """The steps in order. A row of steps that are one expression each (Step.expr) runs as one
        query, with the filter and renames before them: one pass instead of one per step."""
        if ctx is None and self.steps:
            ctx = self.context()
        pending: list[Step] = []
        for step in self.steps:
            if step.expr(ctx) is not None:  # type: ignore[arg-type]
                pending.append(step)
                continue
            frame = step.apply(_run(frame, pending, ctx), ctx)  # type: ignore[arg-type]
            pending = []
        return _run(frame, pending, ctx)

    def _require_columns(self, df: pl.DataFrame) -> None:
        missing = [c for c in self.source_columns if c not in df.columns]
        if missing:
            raise ValueError(
                f"frame of {self.source.qualified} lacks source columns {', '.join(missing)}"
            )

    # -- preview / SQL ---------------------------------------------------------------------
    def display(self, df: pl.DataFrame) -> pl.DataFrame:
        """Target-shaped raw text -> typed Polars columns where the cast is lossless.

        ints, floats, numeric (Decimal when the scale fits 38 digits), bool,
        date, timestamp(tz), time; everything else (and any column where some
        value would not survive the cast, e.g. 'infinity') stays String.
        """
        types = {c.name: c.pg_type for c in self.target_columns}
        candidates: dict[str, pl.Expr] = {}
        for name in df.columns:
            pg_type = types.get(name)
            if pg_type is None or df.schema[name] != pl.String:
                continue
            expr = display_expr(pl.col(name), pg_type, df.get_column(name))
            if expr is not None:
                candidates[name] = expr
        if not candidates or df.height == 0:
            return df.with_columns(e.alias(n) for n, e in candidates.items()) if candidates else df
        lossy = df.select(
            (e.is_null() & pl.col(n).is_not_null()).any().alias(n) for n, e in candidates.items()
        ).row(0)
        keep = {n: e for (n, e), bad in zip(candidates.items(), lossy, strict=True) if not bad}
        return df.with_columns(e.alias(n) for n, e in keep.items())

    def filter_sql(self) -> tuple[sql.Composable, list[Any]] | None:
        """The filters as a SQL predicate over source columns, with its parameters (None
        without filters): the same grouped predicate as `predicate()`."""
        if not self.filters:
            return None
        return combine_sql(self.filters)

    def filter_predicate_sql(self) -> sql.Composed | None:
        """The same predicate with its values inline (`filters.predicate_sql`), for a query
        that embeds it, such as a diff of source and target (None without filters)."""
        if not self.filters:
            return None
        return predicate_sql(self.filters)

    def stats_filtered(self, df_in: pl.DataFrame, df_out: pl.DataFrame) -> dict[str, int]:
        """Row counts around `apply`, for run statistics."""
        return {
            "rows_in": df_in.height,
            "rows_out": df_out.height,
            "rows_filtered": df_in.height - df_out.height,
        }


def _passes_if_unchanged(f: CompiledFilter) -> pl.Expr:
    """A filter on a column whose value the change did not send (unchanged TOAST) cannot be
    evaluated and counts as passing; inside an or_group that makes the whole group pass."""
    return f.expr | pl.col(UNCHANGED).list.contains(f.column.name).fill_null(False)


def _run(frame: pl.DataFrame | pl.LazyFrame, steps: list[Step], ctx: BatchContext | None) -> pl.DataFrame:
    """`frame` with expression steps applied, as one query; on an error, step by step, so that
    the error names its step."""
    if not steps and isinstance(frame, pl.DataFrame):
        return frame
    lazy = frame.lazy()
    for step in steps:
        lazy = lazy.with_columns(step.expr(ctx).alias(step.column))  # type: ignore[arg-type, union-attr]
    try:
        return lazy.collect()
    except pl.exceptions.PolarsError:
        base = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
        for step in steps:
            base = step.apply(base, ctx)  # type: ignore[arg-type]
        return base


def display_expr(raw: pl.Expr, pg_type: str, values: pl.Series | None = None) -> pl.Expr | None:
    """The typed display form of one raw-text column, or None to keep it as String."""
    category = type_category(pg_type)
    if category == "numeric":
        scale = numeric_scale(pg_type)
        if scale is None and values is not None:
            found = values.str.extract(r"\.(\d+)$", 1).str.len_chars().max()
            scale = int(found) if isinstance(found, int) else 0
        if scale is None or scale > 38:
            return None
        return raw.cast(pl.Decimal(38, scale), strict=False)
    if category == "boolean":
        return pl.when(raw == "t").then(True).when(raw == "f").then(False)
    if category in ("date", "timestamp", "timestamptz"):
        return parse_datetime_like(raw, category)  # 'infinity' has no typed form: stays String
    if category == "time":
        return parse_time(raw)
    dtype = polars_dtype(category, pg_type)
    return raw.cast(dtype, strict=False) if dtype is not None else None


# -- compiling -----------------------------------------------------------------------------


def compile_plan(
    settings: TaskSettings,
    table: TableInfo,
    *,
    clock: Callable[[], dt.datetime] | None = None,
) -> TablePlan:
    """Validate and compile the filters and transformations of one table, in order."""
    key = table.key
    filter_items = [(i, f) for i, f in enumerate(settings.filters) if f.table_key == key]
    compiled_filters = compile_filters(filter_items, table)

    columns: dict[str, ColumnInfo] = {c.name: c for c in table.columns}
    origin: dict[str, str] = {c.name: c.name for c in table.columns}  # current -> source name
    pk: list[str] = list(table.key_columns)
    target_schema, target_table = table.schema, table.name
    steps: list[Step] = []

    for index, spec in settings.transformations_for(key):
        path = f"transformations[{index}].contract"
        ttype = spec.transformation_type
        c = spec.contract
        if ttype == "modify_schema_name":
            target_schema = c["target_schema_name"]
        elif ttype == "modify_table_name":
            target_table = c["target_table_name"]
        elif ttype == "modify_column_name":
            old, new = c["column_name"], c["new_column_name"]
            _must_exist(path, "column_name", old, columns)
            if new in columns:
                raise ValidationFailed(f"{path}.new_column_name: column '{new}' already exists")
            columns = {
                (new if n == old else n): (_renamed(ci, new) if n == old else ci)
                for n, ci in columns.items()
            }
            if old in origin:
                origin[new] = origin.pop(old)
            pk = [new if k == old else k for k in pk]
        elif ttype == "add_primary_key":
            names = list(c["column_names"])
            for k, name in enumerate(names):
                _must_exist(path, f"column_names[{k}]", name, columns)
            _no_duplicates(path, names)
            pk = names
        elif ttype == "remove_primary_key":
            names = list(c["column_names"])
            for k, name in enumerate(names):
                _must_exist(path, f"column_names[{k}]", name, columns)
                if name not in pk:
                    raise ValidationFailed(
                        f"{path}.column_names[{k}]: column '{name}' is not part of the primary key "
                        f"(primary key: {', '.join(pk) or 'none'})"
                    )
            pk = [k for k in pk if k not in names]
        else:
            step = compile_value_step(index, spec, {n: ci.pg_type for n, ci in columns.items()})
            steps.append(step)
            if step.column in columns:
                old_info = columns[step.column]
                columns[step.column] = ColumnInfo(
                    name=step.column,
                    pg_type=step.pg_type,
                    nullable=old_info.nullable,
                    position=old_info.position,
                )
            else:
                columns[step.column] = ColumnInfo(
                    name=step.column, pg_type=step.pg_type, nullable=True, position=0
                )

    target_columns = tuple(
        ColumnInfo(name=ci.name, pg_type=ci.pg_type, nullable=ci.nullable, position=pos)
        for pos, ci in enumerate(columns.values(), start=1)
    )
    _check_scd2_names(settings, target_columns)
    renames = tuple((src, cur) for cur, src in origin.items() if src != cur)
    return TablePlan(
        source=table,
        target_schema=target_schema,
        target_table=target_table,
        target_columns=target_columns,
        target_primary_key=tuple(pk),
        source_columns=tuple(table.column_names),
        passthrough=not compiled_filters and not steps,
        filters=tuple(compiled_filters),
        renames=renames,
        steps=tuple(steps),
        clock=clock or _utcnow,
    )


def compile_plans(
    settings: TaskSettings, tables: dict[tuple[str, str], TableInfo]
) -> dict[tuple[str, str], TablePlan]:
    """Plans of every listed table; two tables may not land on the same target table."""
    plans: dict[tuple[str, str], TablePlan] = {}
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for ref in settings.tables:
        plan = compile_plan(settings, tables[ref.key])
        other = seen.get(plan.target_key)
        if other is not None:
            raise ValidationFailed(
                f"tables: {'.'.join(other)} and {'.'.join(ref.key)} would both be written to "
                f"{'.'.join(plan.target_key)}"
            )
        seen[plan.target_key] = ref.key
        plans[ref.key] = plan
    return plans


def _renamed(info: ColumnInfo, name: str) -> ColumnInfo:
    return ColumnInfo(
        name=name, pg_type=info.pg_type, nullable=info.nullable, position=info.position
    )


def _must_exist(path: str, field_name: str, name: str, columns: dict[str, ColumnInfo]) -> None:
    if name not in columns:
        raise ValidationFailed(
            f"{path}.{field_name}: column '{name}' does not exist at this point "
            f"(columns: {', '.join(columns)})"
        )


def _no_duplicates(path: str, names: list[str]) -> None:
    for k, name in enumerate(names):
        if name in names[:k]:
            raise ValidationFailed(f"{path}.column_names[{k}]: column '{name}' is listed twice")


def _check_scd2_names(settings: TaskSettings, columns: tuple[ColumnInfo, ...]) -> None:
    """An SCD2 target adds three validity columns: they must not collide with data columns."""
    cdc = settings.task.cdc_settings
    if cdc.mode != "scd2":
        return
    names = {c.name for c in columns}
    for field_name in ("start_date", "end_date", "current"):
        value = getattr(cdc.scd2_settings, field_name)
        if value in names:
            raise ValidationFailed(
                f"task.cdc_settings.scd2_settings.{field_name}: column '{value}' already exists "
                "in the target table; choose another name"
            )
