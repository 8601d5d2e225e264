"""A target table's indexes, set aside while a full load refills it and rebuilt after.

Why: COPY into a table with a primary key grows the b-tree one row at a time,
about half the load's cost on the target; building the index once over the
loaded rows is a sort, two to three times cheaper. It is only done where
nobody can tell: the table was emptied (TRUNCATE) or created in the load's own
transaction, so it holds an ACCESS EXCLUSIVE lock and the indexes come back
before the commit; a rollback brings back the originals.

An index is set aside only when it can be rebuilt exactly from the server's
own definition (`pg_get_indexdef`, `pg_get_constraintdef`), by the table's
owner. One that cannot stays in place: a foreign key refers to it, it is the
replica identity or the CLUSTER index, it lives in its own tablespace, has a
comment, is invalid, backs an exclusion constraint, or its constraint goes by
another name. Partitioned tables, partitions and inheritance parents keep all
of theirs.

`plan_aside` reads the catalog; `aside_sql` is pure; `set_aside` and `rebuild`
run the statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

_INDEXES = """
SELECT n.nspname, ic.relname, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
WHERE i.indrelid = to_regclass(%(table)s)
  AND t.relkind = 'r' AND NOT t.relispartition AND NOT t.relhassubclass
  AND pg_has_role(t.relowner, 'USAGE')
  AND i.indisvalid AND i.indisready AND NOT i.indisreplident AND NOT i.indisclustered
  AND ic.reltablespace = 0
  AND obj_description(i.indexrelid, 'pg_class') IS NULL
  AND (c.oid IS NULL OR (c.contype IN ('p', 'u') AND c.conname = ic.relname
                         AND obj_description(c.oid, 'pg_constraint') IS NULL))
  AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.conindid = i.indexrelid AND f.contype = 'f')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refobjid = i.indexrelid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'n')
ORDER BY c.contype NULLS LAST, ic.relname
"""


@dataclass(frozen=True)
class AsideIndex:
    """One index as the catalog defines it: a plain index, or the index of a PK/UNIQUE constraint."""

    schema: str
    name: str
    indexdef: str  # CREATE [UNIQUE] INDEX ..., as pg_get_indexdef prints it
    constraint: str | None = None  # the constraint's name (the index's own)
    condef: str | None = None  # PRIMARY KEY (...) / UNIQUE (...), as pg_get_constraintdef prints it


def plan_aside(conn: psycopg.Connection, schema: str, table: str) -> list[AsideIndex]:
    """The indexes of `schema.table` that can be dropped now and rebuilt exactly after the load."""
    qualified = sql.Identifier(schema, table).as_string(conn)
    rows = conn.execute(_INDEXES, {"table": qualified}).fetchall()
    return [AsideIndex(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def aside_sql(table: sql.Composable, indexes: Sequence[AsideIndex]) -> tuple[list[sql.Composed], list[sql.Composed]]:
    """(drop statements, rebuild statements) for `indexes` of `table`; constraints first on the way back,
    so a duplicate key is reported as the primary key's."""
    drops: list[sql.Composed] = []
    rebuilds: list[sql.Composed] = []
    for ix in indexes:
        if ix.constraint is not None and ix.condef is not None:
            drops.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(ix.constraint)))
            # the server's own canonical definition of the constraint, not user input
            rebuilds.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                table, sql.Identifier(ix.constraint), sql.SQL(ix.condef)))
        else:
            drops.append(sql.SQL("DROP INDEX {}").format(sql.Identifier(ix.schema, ix.name)))
            rebuilds.append(sql.Composed([sql.SQL(ix.indexdef)]))
    return drops, rebuilds


def set_aside(cur: psycopg.Cursor, schema: str, table: str) -> list[sql.Composed]:
    """Drop the indexes of an emptied `schema.table` that can be rebuilt; returns the rebuild statements."""
    drops, rebuilds = aside_sql(sql.Identifier(schema, table), plan_aside(cur.connection, schema, table))
    for stmt in drops:
        cur.execute(stmt)
    return rebuilds


def rebuild(cur: psycopg.Cursor, statements: Sequence[sql.Composed]) -> None:
    """Build the set-aside indexes over the loaded rows (a duplicate key fails here)."""
    for stmt in statements:
        cur.execute(stmt)
