"""Target tables: SQL built without I/O, plus a thin `ensure_*` runner (the task's state tables are
`writer.state`'s).

An upsert target gets the plan's primary key. An SCD2 target gets the three
validity columns, a plain index on the key and a unique partial index that
admits one current version per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from trempy_nb.catalog import ColumnInfo
from trempy_nb.errors import TerminalError


@dataclass(frozen=True)
class TargetSpec:
    """Where and how one table lands on the target."""

    schema: str
    table: str
    columns: tuple[ColumnInfo, ...]
    key: tuple[str, ...]
    mode: str  # 'upsert' | 'scd2'
    start_col: str = "scd_start_date"
    end_col: str = "scd_end_date"
    current_col: str = "scd_current"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def data_columns(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def scd2(self) -> bool:
        return self.mode == "scd2"


def _short(name: str, suffix: str) -> str:
    """An index name within PostgreSQL's 63-byte limit."""
    base = name.encode()[: 63 - len(suffix.encode()) - 1].decode(errors="ignore")
    return f"{base}_{suffix}"


def create_table_sql(spec: TargetSpec, types: dict[str, str], with_keys: bool = True) -> list[sql.Composed]:
    """CREATE SCHEMA/TABLE/INDEX statements for a new target table.

    `with_keys=False` leaves the key and indexes out: a bulk load adds them
    afterwards (`key_sql`), which sorts once instead of growing a b-tree row by row.
    """
    cols = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(types[c.name])) for c in spec.columns]
    stmts = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(spec.schema))]
    if spec.scd2:
        cols += [
            sql.SQL("{} timestamptz NOT NULL DEFAULT now()").format(sql.Identifier(spec.start_col)),
            sql.SQL("{} timestamptz").format(sql.Identifier(spec.end_col)),
            sql.SQL("{} boolean NOT NULL DEFAULT true").format(sql.Identifier(spec.current_col)),
        ]
    stmts.append(sql.SQL("CREATE TABLE {} ({})").format(spec.ident, sql.SQL(", ").join(cols)))
    if with_keys:
        stmts.extend(key_sql(spec))
    return stmts


def key_sql(spec: TargetSpec) -> list[sql.Composed]:
    """The primary key (upsert) or the SCD2 indexes of a target table."""
    stmts: list[sql.Composed] = []
    if not spec.scd2 and spec.key:
        stmts.append(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                spec.ident, sql.SQL(", ").join(map(sql.Identifier, spec.key))
            )
        )
    if spec.scd2 and spec.key:
        keys = sql.SQL(", ").join(map(sql.Identifier, spec.key))
        stmts.append(
            sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) WHERE {}").format(
                sql.Identifier(_short(spec.table, "current_uq")), spec.ident, keys, sql.Identifier(spec.current_col)
            )
        )
        stmts.append(
            sql.SQL("CREATE INDEX {} ON {} ({}, {})").format(
                sql.Identifier(_short(spec.table, "key_idx")), spec.ident, keys, sql.Identifier(spec.start_col)
            )
        )
    return stmts


def existing_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str] | None:
    """{column: format_type} of a target table, or None when it does not exist."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
        " AND c.relkind IN ('r','p') ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return {r[0]: r[1] for r in rows} if rows else None


def resolve_types(conn: psycopg.Connection, columns: Sequence[ColumnInfo]) -> dict[str, str]:
    """Source types that do not exist on the target (enums, domains) fall back to text.
    One query for all the columns."""
    bases = list(dict.fromkeys(c.pg_type.removesuffix("[]") for c in columns))
    rows = conn.execute("SELECT t, to_regtype(t) IS NOT NULL FROM unnest(%s::text[]) AS t", (bases,)).fetchall() if bases else []
    known = {t for t, ok in rows if ok}
    return {c.name: c.pg_type if c.pg_type.removesuffix("[]") in known else ("text[]" if c.is_array else "text")
            for c in columns}


def ensure_target(
    conn: psycopg.Connection,
    spec: TargetSpec,
    *,
    create: bool = True,
    recreate: bool = False,
    defer_keys: bool = False,
    add_missing: bool = False,
) -> tuple[bool, dict[str, str]]:
    """Create (or recreate) the target table per full_load_settings.

    Returns (created, column types). An existing table must already hold every
    column the plan writes (and the SCD2 columns in scd2 mode); with
    `add_missing` (a change stream resuming after source columns were added)
    the data columns it lacks are added.
    """
    if recreate:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(spec.ident))
    current = existing_columns(conn, spec.schema, spec.table)
    if current is None:
        if not create:
            raise TerminalError(
                f"target table {spec.schema}.{spec.table} does not exist and"
                " full_load_settings.create_table_if_not_exists is false"
            )
        types = resolve_types(conn, spec.columns)
        for stmt in create_table_sql(spec, types, with_keys=not defer_keys):
            conn.execute(stmt)
        return True, types
    needed = spec.data_columns + ([spec.start_col, spec.end_col, spec.current_col] if spec.scd2 else [])
    missing = [c for c in needed if c not in current]
    if add_missing and missing:
        for col in spec.columns:
            if col.name in missing and col.name in spec.data_columns:
                add_column(conn, spec, col)
        current = existing_columns(conn, spec.schema, spec.table) or {}
        missing = [c for c in needed if c not in current]
    if missing:
        raise TerminalError(
            f"target table {spec.schema}.{spec.table} exists but lacks column(s) {', '.join(missing)};"
            " set full_load_settings.recreate_table_if_exists or add them"
        )
    return False, current


def add_column(conn: psycopg.Connection, spec: TargetSpec, column: ColumnInfo) -> None:
    """A column that appeared on the source flows to the target from then on."""
    types = resolve_types(conn, [column])
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            spec.ident, sql.Identifier(column.name), sql.SQL(types[column.name])
        )
    )
