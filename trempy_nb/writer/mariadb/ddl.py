"""MariaDB target tables and the task's state tables: SQL text built without I/O, plus `ensure_*`.

A PostgreSQL schema maps to the MariaDB database of the same name (MariaDB has
no schemas inside a database); the task's state tables live in the database the
target URI names. An upsert target gets the plan's key as PRIMARY KEY. An SCD2
target gets the validity columns, an index on (key, start) and one current
version per key enforced by the server: a UNIQUE key over the key columns plus a
generated column that is 1 on the current version and NULL on closed ones
(NULLs never collide in a unique index).

DDL commits implicitly in MariaDB, so tables are created (keys included) before
the data transaction starts, never inside it.
"""

from __future__ import annotations

from typing import Any

from trempy_nb.catalog import ColumnInfo
from trempy_nb.errors import TerminalError, ValidationFailed
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.mariadb.names import column_list, execute, qualified, quote
from trempy_nb.writer.mariadb.types import INDEX_LIMIT_BYTES, MariaType, mariadb_type

CHECKPOINTS = "trempy_checkpoints"
LOAD_STATE = "trempy_load_state"
SOURCE_SHAPES = "trempy_source_shapes"
#: the fencing epoch of each lease (`writer.fence`)
FENCES = "trempy_fences"
#: the task sessions open on this server (MariaDB has no application_name to find them by)
SESSIONS = "trempy_sessions"
#: The generated column that is non-NULL only on an SCD2 table's current version
CURRENT_MARK = "_trempy_current"
ENGINE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def column_types(spec: TargetSpec, *, native_uuid: bool = True) -> dict[str, MariaType]:
    """{column: MariaType} for the spec's data columns."""
    return {c.name: mariadb_type(c.pg_type, key=c.name in spec.key, native_uuid=native_uuid) for c in spec.columns}


def check_key_length(spec: TargetSpec, types: dict[str, MariaType]) -> None:
    """One clear line when the key cannot be indexed (too long, or of a type without a key form)."""
    name = f"{spec.schema}.{spec.table}"
    total = 0
    for k in spec.key:
        mt = types[k]
        if mt.key_bytes is None:
            raise ValidationFailed(f"key column {k} of {name} maps to {mt.sql}, which MariaDB cannot index as a key")
        total += mt.key_bytes
    if spec.scd2:
        total += 1 + 8  # the current-version mark (unique key) / the start column (key index)
    if total > INDEX_LIMIT_BYTES:
        detail = ", ".join(f"{k} {types[k].sql}" for k in spec.key)
        raise ValidationFailed(
            f"the key of {name} ({detail}) takes up to {total} bytes, over MariaDB's index limit of"
            f" {INDEX_LIMIT_BYTES} bytes: shorten the key columns' types (e.g. varchar(n) with a smaller n)"
        )


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote(database)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


def create_table_sql(spec: TargetSpec, types: dict[str, MariaType]) -> str:
    """CREATE TABLE with its keys (MariaDB cannot add them later inside the load's transaction)."""
    cols = [f"{quote(c.name)} {types[c.name].sql}" + (" NOT NULL" if c.name in spec.key else "")
            for c in spec.columns]
    keys = column_list(spec.key)
    if spec.scd2:
        cols += [
            f"{quote(spec.start_col)} DATETIME(6) NOT NULL",
            f"{quote(spec.end_col)} DATETIME(6) NULL",
            f"{quote(spec.current_col)} BOOLEAN NOT NULL DEFAULT 1",
            f"{quote(CURRENT_MARK)} TINYINT GENERATED ALWAYS AS (IF({quote(spec.current_col)}, 1, NULL)) STORED",
        ]
        if spec.key:
            cols.append(f"UNIQUE KEY {quote('current_uq')} ({keys}, {quote(CURRENT_MARK)})")
            cols.append(f"KEY {quote('key_idx')} ({keys}, {quote(spec.start_col)})")
    elif spec.key:
        cols.append(f"PRIMARY KEY ({keys})")
    return f"CREATE TABLE {qualified(spec.schema, spec.table)} ({', '.join(cols)}) {ENGINE}"


def state_tables_sql(database: str) -> list[str]:
    """The task state kept on the target, in the database the target URI names."""
    return [
        f"CREATE TABLE IF NOT EXISTS {qualified(database, CHECKPOINTS)} (task VARCHAR(255) NOT NULL PRIMARY KEY,"
        " lsn BIGINT NOT NULL, slot_lsn BIGINT NULL,"
        f" updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) {ENGINE}",
        f"CREATE TABLE IF NOT EXISTS {qualified(database, LOAD_STATE)} (task VARCHAR(255) NOT NULL,"
        " schema_name VARCHAR(64) NOT NULL, table_name VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL,"
        " `rows` BIGINT NULL, snapshot_lsn BIGINT NULL, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
        f" PRIMARY KEY (task, schema_name, table_name)) {ENGINE}",
        f"CREATE TABLE IF NOT EXISTS {qualified(database, SOURCE_SHAPES)} (task VARCHAR(255) NOT NULL,"
        " schema_name VARCHAR(64) NOT NULL, table_name VARCHAR(64) NOT NULL, `columns` JSON NOT NULL,"
        " updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
        f" PRIMARY KEY (task, schema_name, table_name)) {ENGINE}",
        f"CREATE TABLE IF NOT EXISTS {qualified(database, FENCES)} (task VARCHAR(255) NOT NULL PRIMARY KEY,"
        f" epoch BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) {ENGINE}",
        sessions_table_sql(database),
    ]


def sessions_table_sql(database: str) -> str:
    """The session registry: one row per open task connection (id and client host:port as the
    server's processlist shows them, and the application name it would have had)."""
    return (f"CREATE TABLE IF NOT EXISTS {qualified(database, SESSIONS)} (connection_id BIGINT NOT NULL PRIMARY KEY,"
            " host VARCHAR(255) NOT NULL, app VARCHAR(255) NOT NULL,"
            f" updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) {ENGINE}")


def ensure_state_tables(conn: Any, database: str) -> None:
    with conn.cursor() as cur:
        for stmt in state_tables_sql(database):
            execute(cur, stmt)


def existing_columns(conn: Any, database: str, table: str) -> dict[str, str] | None:
    """{column: column_type} of a table, or None when it does not exist."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, column_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (database, table),
        )
        rows = cur.fetchall()
    return {r[0]: r[1] for r in rows} if rows else None


def database_exists(conn: Any, database: str) -> bool:
    with conn.cursor() as cur:
        execute(cur, "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (database,))
        return cur.fetchone() is not None


def ensure_target(
    conn: Any,
    spec: TargetSpec,
    *,
    create: bool = True,
    recreate: bool = False,
    native_uuid: bool = True,
    add_missing: bool = False,
) -> tuple[bool, dict[str, MariaType]]:
    """Create (or recreate) the database and table per full_load_settings: (created, types).

    An existing table must hold every column the plan writes (and the SCD2 columns); with
    `add_missing` the data columns it lacks are added (DDL: commits implicitly)."""
    types = column_types(spec, native_uuid=native_uuid)
    check_key_length(spec, types)
    name = f"{spec.schema}.{spec.table}"
    with conn.cursor() as cur:
        if recreate:
            execute(cur, f"DROP TABLE IF EXISTS {qualified(spec.schema, spec.table)}")
        current = existing_columns(conn, spec.schema, spec.table)
        if current is None:
            if not create:
                raise TerminalError(f"target table {name} does not exist and"
                                    " full_load_settings.create_table_if_not_exists is false")
            if not database_exists(conn, spec.schema):
                execute(cur, create_database_sql(spec.schema))
            execute(cur, create_table_sql(spec, types))
            return True, types
    needed = spec.data_columns + ([spec.start_col, spec.end_col, spec.current_col] if spec.scd2 else [])
    missing = [c for c in needed if c not in current]
    if add_missing and missing:  # a change stream resuming after source columns were added
        with conn.cursor() as cur:
            for col in spec.columns:
                if col.name in missing:
                    execute(cur, f"ALTER TABLE {qualified(spec.schema, spec.table)} ADD COLUMN IF NOT EXISTS"
                            f" {quote(col.name)} {types[col.name].sql}")
        missing = [c for c in missing if c not in spec.data_columns]
    if missing:
        raise TerminalError(f"target table {name} exists but lacks column(s) {', '.join(missing)};"
                            " set full_load_settings.recreate_table_if_exists or add them")
    return False, types


def add_column(conn: Any, spec: TargetSpec, column: ColumnInfo, *, native_uuid: bool = True) -> None:
    """A column that appeared on the source flows to the target from then on (DDL: commits implicitly)."""
    mt = mariadb_type(column.pg_type, key=column.name in spec.key, native_uuid=native_uuid)
    with conn.cursor() as cur:
        execute(cur, f"ALTER TABLE {qualified(spec.schema, spec.table)} ADD COLUMN IF NOT EXISTS"
                f" {quote(column.name)} {mt.sql}")
