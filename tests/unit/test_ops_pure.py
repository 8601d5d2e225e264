"""The pure parts of ops: orphan rules, the fill projection, --since and duration parsing, log lines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from trempy_nb.errors import SettingsError
from trempy_nb.ops import logsearch
from trempy_nb.ops.slots import TaskInfo, classify, fill_eta, parse_duration, task_of_slot

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)


def slot(name: str, active: bool = False, retained: int = 100) -> dict[str, object]:
    return {"slot_name": name, "plugin": "pgoutput", "slot_type": "logical", "database": "db",
            "active": active, "active_pid": 7 if active else None, "restart_lsn": "0/10",
            "confirmed_flush_lsn": "0/20", "retained_bytes": retained, "lag_bytes": retained - 16,
            "wal_status": "reserved", "safe_wal_size": None, "lag_s": None}


def test_task_of_slot() -> None:
    assert task_of_slot("trempy_hr_to_dw") == "hr_to_dw"
    assert task_of_slot("debezium") is None and task_of_slot("trempy_") is None
    assert task_of_slot("trempy_Bad-Name") is None


def test_orphan_rules() -> None:
    old = NOW - timedelta(hours=30)
    recent = NOW - timedelta(hours=2)
    tasks = {
        "gone_quiet": TaskInfo("gone_quiet", state="stopped", last_seen=old),
        "recent": TaskInfo("recent", state="stopped", last_seen=recent),
        "wanted": TaskInfo("wanted", desired="running", state="failed", last_seen=old),
        "owned": TaskInfo("owned", state="stopped", owner="w1", last_seen=old),
        "streaming": TaskInfo("streaming", state="streaming", last_seen=old),
    }
    rows = [slot("trempy_unknown"), slot("trempy_gone_quiet"), slot("trempy_recent"), slot("trempy_wanted"),
            slot("trempy_owned"), slot("trempy_streaming"), slot("trempy_active_ghost", active=True),
            slot("other_tool")]
    views = {v.slot_name: v for v in classify(rows, tasks, now=NOW)}
    orphans = {n for n, v in views.items() if v.orphan}
    assert orphans == {"trempy_unknown", "trempy_gone_quiet"}
    assert "unknown" in (views["trempy_unknown"].orphan_reason or "")
    assert views["trempy_gone_quiet"].heartbeat_age_s == 30 * 3600
    assert views["other_tool"].task is None
    # a shorter threshold makes the recently stopped one an orphan too
    short = {v.slot_name for v in classify(rows, tasks, now=NOW, orphan_after=timedelta(hours=1)) if v.orphan}
    assert short == {"trempy_unknown", "trempy_gone_quiet", "trempy_recent"}


def test_fill_projection() -> None:
    assert fill_eta(100, None, None, 10.0) is None  # unlimited
    assert fill_eta(100, None, 1100, 0.0) is None  # no WAL written during the sample
    assert fill_eta(100, None, 1100, 10.0) == 100.0
    assert fill_eta(100, 500, 1100, 10.0) == 50.0  # safe_wal_size is what the server says is left
    assert fill_eta(2000, None, 1100, 10.0) == 0.0


def test_durations_and_since() -> None:
    assert parse_duration("90s") == timedelta(seconds=90) and parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ValueError, match="30s, 15m, 1h"):
        parse_duration("soon")
    assert logsearch.parse_since("1h", now=NOW) == NOW - timedelta(hours=1)
    assert logsearch.parse_since("-15m", now=NOW) == NOW - timedelta(minutes=15)
    assert logsearch.parse_since("2026-01-01T10:00") == datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
    assert logsearch.parse_since("2026-01-01T10:00+02:00") == datetime(2026, 1, 1, 8, tzinfo=timezone.utc)
    for bad in ("yesterday", "1 fortnight", "12"):
        with pytest.raises(SettingsError, match="30s, 15m, 1h, 2d") as err:
            logsearch.parse_since(bad)
        assert err.value.exit_code == 2
    with pytest.raises(SettingsError, match="warning"):
        logsearch.check_level("loud")
    assert logsearch.check_level("warn") == "WARNING"


def test_log_line() -> None:
    text = logsearch.line({"ts": "2026-01-02T12:00:00.123456+00:00", "level": "INFO", "task": "t1",
                           "table": "public.t", "message": "batch applied",
                           "fields": {"rows": {"insert": 3}, "ms": 12}})
    assert text.startswith("2026-01-02 12:00:00.123 INFO    t1 [public.t] batch applied")
    assert 'rows={"insert": 3}' in text and "ms=12" in text
