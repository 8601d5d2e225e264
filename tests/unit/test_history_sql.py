"""Time-travel SQL builders and time parsing (pure: rendered with as_string, no database)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from trempy_nb.errors import SettingsError
from trempy_nb.writer.history import (
    HistoryTable,
    as_of_query,
    changes_query,
    instants_query,
    parse_time,
)

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=timezone.utc)
T = HistoryTable(
    schema="dw",
    table='odd "name"',
    key=("k1", "k2"),
    columns=("k1", "k2", "v", "Weird col"),
    start="s_from",
    end="s_to",
    current="is_cur",
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-1d", NOW - timedelta(days=1)),
        ("-2h", NOW - timedelta(hours=2)),
        ("-30m", NOW - timedelta(minutes=30)),
        (" -45S ", NOW - timedelta(seconds=45)),
        ("-1w", NOW - timedelta(weeks=1)),
        ("-1.5h", NOW - timedelta(minutes=90)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=timezone.utc)),
        ("2024-05-01 12:30", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        ("2024-05-01T14:30:00+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
    ],
)
def test_parse_time_forms(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


def test_parse_time_objects_naive_is_utc() -> None:
    assert parse_time(datetime(2024, 1, 1, 8)) == datetime(2024, 1, 1, 8, tzinfo=timezone.utc)
    aware = datetime(2024, 1, 1, 8, tzinfo=timezone(timedelta(hours=3)))
    assert parse_time(aware) == aware
    assert parse_time(date(2024, 2, 3)) == datetime(2024, 2, 3, tzinfo=timezone.utc)


@pytest.mark.parametrize("bad", ["yesterday", "", "1d", "-1y", "2024-13-01", 42, None])
def test_parse_time_bad_input_names_the_accepted_forms(bad: object) -> None:
    with pytest.raises(SettingsError) as info:
        parse_time(bad, now=NOW)
    text = str(info.value)
    assert "cannot read the time" in text and "-1d" in text and "ISO" in text
    assert "\n" not in text


def test_as_of_query_quotes_every_name_and_binds_the_time() -> None:
    q = as_of_query(T, limit=7).as_string(None)
    assert q == (
        'SELECT "k1", "k2", "v", "Weird col" FROM "dw"."odd ""name""" WHERE "s_from" <= %(ts)s'
        ' AND ("s_to" > %(ts)s OR "is_cur") ORDER BY "k1", "k2" LIMIT 7'
    )
    assert "LIMIT" not in as_of_query(T).as_string(None)


def test_changes_query_shape() -> None:
    q = changes_query(T).as_string(None)
    assert q.count("%(since)s") >= 3 and "%(until)s" in q
    assert 'GROUP BY "k1", "k2"' in q and 'USING ("k1", "k2")' in q
    for col in ("v", "Weird col"):  # non-key columns get before/after, compared as text
        assert f'AS "{col}_before"' in q and f'AS "{col}_after"' in q
        assert f'b."{col}"::text IS DISTINCT FROM a."{col}"::text' in q
    assert '"k1_before"' not in q  # keys are the row's identity, not a change
    assert "'insert'" in q and "'delete'" in q and "'update'" in q
    assert q.endswith('ORDER BY k."changed_at", "k"."k1", "k"."k2"')
    assert changes_query(T, limit=3).as_string(None).endswith("LIMIT 3")


def test_changes_query_key_only_table() -> None:
    keys_only = HistoryTable("s", "t", ("id",), ("id",))
    q = changes_query(keys_only).as_string(None)
    assert "ARRAY[]::text[]" in q and "_before" not in q


def test_instants_query() -> None:
    q = instants_query(T, 50).as_string(None)
    assert q == (
        'SELECT x FROM (SELECT "s_from" AS x FROM "dw"."odd ""name""" UNION SELECT "s_to" FROM'
        ' "dw"."odd ""name""" WHERE "s_to" IS NOT NULL) u ORDER BY x DESC LIMIT 50'
    )
