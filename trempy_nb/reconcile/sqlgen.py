"""SQL of a diff, built without I/O: canonical row text, bucket hashes, the staged comparison, repair.

Canonical text: every compared value is rendered as the text of the *target column's type*, by the
server that holds it, in sessions with the same settings (db.SESSION_OPTIONS: UTC, ISO dates,
shortest exact floats). The target renders `t.col::text`; the source evaluates the plan's filter and
transformations in SQL and renders `(expr)::<target type>::text`, so both sides print one value the
same way even when a transformation changed its type. A row's text is `ROW(c1, c2, ...)::text`
(quotes and NULLs unambiguous) and its hash the first 60 bits of its md5. Rows fall into buckets by
their key alone (the key's value for one integer key, else bits of the md5 of the key's text), and a
bucket's fingerprint is the row count and the sum of its row hashes: order-free, so each side is one
scan and one hash aggregate, no sort.

A bucket whose fingerprints differ is narrowed exactly: its source rows go through the plan in
Python (the code the load runs), are copied into a temporary table on the target typed like the
target, and one join there names each differing key and column. Transformations without an exact
SQL form (format_date, date_diff_years, math_expression) skip the hashes: the whole table is
compared that way, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psycopg import sql

from trempy_nb.errors import TerminalError
from trempy_nb.pgtypes import is_blank_padded, type_category
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.pipeline.transformations import ConcatStep, ConstantStep, Step, TextCaseStep
from trempy_nb.settings import TaskSettings
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.sql import create_staging_sql, staging_ident

INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
#: what `trim` strips in SQL (Polars strips Unicode whitespace: the narrowing is exact either way)
_WHITESPACE = " \t\n\r\f\v"

STAGE = staging_ident("trempy_diff_src")
KEYS = staging_ident("trempy_diff_keys")


@dataclass(frozen=True)
class DiffShape:
    """What one table's diff compares.

    `types`: target column -> its type on the target (format_type); `compared`: the data columns
    compared (a datetime_now column, and what is computed from it, is not: it holds the time the
    row was written); `exprs`: target column -> SQL over the source columns, or None when some
    step has no exact SQL form (then the table is compared through the plan in Python only).
    """

    plan: TablePlan
    spec: TargetSpec
    types: Mapping[str, str]
    compared: tuple[str, ...]
    exprs: Mapping[str, sql.Composable] | None
    source_has_type: Mapping[str, bool]  # target type name -> exists on the source
    fast_hash: bool = False  # both servers give hashtextextended the same values (PROBE_SQL)
    #: the target is another database (MariaDB): both sides hash `canonical_text` (see below)
    canonical: bool = False

    @property
    def key(self) -> tuple[str, ...]:
        return self.spec.key

    @property
    def hashable(self) -> bool:
        return self.exprs is not None


def check_target_table(settings: TaskSettings, plan: TablePlan, spec: TargetSpec,
                       types: Mapping[str, str] | None) -> None:
    """A clear error when the target cannot be compared by key (no key, no table, columns missing)."""
    where = f"{spec.schema}.{spec.table}"
    if not spec.key:
        raise TerminalError(
            f"{plan.source.qualified} -> {where} has no key: a diff compares rows by key. Give the source"
            " table a primary key, or name one with an add_primary_key transformation"
        )
    if types is None:
        raise TerminalError(f"target table {where} does not exist (has task {settings.name} run yet?)")
    needed = spec.data_columns + ([spec.current_col] if spec.scd2 else [])
    missing = [c for c in needed if c not in types]
    if missing:
        raise TerminalError(f"target table {where} lacks column(s) {', '.join(missing)} of the task's plan")


def volatile_columns(plan: TablePlan) -> frozenset[str]:
    """Columns that hold the time a row was processed (datetime_now) or are computed from one."""
    found: set[str] = set()
    for step in plan.steps:
        if isinstance(step, ConstantStep) and step.now:
            found.add(step.column)
        elif any(i in found for i in step.inputs):
            found.add(step.column)
        else:
            found.discard(step.column)
    return frozenset(found)


def output_text(expr: sql.Composable, pg_type: str) -> sql.Composable:
    """A value as its type's output function prints it (what the plan reads as raw text), NULL
    kept. `::text` is the output function for most types (numbers, dates, text, arrays) and the
    cheaper; not for booleans (true/t), character(n) (padding) and some others (inet's mask)."""
    if type_category(pg_type) not in ("boolean", "other") and not is_blank_padded(pg_type):
        return sql.SQL("({})::text").format(expr)
    return sql.SQL("(CASE WHEN ({0}) IS NULL THEN NULL ELSE format('%s', {0}) END)").format(expr)


def step_sql(step: Step, exprs: Mapping[str, sql.Composable], types: Mapping[str, str]) -> sql.Composable | None:
    """The SQL form of one value step over the current expressions (of the current `types`), or
    None when it has no exact one."""
    if isinstance(step, TextCaseStep):
        col = exprs[step.column]
        if step.operation == "uppercase":
            return sql.SQL("upper({})").format(col)
        if step.operation == "lowercase":
            return sql.SQL("lower({})").format(col)
        return sql.SQL("btrim({}, {})").format(col, sql.Literal(_WHITESPACE))
    if isinstance(step, ConcatStep):
        parts = [output_text(exprs[c], types[c]) for c in step.inputs]
        return sql.SQL("concat_ws({}, {})").format(sql.Literal(step.separator), sql.SQL(", ").join(parts))
    if isinstance(step, ConstantStep):
        if step.now or step.value is None:
            return sql.SQL("NULL")
        return sql.SQL("{}::{}").format(sql.Literal(step.value), sql.SQL(step.pg_type))
    return None


def source_exprs(plan: TablePlan) -> dict[str, sql.Composable] | None:
    """Target column -> SQL over the source columns, through renames and steps; None when a step
    has no exact SQL form."""
    exprs: dict[str, sql.Composable] = {plan.target_name(c): sql.Identifier(c) for c in plan.source_columns}
    types = {plan.target_name(c.name): c.pg_type for c in plan.source.columns}
    for step in plan.steps:
        expr = step_sql(step, exprs, types)
        if expr is None:
            return None
        exprs[step.column] = sql.SQL("({})").format(expr)
        types[step.column] = step.pg_type
    return exprs


def _source_type(shape: DiffShape, column: str) -> str | None:
    """The source type of a target column that is a source column carried unchanged, else None."""
    plan = shape.plan
    if column in plan.writes:
        return None
    origin = plan.source_column(column)
    if origin is None:
        return None
    return next((c.pg_type for c in plan.source.columns if c.name == origin), None)


def source_value(shape: DiffShape, column: str) -> sql.Composable:
    """A target column's value computed on the source, in the target column's type where the
    source knows that type (an unchanged column of the same type needs no cast)."""
    if shape.exprs is not None:
        expr = shape.exprs[column]
    else:  # no SQL form for every column: a column carried unchanged still has one (keys)
        origin = shape.plan.source_column(column)
        if origin is None or column in shape.plan.writes:
            raise ValueError(f"column {column} is computed by a transformation with no SQL form")
        expr = sql.Identifier(origin)
    target_type = shape.types[column]
    if _source_type(shape, column) == target_type or not shape.source_has_type.get(target_type, False):
        return expr
    return sql.SQL("({})::{}").format(expr, sql.SQL(target_type))


def _row_text(values: Sequence[sql.Composable]) -> sql.Composable:
    """The values' record text: each rendered by its type's output function, quoted unambiguously."""
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(values))


#: hashes of a text. `hashtextextended` (PostgreSQL 11+) is about three times faster than md5, but
#: its value is only the same on two servers of the same byte order: `PROBE_SQL` checks that both
#: give one value before it is used, else md5 serves.
FAST_HASH = "hashtextextended"
PROBE_SQL = sql.SQL("SELECT hashtextextended('trempy_nb diff probe', 0)::text")


def hash_expr(text: sql.Composable, fast: bool, bits: int = 63) -> sql.Composable:
    """A non-negative integer hash of a text (collation "C": bytes, whatever the database's)."""
    if fast:
        mask = sql.Literal((1 << bits) - 1)
        return sql.SQL("(hashtextextended(({}) COLLATE \"C\", 0) & {})").format(text, mask)
    digits = sql.Literal(bits // 4)
    return sql.SQL("('x' || substr(md5({}), 1, {}))::bit({})::bigint").format(text, digits, sql.Literal(bits // 4 * 4))


def bucket_expr(shape: DiffShape, keys: Sequence[sql.Composable], buckets: int) -> sql.Composable:
    """The bucket of a row from its key values (already in the target's types)."""
    n = sql.Literal(int(buckets))
    if len(keys) == 1 and shape.types[shape.key[0]] in INTEGER_TYPES:
        return sql.SQL("((({})::bigint % {}) + {}) % {}").format(keys[0], n, n, n)
    if shape.canonical:
        text = canonical_row([canonical_text(k, shape.types[c]) for k, c in zip(keys, shape.key, strict=True)])
        return sql.SQL("{} % {}").format(hash_expr(text, False, 31), n)
    return sql.SQL("{} % {}").format(hash_expr(_row_text(keys), shape.fast_hash, 31), n)


# -- the canonical text of a row, for a target of another database (MariaDB) ----------------------
#
# Both servers render each value as one agreed text (integers and text as printed; numeric with its
# trailing fractional zeros cut; booleans 1/0; timestamps 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC; time
# likewise; bytea as lowercase hex; arrays as compact JSON; JSON as the text the writer stored) and
# a row as `len:value` per column (NULL: `N`) joined by commas: unambiguous, the same bytes on both
# sides, so md5 gives one hash. `writer/mariadb`'s side is `reconcile/mariadb_sql.canonical_text`.
# A value whose texts differ only in form (a float's exponent) makes its bucket a suspect; the
# narrowing then compares the values themselves, so no difference is ever reported in error.


def canonical_text(expr: sql.Composable, pg_type: str) -> sql.Composable:
    """A value of PostgreSQL type `pg_type` as its canonical text (NULL kept)."""
    cat = type_category(pg_type)
    if cat == "boolean":
        return sql.SQL("(CASE WHEN {0} THEN '1' WHEN NOT {0} THEN '0' END)").format(expr)
    if cat == "numeric":
        return sql.SQL("(CASE WHEN ({0})::text LIKE '%.%' THEN rtrim(rtrim(({0})::text, '0'), '.')"
                       " ELSE ({0})::text END)").format(expr)
    if cat == "timestamptz":
        return sql.SQL("to_char(({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')").format(expr)
    if cat == "timestamp":
        return sql.SQL("to_char({}, 'YYYY-MM-DD HH24:MI:SS.US')").format(expr)
    if cat == "date":
        return sql.SQL("to_char({}, 'YYYY-MM-DD')").format(expr)
    if cat == "time" and "with time zone" not in pg_type and not pg_type.startswith("timetz"):
        return sql.SQL("to_char(({})::interval, 'HH24:MI:SS.US')").format(expr)
    if cat == "bytea":
        return sql.SQL("encode({}, 'hex')").format(expr)
    if cat == "array":
        return sql.SQL("(array_to_json({}))::text").format(expr)
    return output_text(expr, pg_type)


def canonical_row(texts: Sequence[sql.Composable]) -> sql.Composable:
    """Canonical value texts joined unambiguously: `len:value` each (NULL: `N`), comma-separated."""
    if not texts:
        return sql.SQL("''")
    parts = [sql.SQL("COALESCE(length({0})::text || ':' || {0}, 'N')").format(t) for t in texts]
    return sql.SQL("concat_ws(',', {})").format(sql.SQL(", ").join(parts))


def _fingerprint(bucket: sql.Composable, text: sql.Composable, table: sql.Composable,
                 where: sql.Composable | None, fast: bool) -> sql.Composed:
    hashed = hash_expr(text, fast, 60)
    q = sql.SQL("SELECT {} AS b, {} AS h FROM {}").format(bucket, hashed, table)
    if where is not None:
        q = sql.SQL("{} WHERE {}").format(q, where)
    return sql.SQL("SELECT b, count(*), sum(h) FROM ({}) AS x GROUP BY b").format(q)


def source_table(shape: DiffShape) -> sql.Identifier:
    return sql.Identifier(shape.plan.source.schema, shape.plan.source.name)


def source_filter(shape: DiffShape) -> sql.Composable | None:
    return shape.plan.filter_predicate_sql()


def target_current(shape: DiffShape, alias: str = "t") -> sql.Composable | None:
    """SCD2: only the current versions are what the target holds now."""
    if not shape.spec.scd2:
        return None
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(shape.spec.current_col))


def _and(*parts: sql.Composable | None) -> sql.Composable | None:
    present = [sql.SQL("({})").format(p) for p in parts if p is not None]
    return sql.SQL(" AND ").join(present) if present else None


def source_buckets_sql(shape: DiffShape, buckets: int) -> sql.Composed:
    """Per bucket of the source rows that pass the filter: bucket, row count, sum of row hashes."""
    keys = [source_value(shape, k) for k in shape.key]
    row = [source_value(shape, c) for c in shape.compared]
    if shape.canonical:
        text = canonical_row([canonical_text(v, shape.types[c]) for v, c in zip(row, shape.compared, strict=True)])
    else:
        text = _row_text(row)
    return _fingerprint(bucket_expr(shape, keys, buckets), text, source_table(shape), source_filter(shape),
                        shape.fast_hash and not shape.canonical)


def target_buckets_sql(shape: DiffShape, buckets: int) -> sql.Composed:
    """The same fingerprints of the target rows (the current versions of an SCD2 target)."""
    keys = [sql.SQL("t.{}").format(sql.Identifier(k)) for k in shape.key]
    row = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in shape.compared]
    table = sql.SQL("{} AS t").format(shape.spec.ident)
    return _fingerprint(bucket_expr(shape, keys, buckets), _row_text(row), table, target_current(shape),
                        shape.fast_hash)


# -- selections of rows: by buckets, or by keys -------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which rows a narrowing step reads: the rows of some buckets, or of some keys (key texts,
    one tuple per key, each value the text of the target column's type); None = every row."""

    buckets: tuple[int, ...] | None = None
    bucket_count: int = 0
    keys: tuple[tuple[str, ...], ...] | None = None


def _key_in(shape: DiffShape, values: Sequence[sql.Composable], keys: Sequence[tuple[str, ...]]) -> sql.Composable:
    """(k1, k2) IN (SELECT u.c0::type, ... FROM unnest(text arrays)): one key set, any key width."""
    names = [sql.Identifier(f"c{i}") for i in range(len(shape.key))]
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::text[]").format(sql.Literal([k[i] for k in keys])) for i in range(len(shape.key))
    )
    casts = sql.SQL(", ").join(
        sql.SQL("u.{}::{}").format(n, sql.SQL(shape.types[k])) for n, k in zip(names, shape.key, strict=True)
    )
    return sql.SQL("({}) IN (SELECT {} FROM unnest({}) AS u({}))").format(
        sql.SQL(", ").join(values), casts, arrays, sql.SQL(", ").join(names)
    )


def _selected(shape: DiffShape, sel: Selection, values: Sequence[sql.Composable]) -> sql.Composable | None:
    if sel.keys is not None:
        return _key_in(shape, values, sel.keys) if sel.keys else sql.SQL("false")
    if sel.buckets is not None:
        return sql.SQL("{} = ANY({})").format(
            bucket_expr(shape, values, sel.bucket_count), sql.Literal(list(sel.buckets))
        )
    return None


def keys_selectable(shape: DiffShape) -> bool:
    """Whether the source rows of given keys can be selected in SQL (every key column has a SQL form)."""
    return shape.exprs is not None or not any(
        k in shape.plan.writes or shape.plan.source_column(k) is None for k in shape.key
    )


def _source_key_values(shape: DiffShape) -> list[sql.Composable]:
    return [source_value(shape, k) for k in shape.key]


def source_rows_sql(shape: DiffShape, sel: Selection) -> sql.Composed:
    """The source rows (every source column, as the plan reads them) of a selection that pass the filter."""
    where = _and(source_filter(shape), _selected(shape, sel, _source_key_values(shape)) if
                 (sel.keys is not None or sel.buckets is not None) else None)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in shape.plan.source_columns)
    q = sql.SQL("SELECT {} FROM {}").format(cols, source_table(shape))
    return sql.SQL("{} WHERE {}").format(q, where) if where is not None else q


def create_stage_sql(shape: DiffShape, stage: sql.Identifier = STAGE) -> sql.Composed:
    """A temporary table typed like the target's data columns, for the source rows through the plan."""
    return create_staging_sql(stage, shape.spec.ident, shape.spec.data_columns, {})


def compare_sql(shape: DiffShape, sel: Selection, stage: sql.Identifier = STAGE) -> sql.Composed:
    """One row per differing key: kind, one flag per compared column, the key typed and as text.

    Staged (should hold) FULL JOIN target (holds, current versions) on the key, within the selection;
    values are compared as the text of the target's types, like the hashes.
    """
    t_keys = [sql.SQL("t.{}").format(sql.Identifier(k)) for k in shape.key]
    where = _and(target_current(shape), _selected(shape, sel, t_keys))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in shape.spec.data_columns)
    held = sql.SQL("SELECT {} FROM {} AS t").format(cols, shape.spec.ident)
    if where is not None:
        held = sql.SQL("{} WHERE {}").format(held, where)
    k0 = sql.Identifier(shape.key[0])
    on = sql.SQL(" AND ").join(sql.SQL("s.{0} = t.{0}").format(sql.Identifier(k)) for k in shape.key)
    flags = sql.SQL(", ").join(
        sql.SQL("(s.{0})::text IS DISTINCT FROM (t.{0})::text").format(sql.Identifier(c)) for c in shape.compared
    )
    s_row = _row_text([sql.SQL("s.{}").format(sql.Identifier(c)) for c in shape.compared])
    t_row = _row_text([sql.SQL("t.{}").format(sql.Identifier(c)) for c in shape.compared])
    typed = sql.SQL(", ").join(sql.SQL("COALESCE(s.{0}, t.{0})").format(sql.Identifier(k)) for k in shape.key)
    texts = sql.SQL(", ").join(sql.SQL("(COALESCE(s.{0}, t.{0}))::text").format(sql.Identifier(k)) for k in shape.key)
    return sql.SQL(
        "SELECT CASE WHEN t.{k0} IS NULL THEN 'missing' WHEN s.{k0} IS NULL THEN 'extra' ELSE 'different' END,"
        " ARRAY[{flags}]::boolean[], {typed}, {texts}"
        " FROM {stage} AS s FULL JOIN ({held}) AS t ON {on}"
        " WHERE t.{k0} IS NULL OR s.{k0} IS NULL OR {s_row} IS DISTINCT FROM {t_row}"
    ).format(k0=k0, flags=flags if shape.compared else sql.SQL(""), typed=typed, texts=texts, stage=stage,
             held=held, on=on, s_row=s_row, t_row=t_row)


# -- repair ------------------------------------------------------------------------------------


def create_keys_sql(shape: DiffShape) -> sql.Composed:
    """A temporary table of key columns typed like the target's, for the keys a repair fixes."""
    return create_staging_sql(KEYS, shape.spec.ident, shape.key, {})


def fill_keys_sql(shape: DiffShape, keys: Sequence[tuple[str, ...]]) -> sql.Composed:
    names = [sql.Identifier(f"c{i}") for i in range(len(shape.key))]
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::text[]").format(sql.Literal([k[i] for k in keys])) for i in range(len(shape.key))
    )
    casts = sql.SQL(", ").join(
        sql.SQL("u.{}::{}").format(n, sql.SQL(shape.types[k])) for n, k in zip(names, shape.key, strict=True)
    )
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({})").format(
        KEYS, sql.SQL(", ").join(sql.Identifier(k) for k in shape.key), casts, arrays, sql.SQL(", ").join(names)
    )


def trim_stage_sql(shape: DiffShape) -> sql.Composed:
    """Keep in the stage only the rows of the keys a repair fixes."""
    on = sql.SQL(" AND ").join(sql.SQL("k.{0} = s.{0}").format(sql.Identifier(k)) for k in shape.key)
    return sql.SQL("DELETE FROM {} AS s WHERE NOT EXISTS (SELECT 1 FROM {} AS k WHERE {})").format(STAGE, KEYS, on)


def insert_staged_sql(shape: DiffShape) -> sql.Composed:
    """Insert the staged source rows into an upsert target (their keys were deleted just before)."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in shape.spec.data_columns)
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(shape.spec.ident, cols, cols, STAGE)


def source_estimate_sql() -> sql.SQL:
    """The planner's row estimate of a table (parameter: schema.table as regclass text); -1 if never analyzed."""
    return sql.SQL("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass")


def source_count_sql(shape: DiffShape) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(source_table(shape))
