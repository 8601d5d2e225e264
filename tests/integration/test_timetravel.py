"""Time travel on a real SCD2 target built by CDC: `Task.as_of` and `Task.changes`.

The source's state is captured by the test right after each transaction commits, together
with that transaction's exact commit time (track_commit_timestamp=on, the same time pgoutput
carries and the SCD2 versions open and close at). `as_of` at any instant between two commits
must equal the snapshot taken after the first of them; `changes` over an interval must list
exactly the keys written by the transactions committed inside it that exist at either end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import (
    drop_task,
    execute,
    ledger,
    settings,
    source_state,
    with_start_mode,
)
from trempy_nb.embedded import Cluster, start_cluster
from trempy_nb.errors import SettingsError
from trempy_nb.task import Task

COLS = ("id", "v", "s")


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Cluster]:
    cluster = start_cluster(conf={"track_commit_timestamp": "on"})
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "tt" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


def _run(doc: dict[str, Any], start_mode: str | None = None) -> Task:
    task = Task.from_settings(with_start_mode(doc, start_mode) if start_mode else doc)
    task.run(until_caught_up=True, progress=False)
    return task


def _as_dict(frame: Any) -> dict[int, tuple[Any, ...]]:
    return {r["id"]: tuple(r[c] for c in COLS) for r in frame.iter_rows(named=True)}


def _snapshot(uri: str) -> dict[int, tuple[Any, ...]]:
    return {k[0]: tuple(r[c] for c in COLS) for k, r in source_state(uri).items()}


def test_as_of_and_changes_match_source_snapshots(
    source_uri: str, target_uri: str, trempy_home: Path, task_name: str
) -> None:
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int, s text)")
    execute(source_uri, "INSERT INTO t SELECT i, i, 's' || i FROM generate_series(1, 20) i")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode="scd2")
    task = _run(doc)
    # (instant, state): the state after each commit, from the loaded state on
    marks: list[tuple[datetime, dict[int, tuple[Any, ...]]]] = []
    with ledger(source_uri) as led:
        loaded = led.initial
        statements = [
            "UPDATE t SET v = v + 100 WHERE id <= 5",
            "DELETE FROM t WHERE id IN (6, 7)",
            "INSERT INTO t VALUES (21, 21, 'new'), (22, 22, NULL)",
            "UPDATE t SET s = s WHERE id = 8",  # same values: a new version all the same
            "UPDATE t SET s = 'x' WHERE id IN (1, 21)",
            "DELETE FROM t WHERE id = 22",
            "INSERT INTO t VALUES (6, 600, 'back')",
            "UPDATE t SET v = -v WHERE id BETWEEN 9 AND 12",
        ]
        for st in statements:
            ev = led.txn(st)
            marks.append((ev.ts, _snapshot(source_uri)))
        events = list(led.events)
    task = _run(doc, "continue")

    assert _as_dict(task.as_of("now")) == marks[-1][1]
    for i, (ts, state) in enumerate(marks):
        # at the commit instant itself, and between it and the next commit
        assert _as_dict(task.as_of(ts)) == state, f"as_of at commit {i}"
        nxt = marks[i + 1][0] if i + 1 < len(marks) else ts + timedelta(seconds=1)
        middle = ts + (nxt - ts) / 2
        assert _as_dict(task.as_of(middle.isoformat())) == state, f"as_of after commit {i}"
    before_first = marks[0][0] - timedelta(microseconds=1)
    assert _as_dict(task.as_of(before_first)) == {
        k[0]: tuple(r[c] for c in COLS) for k, r in loaded.items()
    }
    assert task.as_of(marks[-1][0], limit=3).height == 3

    # changes over several intervals: exactly the keys written in (since, until]
    for lo, hi in [(0, 3), (1, 5), (2, 7), (0, 7), (4, 5)]:
        since, until = marks[lo][0], marks[hi][0]
        before, after = marks[lo][1], marks[hi][1]
        written = {k[0] for ev in events if since < ev.ts <= until for k in ev.changes}
        expected = {k for k in written if k in before or k in after}
        got = task.changes(since, until)
        assert set(got["id"].to_list()) == expected, (lo, hi)
        assert got.height == len(expected)
        for r in got.iter_rows(named=True):
            k = r["id"]
            op = "insert" if k not in before else "delete" if k not in after else "update"
            assert r["operation"] == op
            last = max(ev.ts for ev in events if since < ev.ts <= until and (k,) in ev.changes)
            assert r["changed_at"] == last
            old, new = before.get(k), after.get(k)
            changed = [
                c
                for i, c in enumerate(COLS[1:], 1)
                if old is None or new is None or old[i] != new[i]
            ]
            assert r["changed_columns"] == changed
            for i, c in enumerate(COLS[1:], 1):
                if c in changed:
                    assert r[f"{c}_before"] == (old[i] if old else None)
                    assert r[f"{c}_after"] == (new[i] if new else None)
                else:
                    assert r[f"{c}_before"] is None and r[f"{c}_after"] is None
    # until omitted: up to now
    everything = task.changes(before_first)
    written = {k[0] for ev in events for k in ev.changes}
    # 22 was inserted and deleted inside the interval: absent at both ends, not a change
    assert set(everything["id"].to_list()) == written - {22}
    # the key updated to equal values is listed, with no changed column
    (same,) = [r for r in task.changes(marks[2][0], marks[3][0]).iter_rows(named=True)]
    assert same["id"] == 8 and same["operation"] == "update" and same["changed_columns"] == []
    # by target name too, and bounded
    assert task.changes(before_first, table="public.t", limit=2).height == 2


def test_bad_input(source_uri: str, target_uri: str, trempy_home: Path, task_name: str) -> None:
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int, s text)")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load_and_cdc", mode="upsert")
    task = _run(doc)
    with pytest.raises(SettingsError, match="as-of needs an SCD2 target.*upsert"):
        task.as_of("now")
    with pytest.raises(SettingsError, match="changes needs an SCD2 target"):
        task.changes("-1d")
    scd2 = Task.from_settings({**doc, "task": {**doc["task"], "cdc_settings": {"mode": "scd2"}}})
    with pytest.raises(SettingsError, match=r"cannot read the time 'yesterday'.*-1d"):
        scd2.as_of("yesterday")
    with pytest.raises(SettingsError, match="until .* is before since"):
        scd2.changes("-1h", "-2h")
    with pytest.raises(SettingsError, match="not part of task"):
        scd2.as_of("now", table="nowhere")
