"""Searching the stored logs: `trempy-nb logs`, `%trempy logs` and the dashboard's log pane.

The store does the filtering (`MetadataStore.search_logs`: level and above, case-insensitive
substring of the message, exact schema.table, since a time, after an id, newest `limit`), so
every surface asks for a bounded page and never loads the whole log. `--since` takes a relative
age (30s, 15m, 1h, 2d, 1w; a leading '-' is allowed) or an ISO time; a naive time is UTC.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl

from trempy_nb.connections import mask
from trempy_nb.errors import SettingsError

__all__ = ["LEVELS", "SINCE_FORMS", "follow", "line", "parse_since", "records", "search"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SINCE_FORMS = (
    "a relative age (30s, 15m, 1h, 2d, 1w) or an ISO time (2024-05-01, 2024-05-01T12:30,"
    " 2024-05-01T12:30:00+02:00; a time without zone is UTC)"
)
_RELATIVE = re.compile(r"^-?\s*(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
JSON_KEYS = ("id", "ts", "level", "task", "table", "run_id", "worker", "message", "fields")


def parse_since(text: str | datetime | None, now: datetime | None = None) -> datetime | None:
    """The instant a `--since` value means (aware UTC); SettingsError (exit 2) listing the forms."""
    if text is None or isinstance(text, datetime):
        return _aware(text) if text is not None else None
    raw = text.strip()
    match = _RELATIVE.match(raw)
    if match:
        return (now or datetime.now(timezone.utc)) - timedelta(
            **{_UNITS[match.group(2).lower()]: float(match.group(1))}
        )
    try:
        return _aware(datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        raise SettingsError(f"--since {text!r} is not a time: give {SINCE_FORMS}") from None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def check_level(level: str | None) -> str | None:
    """The level name upper-cased, or SettingsError listing the levels."""
    if level is None:
        return None
    name = level.strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LEVELS:
        raise SettingsError(f"unknown level {level!r}: give one of {', '.join(x.lower() for x in LEVELS)}")
    return name


def search(
    store: Any,
    task: str | None = None,
    *,
    level: str | None = None,
    grep: str | None = None,
    table: str | None = None,
    since: str | datetime | None = None,
    after_id: int | None = None,
    limit: int = 200,
) -> pl.DataFrame:
    """The newest `limit` matching records in id order (the store filters; bounded)."""
    if limit is not None and limit < 1:
        raise SettingsError(f"--limit must be at least 1, not {limit}")
    frame: pl.DataFrame = store.search_logs(
        task, level=check_level(level), grep=grep or None, table=table or None,
        since=parse_since(since), after_id=after_id, limit=int(limit),
    )
    return frame


def records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: ts ISO-8601, fields parsed from their JSON text, text masked."""
    out = []
    for row in frame.iter_rows(named=True):
        item: dict[str, Any] = {}
        for key in JSON_KEYS:
            value = row.get(key)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif key == "fields" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            elif isinstance(value, str):
                value = mask(value)
            item[key] = value
        out.append(item)
    return out


def line(record: dict[str, Any]) -> str:
    """One readable line: time, level, task, [table], message, then the structured fields."""
    ts = str(record.get("ts") or "")[:23].replace("T", " ")
    parts = [ts, f"{record.get('level') or '':<7}", record.get("task") or "-"]
    if record.get("table"):
        parts.append(f"[{record['table']}]")
    parts.append(" ".join(str(record.get("message") or "").split()))
    fields = record.get("fields")
    if isinstance(fields, dict) and fields:
        parts.append(" ".join(f"{k}={_compact(v)}" for k, v in fields.items()))
    return mask(" ".join(parts))


def _compact(value: Any) -> str:
    return value if isinstance(value, str) and " " not in value else json.dumps(value, default=str)


def follow(
    store: Any,
    task: str | None,
    emit: Callable[[dict[str, Any]], None],
    *,
    after_id: int | None,
    level: str | None = None,
    grep: str | None = None,
    table: str | None = None,
    interval: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    page: int = 500,
) -> int | None:
    """Emit each new matching record as it is written (poll by id); returns the last id seen.
    Runs until `stop()` is true (the CLI: until Ctrl-C)."""
    last = after_id
    while not stop():
        frame = search(store, task, level=level, grep=grep, table=table, after_id=last, limit=page)
        for rec in records(frame):
            emit(rec)
            last = rec["id"]
        if frame.height < page:
            time.sleep(interval)
    return last
