"""Reading a MariaDB target back: one key's rows, for `history` (the same question
`reports.history` asks a PostgreSQL target)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pymysql

from trempy_nb.errors import SettingsError, TrempyError
from trempy_nb.redact import mask
from trempy_nb.writer.mariadb import errors as merr
from trempy_nb.writer.mariadb import uri as maria_uri
from trempy_nb.writer.mariadb.names import execute, qualified, quote


def key_rows(
    ref: str, schema: str, table: str, key: Mapping[str, Any], order_by: str | None, limit: int
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of `schema`.`table` whose key columns equal `key`, oldest version first
    when `order_by` (an SCD2 start column) is given."""
    where = " AND ".join(f"{quote(k)} = %s" for k in key)
    order = f" ORDER BY {quote(order_by)} IS NULL, {quote(order_by)}" if order_by else ""
    params = [v if v is None or isinstance(v, (int, float, bool)) else str(v) for v in key.values()]
    with maria_uri.connect(ref) as conn, conn.cursor() as cur:
        try:
            execute(cur, f"SELECT * FROM {qualified(schema, table)} WHERE {where}{order} LIMIT {int(limit)}", params)
        except pymysql.err.MySQLError as exc:
            if merr.errno(exc) == 1146:
                raise TrempyError(f"{schema}.{table} does not exist on the target (has the task run yet?)") from None
            if merr.errno(exc) in merr.ROW_LEVEL:
                raise SettingsError(f"key {dict(key)} does not fit {schema}.{table}: {mask(merr.message(exc))}") from None
            raise
        names = [d[0] for d in cur.description or []]
        rows = [tuple(r) for r in cur.fetchall()]
    return names, rows
