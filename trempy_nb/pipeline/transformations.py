"""Value transformations (modify_column_value, create_column) as steps on a raw-text frame.

Each step is compiled once from its contract against the columns that exist
at its point in the order (`compile_value_step`) and applied per batch
(`Step.apply(df, ctx)`), always with vectorized Polars expressions. Inputs
and outputs are PostgreSQL text (see trempy_nb.changes); every created or
changed column is rendered back as valid text for its output pg_type.

Decisions:
- concat follows PostgreSQL's concat_ws: NULL inputs are skipped (no doubled
  separator), all-NULL gives the empty string, non-text columns contribute
  their PostgreSQL text form (t/f for booleans, ISO dates...).
- uppercase/lowercase are Unicode-aware (like PostgreSQL under a UTF-8
  collation); trim strips leading and trailing whitespace.
- date_diff_years equals date_part('year', age(col)) with today's UTC date
  (one "today" per batch); 'infinity' dates give NULL.
- literal booleans are rendered as PostgreSQL prints them: t / f.
- A non-null value that cannot be read as its column's type raises ValueError
  naming the transformation and the column, instead of silently becoming NULL.

Structural transformations (names and keys) are handled by plan.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import polars as pl

from trempy_nb.errors import ValidationFailed
from trempy_nb.pgtypes import numeric_scale, timestamp_text, timestamptz_text, type_category
from trempy_nb.pipeline.filters import numeric_text
from trempy_nb.pipeline.mathexpr import MAX_SCALE, MathExpression, compile_math
from trempy_nb.settings import (
    CreateConcat,
    CreateDateDiffYears,
    CreateDatetimeNow,
    CreateLiteral,
    CreateMathExpression,
    ModifyColumnValue,
    TransformationSpec,
)

DATE_CATEGORIES = ("date", "timestamp", "timestamptz")
_INT4 = (-(2**31), 2**31 - 1)
_INT8 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class BatchContext:
    """What a batch shares: one 'now' (UTC), so every row of a batch gets the same time; and the
    columns exact math may leave as Decimal, whose only reader is the COPY binary encoder."""

    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    decimals: frozenset[str] = frozenset()

    @property
    def today(self) -> dt.date:
        return self.now.astimezone(dt.timezone.utc).date()


# -- parsing raw text for transformations ------------------------------------------------


def parse_datetime_like(raw: pl.Expr, category: str) -> pl.Expr:
    """Parse date/timestamp/timestamptz text; 'infinity' and unparseable text give null."""
    if category == "date":
        return raw.str.to_date("%Y-%m-%d", strict=False)
    if category == "timestamp":
        return raw.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False)
    return raw.str.to_datetime(
        "%Y-%m-%d %H:%M:%S%.f%#z", time_unit="us", time_zone="UTC", strict=False
    )


def _unparsed(raw: pl.Expr, parsed: pl.Expr, allowed: tuple[str, ...] = ()) -> pl.Expr:
    bad = parsed.is_null() & raw.is_not_null()
    if allowed:
        bad = bad & ~raw.is_in(list(allowed))
    return bad


def check_parsed(df: pl.DataFrame, label: str, checks: list[tuple[str, pl.Expr, str]]) -> None:
    """Raise ValueError if some non-null text of a column does not parse (checks: column, bad-mask, type)."""
    if not checks or df.height == 0:
        return
    flags = df.select(mask.any().alias(str(k)) for k, (_, mask, _) in enumerate(checks)).row(0)
    for (column, mask, what), flag in zip(checks, flags, strict=True):
        if flag:
            example = df.filter(mask).get_column(column).head(1).item()
            raise ValueError(
                f"{label}: column '{column}' holds {example!r}, which is not a valid {what}"
            )


# -- steps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One compiled value transformation (index = position in settings.transformations)."""

    index: int
    kind: str  # e.g. 'modify_column_value/uppercase'
    column: str  # the column written (modified or created)
    pg_type: str  # the written column's output type
    inputs: tuple[str, ...]  # columns read

    @property
    def label(self) -> str:
        return f"transformations[{self.index}] ({self.kind}, column '{self.column}')"

    def apply(self, df: pl.DataFrame, ctx: BatchContext) -> pl.DataFrame:
        try:
            return self._apply(df, ctx)
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{self.label}: {first}") from exc

    def _apply(self, df: pl.DataFrame, ctx: BatchContext) -> pl.DataFrame:
        expr = self.expr(ctx)
        if expr is None:  # pragma: no cover - every step has one or the other
            raise NotImplementedError
        return df.with_columns(expr.alias(self.column))

    def expr(self, ctx: BatchContext) -> pl.Expr | None:
        """The written column as one expression over the frame, for steps that need nothing
        eager (no parse to check): the plan runs a row of such steps as one query."""
        return None

    def decimal_scale(self, name: str) -> int | None:
        """The scale at which this step reads input `name` as an exact Decimal, or None: it
        reads the text (every step but exact math)."""
        return None

    @property
    def decimal_result(self) -> bool:
        """The written column may stay a Decimal (BatchContext.decimals) for a reader that
        takes one (only exact math)."""
        return False


@dataclass(frozen=True)
class TextCaseStep(Step):
    operation: str = "uppercase"

    def expr(self, ctx: BatchContext) -> pl.Expr:
        col = pl.col(self.column)
        if self.operation == "uppercase":
            return col.str.to_uppercase()
        if self.operation == "lowercase":
            return col.str.to_lowercase()
        return col.str.strip_chars()


@dataclass(frozen=True)
class FormatDateStep(Step):
    category: str = "date"
    format: str = "%Y-%m-%d"

    def _apply(self, df: pl.DataFrame, ctx: BatchContext) -> pl.DataFrame:
        raw = pl.col(self.column)
        parsed = parse_datetime_like(raw, self.category)
        check_parsed(
            df, self.label, [(self.column, _unparsed(raw, parsed, _INFINITIES), self.category)]
        )
        return df.with_columns(parsed.dt.strftime(self.format).alias(self.column))


_INFINITIES = ("infinity", "-infinity")


@dataclass(frozen=True)
class ConcatStep(Step):
    separator: str = ""

    def expr(self, ctx: BatchContext) -> pl.Expr:
        return pl.concat_str([pl.col(c) for c in self.inputs], separator=self.separator, ignore_nulls=True)


@dataclass(frozen=True)
class DateDiffYearsStep(Step):
    category: str = "date"

    def _apply(self, df: pl.DataFrame, ctx: BatchContext) -> pl.DataFrame:
        source = self.inputs[0]
        raw = pl.col(source)
        parsed = parse_datetime_like(raw, self.category)
        check_parsed(df, self.label, [(source, _unparsed(raw, parsed, _INFINITIES), self.category)])
        today = ctx.today
        day_ns = 86_400 * 10**9
        month_day = parsed.dt.month().cast(pl.Int64) * 100 + parsed.dt.day().cast(pl.Int64)
        clock = (
            pl.lit(0, dtype=pl.Int64)
            if self.category == "date"
            else parsed.dt.time().cast(pl.Int64)
        )
        key = month_day * day_ns + clock
        today_key = (today.month * 100 + today.day) * day_ns
        diff = pl.lit(today.year, dtype=pl.Int64) - parsed.dt.year().cast(pl.Int64)
        years = (
            pl.when((diff > 0) & (pl.lit(today_key) < key))
            .then(diff - 1)
            .when((diff < 0) & (pl.lit(today_key) > key))
            .then(diff + 1)
            .otherwise(diff)
        )
        return df.with_columns(years.cast(pl.String).alias(self.column))


@dataclass(frozen=True)
class MathStep(Step):
    math: MathExpression | None = None
    declared_scales: tuple[
        tuple[str, int | None], ...
    ] = ()  # numeric inputs: (column, typmod scale)

    @property
    def exact(self) -> bool:
        """Decimal arithmetic (no float input): its inputs and result can travel as Decimal."""
        return self.math is not None and not self.math.is_float

    def decimal_scale(self, name: str) -> int | None:
        """The declared scale of numeric input `name`, when Decimal arithmetic keeps it."""
        scale = dict(self.declared_scales).get(name) if self.exact else None
        return scale if scale is not None and scale <= MAX_SCALE else None

    @property
    def decimal_result(self) -> bool:
        return self.exact

    def _apply(self, df: pl.DataFrame, ctx: BatchContext) -> pl.DataFrame:
        assert self.math is not None
        scales = self._scales(df)
        parsed = {name: f"__trempy_math_{k}" for k, name in enumerate(self.math.columns)}
        # each input is parsed once: checked, then computed with
        frame = df.with_columns(self.math.input_expr(c, scales.get(c, 0)).alias(p) for c, p in parsed.items())
        checks = [(c, _unparsed(pl.col(c), pl.col(p)), "number for math_expression") for c, p in parsed.items()]
        check_parsed(frame, self.label, checks)
        out = self.math.to_polars(scales, parsed)
        if not self.exact or self.column not in ctx.decimals:
            out = out.cast(pl.String)
        return frame.with_columns(out.alias(self.column)).drop(list(parsed.values()))

    def _scales(self, df: pl.DataFrame) -> dict[str, int]:
        """Declared numeric scales, else the largest scale present in this batch."""
        scales: dict[str, int] = {}
        infer = []
        for name, declared in self.declared_scales:
            if declared is not None:
                scales[name] = declared
            else:
                infer.append(name)
        if infer and df.height:
            found = df.select(
                pl.col(c).str.extract(r"\.(\d+)$", 1).str.len_chars().max().fill_null(0).alias(c)
                for c in infer
            ).row(0)
            scales.update({c: int(s or 0) for c, s in zip(infer, found, strict=True)})
        return scales


@dataclass(frozen=True)
class ConstantStep(Step):
    """literal and datetime_now: one value for every row of the batch."""

    value: str | None = None
    now: bool = False

    def expr(self, ctx: BatchContext) -> pl.Expr:
        value = timestamptz_text(ctx.now) if self.now else self.value
        return pl.lit(value, dtype=pl.String)


# -- compiling -----------------------------------------------------------------------------


def _fail(index: int, field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"transformations[{index}].contract.{field_name}: {message}")


def _existing(index: int, field_name: str, name: str, columns: Mapping[str, str]) -> str:
    """The pg_type of a column that must exist at this point."""
    if name not in columns:
        raise _fail(
            index,
            field_name,
            f"column '{name}' does not exist at this point (columns: {', '.join(columns)})",
        )
    return columns[name]


def compile_value_step(index: int, spec: TransformationSpec, columns: Mapping[str, str]) -> Step:
    """Type-check a modify_column_value/create_column rule against `columns` (name -> pg_type)."""
    if spec.contract.get("operation") == "literal" and "value" not in spec.contract:
        # settings dumps contracts with exclude_none, which drops `value: null`
        contract: Any = CreateLiteral.model_validate({**spec.contract, "value": None})
    else:
        contract = spec.parsed_contract()
    if isinstance(contract, ModifyColumnValue):
        pg_type = _existing(index, "column_name", contract.column_name, columns)
        category = type_category(pg_type)
        kind = f"modify_column_value/{contract.operation}"
        if contract.operation in ("uppercase", "lowercase", "trim"):
            if category != "text":
                raise _fail(
                    index,
                    "column_name",
                    f"operation '{contract.operation}' needs a text column; "
                    f"'{contract.column_name}' is {pg_type}",
                )
            return TextCaseStep(
                index,
                kind,
                contract.column_name,
                pg_type,
                (contract.column_name,),
                contract.operation,
            )
        if category not in DATE_CATEGORIES:
            raise _fail(
                index,
                "column_name",
                f"operation 'format_date' needs a date or timestamp column; "
                f"'{contract.column_name}' is {pg_type}",
            )
        fmt = contract.format or ""
        _check_strftime(index, fmt, category)
        return FormatDateStep(
            index, kind, contract.column_name, "text", (contract.column_name,), category, fmt
        )

    new = getattr(contract, "new_column_name", "")
    if new in columns:
        raise _fail(index, "new_column_name", f"column '{new}' already exists at this point")
    kind = f"create_column/{contract.operation}"  # type: ignore[attr-defined]
    if isinstance(contract, CreateConcat):
        for k, name in enumerate(contract.depends_on):
            _existing(index, f"depends_on[{k}]", name, columns)
        return ConcatStep(index, kind, new, "text", tuple(contract.depends_on), contract.separator)
    if isinstance(contract, CreateDateDiffYears):
        name = contract.depends_on[0]
        pg_type = _existing(index, "depends_on[0]", name, columns)
        category = type_category(pg_type)
        if category not in DATE_CATEGORIES:
            raise _fail(
                index,
                "depends_on[0]",
                f"date_diff_years needs a date or timestamp column; '{name}' is {pg_type}",
            )
        return DateDiffYearsStep(index, kind, new, "integer", (name,), category)
    if isinstance(contract, CreateMathExpression):
        categories = {name: type_category(t) for name, t in columns.items()}
        try:
            math = compile_math(contract.expression, categories)
        except ValueError as exc:
            raise _fail(index, "expression", str(exc)) from None
        declared = tuple(
            (c, numeric_scale(columns[c])) for c, cat in math.categories if cat == "numeric"
        )
        return MathStep(index, kind, new, math.output_pg_type, math.columns, math, declared)
    if isinstance(contract, CreateLiteral):
        text, pg_type = render_literal(index, contract.value, contract.type)
        return ConstantStep(index, kind, new, pg_type, (), text)
    if isinstance(contract, CreateDatetimeNow):
        return ConstantStep(index, kind, new, "timestamp with time zone", (), None, True)
    raise _fail(
        index, "operation", f"unsupported operation for {spec.transformation_type}"
    )  # pragma: no cover


def _check_strftime(index: int, fmt: str, category: str) -> None:
    """Polars only reports a bad format when it runs it: run it once on a sample now."""
    sample: Any
    if category == "date":
        sample = pl.lit(dt.date(2000, 1, 2))
    elif category == "timestamp":
        sample = pl.lit(dt.datetime(2000, 1, 2, 3, 4, 5))
    else:
        sample = pl.lit(dt.datetime(2000, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
    try:
        pl.select(sample.dt.strftime(fmt))
    except BaseException as exc:  # polars may also raise a pyo3 PanicException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _fail(
            index, "format", f"{fmt!r} is not a valid strftime format for a {category} column"
        ) from None


def render_literal(index: int, value: Any, literal_type: str) -> tuple[str | None, str]:
    """Validate a literal against its type: (PostgreSQL text or None, output pg_type)."""
    if value is None:
        return None, _LITERAL_PG_TYPES[literal_type]

    def bad(what: str) -> ValidationFailed:
        return _fail(index, "value", f"{value!r} is not a valid {literal_type} literal ({what})")

    if literal_type == "text":
        if isinstance(value, bool):
            return ("true" if value else "false"), "text"
        text = repr(value) if isinstance(value, float) else str(value)
        if "\x00" in text:
            raise bad("text cannot contain NUL characters")
        return text, "text"
    if literal_type == "integer":
        if isinstance(value, bool):
            raise bad("expected a whole number")
        if isinstance(value, float):
            if not value.is_integer():
                raise bad("expected a whole number")
            value = int(value)
        try:
            number = int(str(value).strip())
        except ValueError:
            raise bad("expected a whole number") from None
        if _INT4[0] <= number <= _INT4[1]:
            return str(number), "integer"
        if _INT8[0] <= number <= _INT8[1]:
            return str(number), "bigint"
        raise bad("outside the bigint range")
    if literal_type == "numeric":
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            dec = Decimal(str(value).strip())
        except InvalidOperation:
            raise bad("expected a number") from None
        if not dec.is_finite():
            raise bad("expected a finite number")
        return numeric_text(dec), "numeric"
    if literal_type == "boolean":
        if isinstance(value, bool):
            return ("t" if value else "f"), "boolean"
        text = str(value).strip().lower()
        if text in ("t", "true", "yes", "y", "on", "1"):
            return "t", "boolean"
        if text in ("f", "false", "no", "n", "off", "0"):
            return "f", "boolean"
        raise bad("expected true or false")
    if literal_type == "date":
        if not isinstance(value, str):
            raise bad("expected a date like 2024-01-31")
        try:
            return dt.date.fromisoformat(value.strip()).isoformat(), "date"
        except ValueError:
            raise bad("expected a date like 2024-01-31") from None
    if literal_type == "timestamp":
        if not isinstance(value, str):
            raise bad("expected a timestamp like 2024-01-31 13:45:00")
        try:
            stamp = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise bad("expected a timestamp like 2024-01-31 13:45:00") from None
        if stamp.tzinfo is not None:
            raise bad("timestamp literals have no time zone offset")
        return timestamp_text(stamp), "timestamp without time zone"
    raise bad("unknown literal type")  # pragma: no cover


_LITERAL_PG_TYPES = {
    "text": "text",
    "integer": "integer",
    "numeric": "numeric",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp without time zone",
}
