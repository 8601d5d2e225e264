"""connect, connections, delete-connection, tables, columns."""

from __future__ import annotations

import polars as pl

from trempy_nb import catalog
from trempy_nb.connection_check import open_once
from trempy_nb.connections import delete_connection as forget_connection
from trempy_nb.connections import list_connections, resolve, save_connection
from trempy_nb.db import connect as db_connect
from trempy_nb.errors import SettingsError
from trempy_nb.notebook.render import Note
from trempy_nb.pgtypes import type_category


def connect(name: str, uri: str, test: bool = True) -> Note:
    """Save `uri` as connection `name` (password encrypted, never echoed); test it first."""
    info = save_connection(name, uri, test=test, tester=open_once)
    tested = " (tested)" if test else ""
    return Note(f"saved connection {info}{tested}", "ok")


def connections() -> pl.DataFrame:
    """Saved connections (no password)."""
    return list_connections()


def delete_connection(name: str) -> Note:
    """Forget a saved connection (tasks that name it fail until it is saved again)."""
    forget_connection(name)
    return Note(f"deleted connection {name}", "ok")


def tables(name: str, schema: str | None = None) -> pl.DataFrame:
    """Tables of a connection (schema, table, estimated_rows)."""
    with db_connect(resolve(name)) as conn:
        rows = catalog.list_tables(conn, schema)
    return pl.DataFrame(
        rows,
        schema={"schema": pl.String, "table": pl.String, "estimated_rows": pl.Int64},
        orient="row",
    )


def split_table(conn: object, table: str) -> tuple[str, str]:
    """'schema.table' -> (schema, table); a bare name is looked up across schemas."""
    if "." in table:
        schema, _, name = table.partition(".")
        return schema, name
    found = [(s, t) for s, t, _ in catalog.list_tables(conn, None) if t == table]  # type: ignore[arg-type]
    if not found:
        raise SettingsError(f"no table named {table!r} on this connection")
    if len(found) > 1:
        names = ", ".join(f"{s}.{t}" for s, t in found)
        raise SettingsError(f"table name {table!r} is ambiguous ({names}): give schema.table")
    return found[0]


def columns(name: str, table: str) -> pl.DataFrame:
    """Columns of one table: name, type, category, nullable, primary_key."""
    with db_connect(resolve(name)) as conn:
        schema, tname = split_table(conn, table)
        info = catalog.describe_table(conn, schema, tname)
    pk = set(info.primary_key)
    return pl.DataFrame(
        {
            "column": [c.name for c in info.columns],
            "type": [c.pg_type for c in info.columns],
            "category": [type_category(c.pg_type) for c in info.columns],
            "nullable": [c.nullable for c in info.columns],
            "primary_key": [c.name in pk for c in info.columns],
        },
        schema={
            "column": pl.String,
            "type": pl.String,
            "category": pl.String,
            "nullable": pl.Boolean,
            "primary_key": pl.Boolean,
        },
    )
