"""SQL text for writing the target: pure builders returning `psycopg.sql.Composed`, no I/O.

Every name goes through `sql.Identifier`; values travel as bind parameters
(`%s`) or through the staging table, never inside the SQL text. `apply.py`
runs these statements in one target transaction (CDC), and the full load merges
its staged batches with `merge_sql`; tests render them with `as_string`.

Staging tables are created `AS SELECT <target columns> FROM target WITH NO
DATA`: that copies the column types (COPY then parses the text values with
the target's own input functions, typmods included) but no NOT NULL or CHECK
constraint, so a delete row holding only its key, or a row whose unchanged
TOAST value is filled later, can be staged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from trempy_nb.writer.ddl import TargetSpec

# Staging meta columns (never written to the target).
S_OP = "_trempy_op"  # 'I' | 'U' | 'D'
S_TS = "_trempy_ts"  # commit time of the change (SCD2 version start, close time)
S_END = "_trempy_end"  # SCD2: commit time of the key's next event in the batch (version end)
S_FIRST = "_trempy_first"  # SCD2: first event of its key (closes the target's current version)

# The only types a staging meta column may have: fixed SQL, never user input.
META_TYPES: dict[str, sql.SQL] = {
    "text": sql.SQL("text"),
    "timestamptz": sql.SQL("timestamptz"),
    "boolean": sql.SQL("boolean"),
    "bigint": sql.SQL("bigint"),
}

_T = sql.SQL("t")  # target alias
_S = sql.SQL("s")  # staging alias


def _cols(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def _qualified(alias: sql.SQL, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(alias, sql.Identifier(c)) for c in columns)


def _key_match(key: Sequence[str]) -> sql.Composed:
    """t.k1 = s.k1 AND t.k2 = s.k2 (keys are never NULL)."""
    return sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(k)) for k in key)


def staging_ident(name: str) -> sql.Identifier:
    """Staging tables live in pg_temp so they can never shadow or hit a user table."""
    return sql.Identifier("pg_temp", name)


def create_staging_sql(
    staging: sql.Identifier,
    target: sql.Identifier,
    columns: Sequence[str],
    meta: Mapping[str, str],
) -> sql.Composed:
    """A TEMP table typed like the target's `columns`, plus `meta` columns ({name: META_TYPES key})."""
    parts: list[sql.Composable] = [_qualified(_T, columns)] if columns else []
    for name, kind in meta.items():
        if kind not in META_TYPES:
            raise ValueError(f"unsupported staging meta type {kind!r}")
        parts.append(sql.SQL("NULL::{} AS {}").format(META_TYPES[kind], sql.Identifier(name)))
    return sql.SQL(
        "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} AS t WITH NO DATA"
    ).format(staging, sql.SQL(", ").join(parts), target)


def analyze_sql(staging: sql.Identifier, columns: Sequence[str]) -> sql.Composed:
    """Temp tables have no statistics; a big batch deserves a real join plan. Only the columns the
    statements join or filter on (key, meta): the row count comes with any of them, and statistics
    of wide values (jsonb, arrays, long text) would cost more than the join they inform (measured:
    ANALYZE of a 20k-row, 14-column batch 200-450 ms, of its key 20-40 ms)."""
    return sql.SQL("ANALYZE {} ({})").format(staging, sql.SQL(", ").join(map(sql.Identifier, columns)))


def fill_unchanged_sql(
    staging: sql.Identifier,
    target: sql.Identifier,
    key: Sequence[str],
    markers: Sequence[tuple[str, str]],
    current_col: str | None = None,
) -> sql.Composed:
    """Copy the target's value into staged columns marked as unchanged TOAST.

    `markers` pairs a data column with its boolean marker column. With
    `current_col` (SCD2) the value comes from the key's current version; run
    it before that version is closed.
    """
    if not markers:
        raise ValueError("fill_unchanged_sql needs at least one marker")
    sets = sql.SQL(", ").join(
        sql.SQL("{0} = CASE WHEN s.{1} THEN t.{0} ELSE s.{0} END").format(
            sql.Identifier(col), sql.Identifier(marker)
        )
        for col, marker in markers
    )
    any_marked = sql.SQL(" OR ").join(sql.SQL("s.{}").format(sql.Identifier(m)) for _, m in markers)
    where = sql.SQL("{} AND ({})").format(_key_match(key), any_marked)
    if current_col is not None:
        where = sql.SQL("{} AND t.{}").format(where, sql.Identifier(current_col))
    return sql.SQL("UPDATE {} AS s SET {} FROM {} AS t WHERE {}").format(
        staging, sets, target, where
    )


def upsert_delete_sql(
    target: sql.Identifier, staging: sql.Identifier, key: Sequence[str]
) -> sql.Composed:
    """Delete every target row whose key is staged."""
    return sql.SQL("DELETE FROM {} AS t USING {} AS s WHERE {}").format(
        target, staging, _key_match(key)
    )


def upsert_insert_sql(
    target: sql.Identifier,
    staging: sql.Identifier,
    columns: Sequence[str],
    key: Sequence[str],
) -> sql.Composed:
    """INSERT the staged rows ... ON CONFLICT (key) DO UPDATE the non-key columns (DO NOTHING
    when every column is key). The staging rows must hold each key once."""
    non_key = [c for c in columns if c not in key]
    action: sql.Composable
    if non_key:
        action = sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in non_key
            )
        )
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL(
        "INSERT INTO {} AS t ({}) SELECT {} FROM {} AS s ON CONFLICT ({}) {}"
    ).format(target, _cols(columns), _qualified(_S, columns), staging, _cols(key), action)


def upsert_sql(
    target: sql.Identifier,
    staging: sql.Identifier,
    columns: Sequence[str],
    key: Sequence[str],
) -> sql.Composed:
    """The upsert (upsert_insert_sql), returning one row (inserted, updated).

    `xmax = 0` on the returned row tells a fresh insert from an update. The
    staging rows must hold each key once (collapse.py guarantees it).
    """
    return sql.SQL(
        "WITH w AS ({} RETURNING (t.xmax = 0) AS ins)"
        " SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM w"
    ).format(upsert_insert_sql(target, staging, columns, key))


def delete_all_sql(target: sql.Identifier) -> sql.Composed:
    """TRUNCATE on an upsert target: DELETE (MVCC-safe for readers, transactional, savepoint-friendly)."""
    return sql.SQL("DELETE FROM {}").format(target)


def scd2_close_sql(
    target: sql.Identifier,
    staging: sql.Identifier,
    spec: TargetSpec,
    at: sql.Composable | None = None,
    when: sql.Composable | None = None,
) -> sql.Composed:
    """Close the current version of every key with a staged row matching `when`, at `at`.

    CDC's defaults: the staged row is its key's first event in the batch
    (`s._trempy_first`), and the version closes at that event's commit time
    (`s._trempy_ts`). `when` and `at` may name the target row as `t`, the staged one as `s`.
    """
    at = at if at is not None else sql.SQL("s.{}").format(sql.Identifier(S_TS))
    when = when if when is not None else sql.SQL("s.{}").format(sql.Identifier(S_FIRST))
    return sql.SQL(
        "UPDATE {} AS t SET {} = {}, {} = false FROM {} AS s WHERE {} AND t.{} AND {}"
    ).format(
        target,
        sql.Identifier(spec.end_col),
        at,
        sql.Identifier(spec.current_col),
        staging,
        when,
        sql.Identifier(spec.current_col),
        _key_match(spec.key),
    )


def scd2_open_sql(
    target: sql.Identifier, staging: sql.Identifier, columns: Sequence[str], spec: TargetSpec
) -> sql.Composed:
    """One version per staged non-delete event: start = its commit, end = the next event's (current when none)."""
    return sql.SQL(
        "INSERT INTO {} ({}, {}, {}, {}) SELECT {}, s.{}, s.{}, s.{} IS NULL FROM {} AS s WHERE s.{} <> 'D'"
    ).format(
        target,
        _cols(columns),
        sql.Identifier(spec.start_col),
        sql.Identifier(spec.end_col),
        sql.Identifier(spec.current_col),
        _qualified(_S, columns),
        sql.Identifier(S_TS),
        sql.Identifier(S_END),
        sql.Identifier(S_END),
        staging,
        sql.Identifier(S_OP),
    )


def scd2_open_missing_sql(
    target: sql.Identifier,
    staging: sql.Identifier,
    columns: Sequence[str],
    spec: TargetSpec,
    at: sql.Composable,
) -> sql.Composed:
    """A current version, starting at `at`, for every staged key that has none (a new key, or
    one whose changed version scd2_close_sql just closed)."""
    return sql.SQL(
        "INSERT INTO {} ({}, {}, {}, {}) SELECT {}, {}, NULL, true FROM {} AS s"
        " WHERE NOT EXISTS (SELECT 1 FROM {} AS t WHERE {} AND t.{})"
    ).format(
        target,
        _cols(columns),
        sql.Identifier(spec.start_col),
        sql.Identifier(spec.end_col),
        sql.Identifier(spec.current_col),
        _qualified(_S, columns),
        at,
        staging,
        target,
        _key_match(spec.key),
        sql.Identifier(spec.current_col),
    )


def scd2_close_all_sql(target: sql.Identifier, spec: TargetSpec) -> sql.Composed:
    """TRUNCATE on an SCD2 target: close every current version. One parameter: the close time (NULL = now())."""
    return sql.SQL(
        "UPDATE {} SET {} = COALESCE(%s::timestamptz, now()), {} = false WHERE {}"
    ).format(
        target,
        sql.Identifier(spec.end_col),
        sql.Identifier(spec.current_col),
        sql.Identifier(spec.current_col),
    )


def merge_sql(
    spec: TargetSpec,
    at: sql.Composable | None = None,
    staging: sql.Identifier = sql.Identifier("trempy_stage"),
) -> list[sql.Composed]:
    """A full load's staged batch into a target that already has rows (fullload/writer.py's staging
    table by default): upsert on the key; or SCD2: close the current versions the staged rows
    change, then open a version for every staged key left without one, both at `at` (the
    load's time; now() when None)."""
    if not spec.scd2:
        return [upsert_insert_sql(spec.ident, staging, spec.data_columns, spec.key)]
    at = at if at is not None else sql.SQL("now()")
    changed = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
        _qualified(_T, spec.data_columns), _qualified(_S, spec.data_columns)
    )
    return [
        scd2_close_sql(spec.ident, staging, spec, at, changed),
        scd2_open_missing_sql(spec.ident, staging, spec.data_columns, spec, at),
    ]
