"""Row filters compiled once into one Polars predicate and one SQL WHERE clause.

Both forms implement the same semantics as PostgreSQL evaluating the filter on
the source row: the column is compared in its own type (the raw text is parsed
by the column's category), NULL never satisfies a comparison (so `not_equals`,
`not_in`, `not_between` and `not_contains` do not keep NULL rows). Filters of
one table that share an `or_group` are combined with OR; the groups and the
filters without a group are combined with AND (`groups` orders them once, and
the Polars predicate, the SQL predicate and the CDC move-in/move-out test all
walk that one order).

numeric values are compared through an order-preserving *string key* built
from their digits (see `numeric_key`), so equality and ordering are exact at
any precision; no float rounding, no Decimal(38) limit.

Type checks happen here too: an operator that does not fit the column's type
or a value that cannot be coerced to it raises `ValidationFailed` with the
field path `filters[<index in settings.filters>].<field>`.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import polars as pl
from psycopg import sql

from trempy_nb.catalog import ColumnInfo, TableInfo
from trempy_nb.errors import ValidationFailed
from trempy_nb.pgtypes import (
    TypeCategory,
    integer_bounds,
    is_blank_padded,
    is_single_precision,
    type_category,
)
from trempy_nb.settings import (
    COMPARISON_FILTERS,
    DATE_FILTERS,
    FILTER_TYPES,
    NULL_FILTERS,
    RANGE_FILTERS,
    SET_FILTERS,
    TEXT_FILTERS,
    FilterSpec,
)

ORDERED: frozenset[str] = frozenset(
    {"integer", "numeric", "float", "date", "timestamp", "timestamptz", "time"}
)
EQUALITY: frozenset[str] = ORDERED | {"text", "boolean", "uuid", "other"}
DATES: frozenset[str] = frozenset({"date", "timestamp", "timestamptz"})
_EQUALITY_FILTERS = ("equals", "not_equals", "in", "not_in")


def allowed_filter_types(category: str) -> tuple[str, ...]:
    """The filter types that fit a column of this category (used in messages and widgets)."""
    out: list[str] = []
    for ft in FILTER_TYPES:
        if ft in NULL_FILTERS:
            out.append(ft)
        elif ft in _EQUALITY_FILTERS and category in EQUALITY:
            out.append(ft)
        elif (ft in COMPARISON_FILTERS or ft in RANGE_FILTERS) and category in ORDERED:
            out.append(ft)
        elif ft in TEXT_FILTERS and category == "text":
            out.append(ft)
        elif ft in DATE_FILTERS and category in DATES:
            out.append(ft)
    return tuple(out)


# -- parsing raw text by category ---------------------------------------------------

_TS_FORMAT = "%Y-%m-%d %H:%M:%S%.f"
_TSTZ_FORMAT = "%Y-%m-%d %H:%M:%S%.f%#z"
_DIGITS = [str(d) for d in range(10)]
_COMPLEMENT = [str(9 - d) for d in range(10)]


def _with_infinity(raw: pl.Expr, parsed: pl.Expr, low: Any, high: Any) -> pl.Expr:
    """PostgreSQL's 'infinity'/'-infinity' dates sort after/before every other date."""
    return (
        pl.when(raw == "infinity")
        .then(pl.lit(high))
        .when(raw == "-infinity")
        .then(pl.lit(low))
        .otherwise(parsed)
    )


def parse_date(raw: pl.Expr) -> pl.Expr:
    """PG date text -> Date (BC dates become null)."""
    parsed = raw.str.to_date("%Y-%m-%d", strict=False)
    return _with_infinity(raw, parsed, dt.date.min, dt.date.max)


def parse_timestamp(raw: pl.Expr) -> pl.Expr:
    """PG timestamp text -> Datetime(us)."""
    parsed = raw.str.to_datetime(_TS_FORMAT, time_unit="us", strict=False)
    return _with_infinity(raw, parsed, dt.datetime.min, dt.datetime.max)


def parse_timestamptz(raw: pl.Expr) -> pl.Expr:
    """PG timestamptz text (any offset, sessions use +00) -> Datetime(us, UTC)."""
    parsed = raw.str.to_datetime(_TSTZ_FORMAT, time_unit="us", time_zone="UTC", strict=False)
    utc = dt.timezone.utc
    low = dt.datetime.min.replace(tzinfo=utc)
    high = dt.datetime.max.replace(tzinfo=utc)
    return _with_infinity(raw, parsed, low, high)


def parse_time(raw: pl.Expr) -> pl.Expr:
    return raw.str.to_time("%H:%M:%S%.f", strict=False)


def numeric_key(raw: pl.Expr) -> pl.Expr:
    """An order-preserving String key of numeric text: compare keys = compare numbers.

    Positive: 'P' + zero-padded length of the integer part + integer digits +
    fraction digits (leading/trailing zeros stripped). Negative: 'N' + the
    nines-complement of all that + '~' (so a longer fraction sorts lower).
    Zero is 'P000000'; -Infinity 'A' < negatives < positives < Infinity 'Y' <
    NaN 'Z', which is PostgreSQL's numeric order (NaN is above everything and
    equal to itself).
    """
    body = raw.str.strip_prefix("-")
    int_part = body.str.extract(r"^0*(\d*)", 1)
    frac = body.str.extract(r"\.(\d*)$", 1).fill_null("").str.strip_chars_end("0")
    length = int_part.str.len_bytes()
    pos = pl.concat_str(
        [pl.lit("P"), length.cast(pl.String).str.zfill(6), int_part, frac], ignore_nulls=False
    )
    neg = pl.concat_str(
        [
            pl.lit("N"),
            (999999 - length).cast(pl.String).str.zfill(6),
            int_part.str.replace_many(_DIGITS, _COMPLEMENT),
            frac.str.replace_many(_DIGITS, _COMPLEMENT),
            pl.lit("~"),
        ]
    )
    is_zero = (int_part == "") & (frac == "")
    return (
        pl.when(raw == "NaN")
        .then(pl.lit("Z"))
        .when(raw == "Infinity")
        .then(pl.lit("Y"))
        .when(raw == "-Infinity")
        .then(pl.lit("A"))
        .when(is_zero)
        .then(pl.lit("P000000"))
        .when(raw.str.starts_with("-"))
        .then(neg)
        .otherwise(pos)
    )


def numeric_text(value: Decimal) -> str:
    """A Decimal as plain numeric text (no exponent), as PostgreSQL prints it."""
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    text = format(value, "f")
    return "0" if text in ("-0", "0") else text


def typed_column(raw: pl.Expr, column: ColumnInfo, category: str) -> pl.Expr:
    """The comparable form of a raw-text column (see module docstring)."""
    if category == "integer":
        return raw.cast(pl.Int64, strict=False)
    if category == "numeric":
        return numeric_key(raw)
    if category == "float":
        dtype = pl.Float32 if is_single_precision(column.pg_type) else pl.Float64
        return raw.cast(dtype, strict=False)
    if category == "date":
        return parse_date(raw)
    if category == "timestamp":
        return parse_timestamp(raw)
    if category == "timestamptz":
        return parse_timestamptz(raw)
    if category == "time":
        return parse_time(raw)
    if category == "text" and is_blank_padded(column.pg_type):
        return raw.str.strip_chars_end(" ")
    return raw


# -- coercing filter values ------------------------------------------------------------

_TRUE = {"t", "true", "yes", "y", "on", "1"}
_FALSE = {"f", "false", "no", "n", "off", "0"}


class _BadValue(ValueError):
    """A value that does not fit; the message says what would."""


def coerce_value(value: Any, column: ColumnInfo, category: str) -> tuple[Any, str]:
    """(Python value for the Polars literal, canonical text for the SQL parameter)."""
    if category == "integer":
        if isinstance(value, bool):
            raise _BadValue("needs an integer, not a boolean")
        if isinstance(value, float):
            if not value.is_integer():
                raise _BadValue("needs a whole number")
            value = int(value)
        try:
            number = int(str(value).strip())
        except ValueError:
            raise _BadValue("needs an integer") from None
        lo, hi = integer_bounds(column.pg_type)
        if not lo <= number <= hi:
            raise _BadValue(f"is out of range for {column.pg_type} ({lo} to {hi})")
        return number, str(number)
    if category == "numeric":
        if isinstance(value, bool):
            raise _BadValue("needs a number, not a boolean")
        try:
            dec = Decimal(str(value).strip())
        except InvalidOperation:
            raise _BadValue("needs a number") from None
        if not dec.is_finite() and not dec.is_nan():
            text = "Infinity" if dec > 0 else "-Infinity"
        else:
            text = numeric_text(dec)
        return text, text
    if category == "float":
        if isinstance(value, bool):
            raise _BadValue("needs a number, not a boolean")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise _BadValue("needs a number") from None
        if math.isnan(number) or math.isinf(number):
            raise _BadValue("needs a finite number")
        return number, repr(number)
    if category == "date":
        day = _as_date(value)
        return day, day.isoformat()
    if category in ("timestamp", "timestamptz"):
        stamp = _as_datetime(value, aware=category == "timestamptz")
        return stamp, stamp.isoformat(sep=" ")
    if category == "time":
        try:
            clock = dt.time.fromisoformat(str(value).strip())
        except ValueError:
            raise _BadValue("needs a time like 13:45:00") from None
        if clock.tzinfo is not None:
            raise _BadValue("needs a time without a time zone offset")
        return clock, clock.isoformat()
    if category == "boolean":
        text = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
        if text in _TRUE:
            return "t", "t"
        if text in _FALSE:
            return "f", "f"
        raise _BadValue("needs a boolean (true/false)")
    if category == "uuid":
        try:
            text = str(uuid.UUID(str(value).strip()))
        except ValueError:
            raise _BadValue("needs a UUID") from None
        return text, text
    # text and other: compared as text
    if isinstance(value, bool):
        raise _BadValue("needs a text value, not a boolean")
    text = (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )
    if "\x00" in text:
        raise _BadValue("cannot contain NUL characters")
    if category == "text" and is_blank_padded(column.pg_type):
        text = text.rstrip(" ")
    return text, text


def _as_date(value: Any) -> dt.date:
    if isinstance(value, bool) or not isinstance(value, str):
        raise _BadValue("needs a date like 2024-01-31")
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise _BadValue("needs a date like 2024-01-31") from None


def _as_datetime(value: Any, *, aware: bool) -> dt.datetime:
    if isinstance(value, bool) or not isinstance(value, str):
        raise _BadValue("needs a timestamp like 2024-01-31 13:45:00")
    try:
        stamp = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise _BadValue("needs a timestamp like 2024-01-31 13:45:00") from None
    if aware:
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.timezone.utc)  # sessions run with TimeZone=UTC
        return stamp.astimezone(dt.timezone.utc)
    if stamp.tzinfo is not None:
        raise _BadValue(
            "has a time zone offset but the column is timestamp without time zone; drop the offset"
        )
    return stamp


# -- compiling -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledFilter:
    """One filter, type-checked: its Polars predicate (never null) and its SQL form.

    The SQL form is a template (`{}` for the column, then one `{}` per value) so that it can
    be rendered with placeholders and bound parameters (`sql`, `params`) or with the values
    inline as literals (`inline_sql`, for a predicate reused inside a larger query).
    """

    index: int
    spec: FilterSpec
    column: ColumnInfo
    category: TypeCategory
    expr: pl.Expr
    template: str
    column_sql: sql.Composable
    params: tuple[Any, ...]

    @property
    def group(self) -> str | None:
        return self.spec.or_group

    @property
    def sql(self) -> sql.Composed:
        """`(column op %s ...)`: the values go as parameters (`params`, in this order)."""
        return self._render([sql.Placeholder() for _ in self.params])

    def inline_sql(self) -> sql.Composed:
        """`(column op 'value' ...)`: the canonical text values as quoted literals of unknown
        type, which PostgreSQL resolves to the column's type exactly as it does the parameters."""
        return self._render([sql.Literal(p) for p in self.params])

    def _render(self, values: Sequence[sql.Composable]) -> sql.Composed:
        return sql.SQL("(" + self.template + ")").format(self.column_sql, *values)


FilterInput = FilterSpec | tuple[int, FilterSpec]


def _indexed(filters: Sequence[FilterInput]) -> list[tuple[int, FilterSpec]]:
    out: list[tuple[int, FilterSpec]] = []
    for pos, item in enumerate(filters):
        out.append(item if isinstance(item, tuple) else (pos, item))
    return out


def compile_filter(index: int, spec: FilterSpec, table: TableInfo) -> CompiledFilter:
    """Type-check one filter against the source table and build both predicates."""
    path = f"filters[{index}]"
    column = table.column(spec.column_name)
    if column is None:
        raise ValidationFailed(
            f"{path}.column_name: column '{spec.column_name}' does not exist in "
            f"{table.qualified} (columns: {', '.join(table.column_names)})"
        )
    category = type_category(column.pg_type)
    ft = spec.filter_type
    allowed = allowed_filter_types(category)
    if ft not in allowed:
        raise ValidationFailed(
            f"{path}.filter_type: '{ft}' does not fit column '{column.name}' of type "
            f"{column.pg_type}; valid filter types for it: {', '.join(allowed)}"
        )

    def coerce(field: str, value: Any, cat: str = category) -> tuple[Any, str]:
        try:
            return coerce_value(value, column, cat)
        except _BadValue as exc:
            raise ValidationFailed(
                f"{path}.{field}: {value!r} {exc} (column '{column.name}' is {column.pg_type})"
            ) from None

    raw = pl.col(column.name)
    ident = sql.Identifier(column.name)
    col_sql: sql.Composable = ident
    if category in ("text", "other"):
        col_sql = sql.SQL("{}::text").format(ident)
    typed = typed_column(raw, column, category)
    lit = _literal_maker(category, column)

    expr: pl.Expr
    params: tuple[Any, ...] = ()
    if ft == "is_null":
        expr, template, col_sql = raw.is_null(), "{} IS NULL", ident
    elif ft == "is_not_null":
        expr, template, col_sql = raw.is_not_null(), "{} IS NOT NULL", ident
    elif ft in COMPARISON_FILTERS:
        value, param = coerce("value", spec.value)
        op = _OPS[ft]
        expr = _compare(typed, op, lit(value))
        template = "{} " + op + " {}"
        params = (param,)
    elif ft in RANGE_FILTERS:
        lo, lo_param = coerce("lower", spec.lower)
        hi, hi_param = coerce("upper", spec.upper)
        inside = (typed >= lit(lo)) & (typed <= lit(hi))
        if ft == "between":
            expr = inside
            template = "{} BETWEEN {} AND {}"
        else:
            expr = (typed < lit(lo)) | (typed > lit(hi))
            template = "{} NOT BETWEEN {} AND {}"
        params = (lo_param, hi_param)
    elif ft in SET_FILTERS:
        coerced = [coerce(f"values[{k}]", v) for k, v in enumerate(spec.values or [])]
        member = pl.any_horizontal([typed == lit(v) for v, _ in coerced])
        slots = ", ".join("{}" for _ in coerced)
        if ft == "in":
            expr = member
            template = "{} IN (" + slots + ")"
        else:
            expr = typed.is_not_null() & ~member
            template = "{} NOT IN (" + slots + ")"
        params = tuple(p for _, p in coerced)
    elif ft in TEXT_FILTERS:
        text, _ = coerce("value", spec.value)
        pattern = _like_escape(text)
        if ft == "starts_with":
            expr, like = typed.str.starts_with(text), pattern + "%"
        elif ft == "ends_with":
            expr, like = typed.str.ends_with(text), "%" + pattern
        else:
            expr, like = typed.str.contains(text, literal=True), "%" + pattern + "%"
        if ft == "not_contains":
            expr = ~expr
            template = "{} NOT LIKE {} ESCAPE '\\'"
        else:
            template = "{} LIKE {} ESCAPE '\\'"
        params = (like,)
    elif ft in DATE_FILTERS:
        day_expr = typed if category == "date" else typed.dt.date()
        if category == "date":
            col_sql = ident
        elif category == "timestamp":
            col_sql = sql.SQL("{}::date").format(ident)
        else:
            col_sql = sql.SQL("({} AT TIME ZONE 'UTC')::date").format(ident)
        if ft == "date_between":
            lo, lo_param = coerce("lower", spec.lower, "date")
            hi, hi_param = coerce("upper", spec.upper, "date")
            expr = (day_expr >= pl.lit(lo)) & (day_expr <= pl.lit(hi))
            template = "{} BETWEEN {}::date AND {}::date"
            params = (lo_param, hi_param)
        else:
            day, param = coerce("value", spec.value, "date")
            op = {"date_equals": "=", "date_greater_than": ">", "date_less_than": "<"}[ft]
            expr = _compare(day_expr, op, pl.lit(day))
            template = "{} " + op + " {}::date"
            params = (param,)
    else:  # pragma: no cover - FilterSpec only admits the types above
        raise ValidationFailed(f"{path}.filter_type: unknown filter type '{ft}'")
    return CompiledFilter(
        index=index,
        spec=spec,
        column=column,
        category=category,
        expr=expr.fill_null(False),
        template=template,
        column_sql=col_sql,
        params=params,
    )


_OPS = {
    "equals": "=",
    "not_equals": "<>",
    "greater_than": ">",
    "greater_than_or_equal": ">=",
    "less_than": "<",
    "less_than_or_equal": "<=",
}


def _compare(left: pl.Expr, op: str, right: pl.Expr) -> pl.Expr:
    return {
        "=": left == right,
        "<>": left != right,
        ">": left > right,
        ">=": left >= right,
        "<": left < right,
        "<=": left <= right,
    }[op]


def _literal_maker(category: str, column: ColumnInfo) -> Callable[[Any], pl.Expr]:
    """Literal builder matching `typed_column`'s output type for the category."""
    if category == "float":
        dtype = pl.Float32 if is_single_precision(column.pg_type) else pl.Float64
        return lambda v: pl.lit(v, dtype=dtype)
    if category == "numeric":
        return lambda v: numeric_key(pl.lit(v, dtype=pl.String))
    if category == "integer":
        return lambda v: pl.lit(v, dtype=pl.Int64)
    if category == "timestamp":
        return lambda v: pl.lit(v, dtype=pl.Datetime("us"))
    if category == "timestamptz":
        return lambda v: pl.lit(v, dtype=pl.Datetime("us", "UTC"))
    if category in ("text", "other", "uuid", "boolean"):
        return lambda v: pl.lit(v, dtype=pl.String)
    return pl.lit


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_filters(filters: Sequence[FilterInput], table: TableInfo) -> list[CompiledFilter]:
    """Type-check every filter of a table (items: specs, or (index in settings, spec))."""
    return [compile_filter(i, f, table) for i, f in _indexed(filters)]


def groups(compiled: Sequence[CompiledFilter]) -> list[tuple[CompiledFilter, ...]]:
    """The terms of the AND, in document order: one per filter without an or_group, one per
    or_group (its filters, combined with OR) at the place of the group's first filter."""
    terms: list[list[CompiledFilter]] = []
    by_name: dict[str, list[CompiledFilter]] = {}
    for c in compiled:
        if c.group is None:
            terms.append([c])
        elif c.group in by_name:
            by_name[c.group].append(c)
        else:
            by_name[c.group] = [c]
            terms.append(by_name[c.group])
    return [tuple(t) for t in terms]


def combine(
    compiled: Sequence[CompiledFilter], term: Callable[[CompiledFilter], pl.Expr] | None = None
) -> pl.Expr:
    """The grouped predicate: AND of the groups, OR inside one (True when there are none).

    `term` gives each filter's expression (default: its own `expr`); the change applier
    widens it to let a filter on an unchanged TOAST column pass."""
    if not compiled:
        return pl.lit(True)
    of = term or (lambda c: c.expr)
    ands = [of(g[0]) if len(g) == 1 else pl.any_horizontal([of(c) for c in g]) for g in groups(compiled)]
    return ands[0] if len(ands) == 1 else pl.all_horizontal(ands)


def filter_expr(filters: Sequence[FilterInput], table: TableInfo) -> pl.Expr:
    """All filters of a table as ONE Polars boolean expression over raw-text columns."""
    return combine(compile_filters(filters, table))


def _grouped_sql(
    compiled: Sequence[CompiledFilter], render: Callable[[CompiledFilter], sql.Composed]
) -> tuple[sql.Composed, list[CompiledFilter]]:
    """The grouped predicate as SQL, and the filters in the order they appear in it."""
    terms = groups(compiled)
    parts: list[sql.Composable] = []
    for g in terms:
        if len(g) == 1:
            parts.append(render(g[0]))
        else:
            parts.append(sql.SQL("({})").format(sql.SQL(" OR ").join(render(c) for c in g)))
    return sql.Composed([sql.SQL(" AND ").join(parts)]), [c for g in terms for c in g]


def combine_sql(compiled: Sequence[CompiledFilter]) -> tuple[sql.Composable, list[Any]]:
    """The grouped predicate with placeholders, and its parameters in placeholder order."""
    if not compiled:
        return sql.SQL("TRUE"), []
    query, order = _grouped_sql(compiled, lambda c: c.sql)
    return query, [p for c in order for p in c.params]


def predicate_sql(compiled: Sequence[CompiledFilter]) -> sql.Composed:
    """The grouped predicate as one self-contained SQL boolean expression, values inline.

    Pure (no connection): for a query that embeds the filter among other clauses, such as
    a diff of source and target, where threading parameters through is awkward. Values
    are the same canonical text as `combine_sql`'s parameters, written as quoted literals.
    Execute the query without parameters: a `%` inside a value (LIKE patterns) is data, and
    psycopg would read it as a placeholder if parameters were passed too.
    """
    if not compiled:
        return sql.Composed([sql.SQL("TRUE")])
    return _grouped_sql(compiled, lambda c: c.inline_sql())[0]


def filters_to_sql(
    filters: Sequence[FilterInput], table: TableInfo
) -> tuple[sql.Composable, list[Any]]:
    """The same predicate as a SQL boolean expression (for WHERE) with its bound parameters.

    Parameters are canonical text; PostgreSQL resolves them to the column's
    type. Assumes a session with TimeZone=UTC (trempy_nb.db.connect) for
    timestamptz values given without an offset.
    """
    return combine_sql(compile_filters(filters, table))
