"""Time travel over an SCD2 target: pure SQL builders and time parsing, no I/O.

An SCD2 table holds every version of a key with the commit times that opened
(`start`) and closed (`end`) it; `current` marks the open one. So the table
as it was at an instant is one predicate, and what changed between two
instants is the difference of two such states, restricted to the keys with a
version boundary in between. Both are computed on the target, where the
history lives; `Task.as_of` and `Task.changes` run them. Names go through
`sql.Identifier`, times travel as bind parameters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from psycopg import sql

from trempy_nb.errors import SettingsError

TIME_FORMS = (
    "an ISO time (2024-05-01, 2024-05-01 12:30, 2024-05-01T12:30:00+02:00),"
    " a datetime, 'now', or a relative time: -30s, -30m, -2h, -1d, -1w"
)

_RELATIVE = re.compile(r"^\s*-\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

OP_COLUMN = "operation"
TIME_COLUMN = "changed_at"
CHANGED_COLUMN = "changed_columns"
BEFORE, AFTER = "_before", "_after"


def parse_time(value: object, now: datetime | None = None) -> datetime:
    """An instant (aware, UTC) from a datetime, a date, an ISO string or `-1d`-style text.

    A naive time is read as UTC: every session of the tool runs with TimeZone=UTC,
    and the SCD2 columns are timestamptz.
    """
    now = now or datetime.now(timezone.utc)
    if isinstance(value, datetime):
        out = value
    elif isinstance(value, date):
        out = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        match = _RELATIVE.match(text)
        if text.lower() == "now":
            out = now
        elif match:
            out = now - timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
        else:
            try:
                out = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise SettingsError(f"cannot read the time {value!r}: give {TIME_FORMS}") from None
    else:
        raise SettingsError(f"cannot read the time {value!r}: give {TIME_FORMS}")
    return out if out.tzinfo is not None else out.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class HistoryTable:
    """An SCD2 target table: its name, key, data columns and the three version columns."""

    schema: str
    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]  # data columns, key included, in table order
    start: str = "scd_start_date"
    end: str = "scd_end_date"
    current: str = "scd_current"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def values(self) -> tuple[str, ...]:
        """The data columns that are not part of the key (what an update can change)."""
        return tuple(c for c in self.columns if c not in self.key)


def _list(names: Sequence[str], alias: str | None = None) -> sql.Composed:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(c) for c in names)
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in names)


def _current_at(t: HistoryTable, param: str) -> sql.Composed:
    """start <= ts AND (end > ts OR current): the version that was current at `param`."""
    p = sql.Placeholder(param)
    return sql.SQL("{s} <= {p} AND ({e} > {p} OR {c})").format(
        s=sql.Identifier(t.start), e=sql.Identifier(t.end), c=sql.Identifier(t.current), p=p
    )


def _limit(limit: int | None) -> sql.Composable:
    return sql.SQL("") if limit is None else sql.SQL(" LIMIT {}").format(sql.Literal(int(limit)))


def as_of_query(t: HistoryTable, limit: int | None = None) -> sql.Composed:
    """The rows current at `%(ts)s`, ordered by key (data columns only)."""
    return sql.SQL("SELECT {cols} FROM {tbl} WHERE {when} ORDER BY {key}{limit}").format(
        cols=_list(t.columns),
        tbl=t.ident,
        when=_current_at(t, "ts"),
        key=_list(t.key),
        limit=_limit(limit),
    )


def instants_query(t: HistoryTable, limit: int = 200) -> sql.Composed:
    """The latest `limit` instants at which the table changed (a version opened or closed),
    newest first: the stops of a time slider over the table."""
    return sql.SQL(
        "SELECT x FROM (SELECT {s} AS x FROM {tbl} UNION SELECT {e} FROM {tbl} WHERE {e} IS NOT NULL) u"
        " ORDER BY x DESC LIMIT {n}"
    ).format(
        s=sql.Identifier(t.start), e=sql.Identifier(t.end), tbl=t.ident, n=sql.Literal(int(limit))
    )


def changes_query(t: HistoryTable, limit: int | None = None) -> sql.Composed:
    """One row per key whose state at `%(until)s` differs from its state at `%(since)s`.

    A key counts when one of its versions opened or closed in (since, until] and it
    existed at either end: `insert` (absent at since), `delete` (absent at until) or
    `update`. `changed_at` is the last version boundary of the key in the interval.
    For every non-key column the result has `<col>_before` and `<col>_after`, filled
    only where the column changed (compared as text, which every type has);
    `changed_columns` names them. `%(until)s` NULL means now (the current versions).
    """
    s, e = sql.Identifier(t.start), sql.Identifier(t.end)
    key = _list(t.key)
    within = sql.SQL("({x} > %(since)s AND {x} <= COALESCE(%(until)s, 'infinity'::timestamptz))")
    touched = sql.SQL(
        "SELECT {key}, max(GREATEST(CASE WHEN {in_s} THEN {s} END, CASE WHEN {in_e} THEN {e} END))"
        " AS {at} FROM {tbl} WHERE {in_s} OR {in_e} GROUP BY {key}"
    ).format(
        key=key,
        in_s=within.format(x=s),
        in_e=within.format(x=e),
        s=s,
        e=e,
        at=sql.Identifier(TIME_COLUMN),
        tbl=t.ident,
    )
    until_at = sql.SQL(
        "{s} <= COALESCE(%(until)s, 'infinity'::timestamptz)"
        " AND ({e} > COALESCE(%(until)s, 'infinity'::timestamptz) OR {c})"
    ).format(s=s, e=e, c=sql.Identifier(t.current))

    def state(when: sql.Composable) -> sql.Composed:
        return sql.SQL("SELECT {cols}, true AS _trempy_present FROM {tbl} WHERE {when}").format(
            cols=_list(t.columns), tbl=t.ident, when=when
        )

    def differs(col: str) -> sql.Composed:
        return sql.SQL(
            "(b._trempy_present IS NULL OR a._trempy_present IS NULL OR b.{c}::text IS DISTINCT FROM a.{c}::text)"
        ).format(c=sql.Identifier(col))

    changed_list = sql.SQL("array_remove(ARRAY[{}]::text[], NULL)").format(
        sql.SQL(", ").join(
            sql.SQL("CASE WHEN {} THEN {} END").format(differs(c), sql.Literal(c)) for c in t.values
        )
        if t.values
        else sql.SQL("")
    )
    sides = [
        sql.SQL("CASE WHEN {d} THEN {side}.{c} END AS {name}").format(
            d=differs(c), side=sql.SQL(side), c=sql.Identifier(c), name=sql.Identifier(c + suffix)
        )
        for c in t.values
        for side, suffix in (("b", BEFORE), ("a", AFTER))
    ]
    op = sql.SQL(
        "CASE WHEN b._trempy_present IS NULL THEN 'insert' WHEN a._trempy_present IS NULL THEN 'delete'"
        " ELSE 'update' END AS {}"
    ).format(sql.Identifier(OP_COLUMN))
    return sql.SQL(
        "WITH k AS ({touched}), b AS ({before}), a AS ({after})"
        " SELECT {kcols}, {op}, k.{at}, {changed} AS {changed_name}{sides}"
        " FROM k LEFT JOIN b USING ({key}) LEFT JOIN a USING ({key})"
        " WHERE b._trempy_present OR a._trempy_present ORDER BY k.{at}, {kcols}{limit}"
    ).format(
        touched=touched,
        before=state(_current_at(t, "since")),
        after=state(until_at),
        kcols=_list(t.key, "k"),
        op=op,
        at=sql.Identifier(TIME_COLUMN),
        changed=changed_list,
        changed_name=sql.Identifier(CHANGED_COLUMN),
        sides=sql.SQL("").join(sql.SQL(", {}").format(x) for x in sides),
        key=key,
        limit=_limit(limit),
    )


__all__ = [
    "HistoryTable",
    "TIME_FORMS",
    "as_of_query",
    "changes_query",
    "instants_query",
    "parse_time",
]
