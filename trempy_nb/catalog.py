"""Source introspection: schemas, tables, columns with their types, keys, replica identity.

`TableInfo`/`ColumnInfo` are plain data (the pipeline and the writer's SQL
builders take them without I/O); the `list_*`/`describe_*` functions are the
only queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from trempy_nb.errors import ValidationFailed


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    pg_type: str  # format_type(), e.g. 'integer', 'numeric(12,2)', 'timestamp without time zone'
    nullable: bool = True
    position: int = 0

    @property
    def is_array(self) -> bool:
        return self.pg_type.endswith("[]")


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...] = ()
    replica_identity: str = "d"  # d default, f full, i index, n nothing
    identity_columns: tuple[str, ...] = ()  # columns sent as the old key on update/delete
    estimated_rows: int = 0
    oid: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The columns that identify a row: the primary key, else the replica identity."""
        return self.primary_key or self.identity_columns


_TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.reltuples::bigint AS estimated_rows
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
  AND (%(schema)s::text IS NULL OR n.nspname = %(schema)s)
  AND NOT c.relispartition
ORDER BY 1, 2
"""

_DESCRIBE_SQL = """
SELECT want.ord, c.oid, c.relreplident, GREATEST(c.reltuples, 0)::bigint,
  (SELECT array_agg(ARRAY[a.attname::text, format_type(a.atttypid, a.atttypmod), (NOT a.attnotnull)::text,
                          a.attnum::text] ORDER BY a.attnum)
     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i
     JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary),
  (SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i
     JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisreplident)
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS want(schema, name, ord)
JOIN pg_namespace n ON n.nspname = want.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = want.name AND c.relkind IN ('r', 'p')
"""


def list_schemas(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema')"
        " AND nspname NOT LIKE 'pg_toast%%' AND nspname NOT LIKE 'pg_temp%%' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def list_tables(conn: psycopg.Connection, schema: str | None = None) -> list[tuple[str, str, int]]:
    """(schema, table, estimated rows) of every ordinary or partitioned table."""
    return [tuple(r) for r in conn.execute(_TABLES_SQL, {"schema": schema}).fetchall()]  # type: ignore[misc]


def describe_table(conn: psycopg.Connection, schema: str, table: str) -> TableInfo:
    """Everything the pipeline and writer need to know about one source table."""
    info = describe_tables(conn, [(schema, table)])[(schema, table)]
    if info is None:
        known = [f"{s}.{t}" for s, t, _ in list_tables(conn, schema)][:20]
        hint = f" (tables in schema {schema}: {', '.join(known)})" if known else f" (no tables in schema {schema})"
        raise ValidationFailed(f"table {schema}.{table} does not exist on the source{hint}")
    return info


def describe_tables(conn: psycopg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TableInfo | None]:
    """`describe_table` of many tables in one catalog query (None: no such table)."""
    keys = list(dict.fromkeys(keys))
    out: dict[tuple[str, str], TableInfo | None] = dict.fromkeys(keys)
    if not keys:
        return out
    rows = conn.execute(_DESCRIBE_SQL, ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    for ord_, oid, replident, estimate, cols_raw, pk_raw, ri_raw in rows:
        schema, table = keys[int(ord_) - 1]
        cols = tuple(ColumnInfo(name=n, pg_type=t, nullable=nl == "true", position=int(p))
                     for n, t, nl, p in (cols_raw or []))
        pk = tuple(pk_raw or ())
        if replident == "f":
            identity = tuple(c.name for c in cols)
        elif replident == "i":
            identity = tuple(ri_raw or ())
        elif replident == "d":
            identity = pk
        else:
            identity = ()
        out[(schema, table)] = TableInfo(
            schema=schema,
            name=table,
            columns=cols,
            primary_key=pk,
            replica_identity=str(replident),
            identity_columns=identity,
            estimated_rows=int(estimate),
            oid=int(oid),
        )
    return out
