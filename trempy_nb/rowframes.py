"""Rows fetched by psycopg as a typed Polars frame (history, time travel, reports).

Pure: no I/O. Shared by `task.py` and `reports.py` so every frame read back from a target
keeps datetimes as datetimes and never turns a column into nulls.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

_JSON_OIDS = (114, 3802)  # json, jsonb: shown as their JSON text (no struct inference)


def frame_of_rows(
    names: list[str], rows: list[tuple[Any, ...]], oids: list[int] | None = None
) -> pl.DataFrame:
    """Rows fetched by psycopg as a typed frame, column by column: timestamps stay
    datetimes, numbers numbers; json(b) and any column Polars cannot hold exactly
    (mixed or exotic values) become text, never nulls."""
    columns = []
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        if not values:  # nothing to infer a type from: text, like a preview's raw columns
            columns.append(pl.Series(name, [], pl.String))
            continue
        if oids is not None and oids[i] in _JSON_OIDS:
            text = [None if v is None else json.dumps(v) for v in values]
            columns.append(pl.Series(name, text, pl.String))
            continue
        try:
            if any(isinstance(v, dict) for v in values):
                raise TypeError("structs are inferred from their first values")
            series = pl.Series(name, values)
            if series.dtype == pl.Object:  # uuid, ip addresses...: their text
                raise TypeError("no Polars type")
            columns.append(series)
        except Exception:  # exotic types: show their text
            text = [None if v is None else str(v) for v in values]
            columns.append(pl.Series(name, text, pl.String))
    return pl.DataFrame(columns)
