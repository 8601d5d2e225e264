"""Helpers for the CDC integration tests: settings builders, a ledger of committed source
changes, and whole-target comparisons computed independently of the engine.

How expectations are computed (never from the engine's own code):

- Every source write of a test goes through `Ledger.txn`, which runs the statements in one
  transaction and reads, inside that transaction, the rows in scope before and after them.
  A row whose `xmin` is the transaction's own xid was written by it (this catches updates
  that leave the values unchanged); a key present before and absent after was deleted.
  After COMMIT the ledger reads the transaction's exact commit time with
  `pg_xact_commit_timestamp(xid)`: the test cluster runs with `track_commit_timestamp=on`,
  and PostgreSQL stores the same timestamp that the commit record (hence pgoutput's Commit
  message) carries. So SCD2 version boundaries are compared for equality, not tolerance.
- Upsert expectation: the source table at the end, filtered and transformed in Python.
- SCD2 expectation: per key, versions built from the ledger's events in commit order: a
  visible new row opens a version at its commit time and closes the open one at the same
  time; a row that leaves the filter or is deleted only closes; a TRUNCATE closes all.
  Rows written by the full load open their first version at load time, which the test
  cannot know exactly: those starts are `None` (checked only for order).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from trempy_nb.capture.slot import drop_task_objects, slot_status

Key = tuple[Any, ...]
Row = dict[str, Any]
Pred = Callable[[Row], bool]
Transform = Callable[[Row], Row]

SCD = ("scd_start_date", "scd_end_date", "scd_current")
OPTIONS = "-c TimeZone=UTC -c synchronous_commit=on"


def connect(uri: str, autocommit: bool = True) -> psycopg.Connection:
    """A test connection whose commits are flushed (logical decoding sees only flushed WAL)."""
    return psycopg.connect(uri, autocommit=autocommit, options=OPTIONS)


def execute(uri: str, text: str, params: Sequence[Any] | None = None) -> None:
    with connect(uri) as c:
        c.execute(text, params)  # type: ignore[arg-type]


def rows(uri: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with connect(uri) as c:
        return c.execute(query, params).fetchall()  # type: ignore[arg-type]


# -- settings ----------------------------------------------------------------------------------


def settings(
    name: str,
    src: str,
    tgt: str,
    *,
    rtype: str = "cdc",
    mode: str = "upsert",
    start_mode: str = "reload",
    tables: Sequence[tuple[str, str]] = (("public", "t"),),
    filters: Sequence[dict[str, Any]] = (),
    transformations: Sequence[dict[str, Any]] = (),
    error_handling: dict[str, Any] | None = None,
    **task: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "task": {
            "task_name": name,
            "source": src,
            "target": tgt,
            "replication_type": rtype,
            "start_mode": start_mode,
            "interval_seconds": 0.1,
            "cdc_settings": {"mode": mode},
            **task,
        },
        "tables": [{"schema_name": s, "table_name": t} for s, t in tables],
    }
    if filters:
        doc["filters"] = list(filters)
    if transformations:
        doc["transformations"] = list(transformations)
    if error_handling:
        doc["error_handling"] = error_handling
    return doc


def with_start_mode(doc: dict[str, Any], start_mode: str) -> dict[str, Any]:
    out = {**doc, "task": {**doc["task"], "start_mode": start_mode}}
    return out


def drop_task(source_uri: str, name: str) -> None:
    """Finalizer: the task's slot and publication are gone (no orphan slot after a test)."""
    with psycopg.connect(source_uri, autocommit=True) as conn:
        drop_task_objects(conn, name)
        assert slot_status(conn, f"trempy_{name}") is None


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trempy_nb.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=kw.pop("timeout", 120),
        **kw,
    )


def write_settings(path: Path, doc: dict[str, Any]) -> Path:
    import json

    path.write_text(json.dumps(doc))
    return path


# -- the ledger --------------------------------------------------------------------------------


@dataclass
class Event:
    """One committed source transaction: the new row of every key it wrote (None: deleted)."""

    ts: datetime
    xid: int
    changes: dict[Key, Row | None]
    truncate: bool = False


@dataclass
class Ledger:
    """Committed changes of one source table, in commit order, with exact commit times."""

    uri: str
    table: str = "public.t"
    key: tuple[str, ...] = ("id",)
    initial: dict[Key, Row] = field(default_factory=dict)  # state when tracking began
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._conn = connect(self.uri, autocommit=False)
        self.initial = {k: r for k, (r, _) in self._state(self._conn, None).items()}
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(*self.table.split("."))

    def _state(self, conn: psycopg.Connection, scope: str | None) -> dict[Key, tuple[Row, str]]:
        q = sql.SQL("SELECT xmin::text AS _xmin, * FROM {}").format(self.ident)
        if scope:
            q = sql.SQL("{} WHERE {}").format(q, sql.SQL(scope))  # type: ignore[arg-type]
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        out: dict[Key, tuple[Row, str]] = {}
        for r in cur.execute(q):
            xmin = r.pop("_xmin")
            out[tuple(r[k] for k in self.key)] = (r, xmin)
        return out

    def many(self, statements: Iterable[str | tuple[str, Sequence[Any]]]) -> None:
        """One transaction per statement."""
        for st in statements:
            self.txn(st)

    def begin(self, scope: str | None = None) -> Txn:
        """An open transaction on its own connection (to interleave several); `commit()` records it."""
        return Txn(self, connect(self.uri, autocommit=False), scope, own=True)

    def txn(self, *statements: str | tuple[str, Sequence[Any]], scope: str | None = None) -> Event:
        """Run `statements` in one source transaction and record what it committed.

        `scope` (a WHERE clause) narrows the before/after reads for a big table; it must
        cover every row the statements touch (and exclude rows others change meanwhile).
        """
        t = Txn(self, self._conn, scope, own=False)
        for st in statements:
            t.execute(st)
        return t.commit()


class Txn:
    def __init__(
        self, ledger: Ledger, conn: psycopg.Connection, scope: str | None, own: bool
    ) -> None:
        self.ledger, self.conn, self.scope, self.own = ledger, conn, scope, own
        row = conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
        assert row is not None
        self.xid = row[0]
        self.before = ledger._state(conn, scope)
        self.truncate = False

    def execute(self, st: str | tuple[str, Sequence[Any]]) -> None:
        text, params = (st, None) if isinstance(st, str) else st
        self.truncate = self.truncate or text.lstrip().upper().startswith("TRUNCATE")
        self.conn.execute(text, params)  # type: ignore[arg-type]

    def commit(self) -> Event:
        conn, led = self.conn, self.ledger
        after = led._state(conn, self.scope)
        conn.commit()
        ts_row = conn.execute("SELECT pg_xact_commit_timestamp(%s::xid)", (self.xid,)).fetchone()
        conn.commit()
        if self.own:
            conn.close()
        assert ts_row is not None and ts_row[0] is not None, "track_commit_timestamp must be on"
        changes: dict[Key, Row | None] = {k: None for k in self.before if k not in after}
        for k, (r, xmin) in after.items():
            if xmin == self.xid:
                changes[k] = r
        ev = Event(ts_row[0], int(self.xid), changes, self.truncate)
        led.events.append(ev)
        return ev


# -- expectations ------------------------------------------------------------------------------


def _yes(_: Row) -> bool:
    return True


def _same(r: Row) -> Row:
    return dict(r)


@dataclass
class Version:
    values: Row
    start: datetime | None  # None: a full-load version (opened at load time, not checked)
    end: datetime | None = None

    @property
    def current(self) -> bool:
        return self.end is None


def expected_scd2(
    ledger: Ledger,
    *,
    loaded: bool,
    pred: Pred = _yes,
    transform: Transform = _same,
    events: Sequence[Event] | None = None,
) -> dict[Key, list[Version]]:
    """Version chains from the ledger. `loaded`: the initial rows came in by full load."""
    chains: dict[Key, list[Version]] = {}
    if loaded:
        for k, r in ledger.initial.items():
            if pred(r):
                chains[k] = [Version(transform(r), None)]
    for ev in ledger.events if events is None else events:
        if ev.truncate:
            for versions in chains.values():
                if versions and versions[-1].end is None:
                    versions[-1].end = ev.ts
        for k, r in ev.changes.items():
            versions = chains.setdefault(k, [])
            if versions and versions[-1].end is None:
                versions[-1].end = ev.ts
            if r is not None and pred(r):
                versions.append(Version(transform(r), ev.ts))
    return {k: v for k, v in chains.items() if v}


def source_state(uri: str, table: str = "public.t", key: Sequence[str] = ("id",)) -> dict[Key, Row]:
    with connect(uri) as c:
        cur = c.cursor(row_factory=psycopg.rows.dict_row)
        q = sql.SQL("SELECT * FROM {}").format(sql.Identifier(*table.split(".")))
        return {tuple(r[k] for k in key): r for r in cur.execute(q)}


def expected_upsert(
    uri: str,
    table: str = "public.t",
    key: Sequence[str] = ("id",),
    pred: Pred = _yes,
    transform: Transform = _same,
) -> dict[Key, Row]:
    return {k: transform(r) for k, r in source_state(uri, table, key).items() if pred(r)}


# -- the target --------------------------------------------------------------------------------


def target_rows(uri: str, table: str, order: str = "") -> list[Row]:
    with connect(uri) as c:
        cur = c.cursor(row_factory=psycopg.rows.dict_row)
        q = sql.SQL("SELECT * FROM {}").format(sql.Identifier(*table.split(".")))
        if order:
            q = sql.SQL("{} ORDER BY {}").format(q, sql.SQL(order))  # type: ignore[arg-type]
        return list(cur.execute(q))


def assert_upsert_target(
    tgt: str, table: str, expected: dict[Key, Row], key: Sequence[str] = ("id",)
) -> None:
    actual = target_rows(tgt, table)
    got: dict[Key, Row] = {}
    for r in actual:
        k = tuple(r[c] for c in key)
        assert k not in got, f"key {k} twice in the upsert target"
        got[k] = r
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing keys {missing[:10]}, extra keys {extra[:10]}"
    diff = [(k, expected[k], got[k]) for k in sorted(expected) if expected[k] != got[k]]
    assert not diff, f"{len(diff)} rows differ, first: {_short(diff[0])}"


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) < 600 else text[:600] + "..."


def assert_scd2_target(
    tgt: str,
    table: str,
    expected: dict[Key, list[Version]],
    key: Sequence[str] = ("id",),
    scd: Sequence[str] = SCD,
) -> None:
    """The whole SCD2 target equals the expected chains: values, starts, ends, current flags."""
    start_c, end_c, cur_c = scd
    actual: dict[Key, list[Row]] = {}
    for r in target_rows(tgt, table):
        actual.setdefault(tuple(r[c] for c in key), []).append(r)
    assert sorted(actual) == sorted(expected), (
        f"keys differ: missing {sorted(set(expected) - set(actual))[:10]},"
        f" extra {sorted(set(actual) - set(expected))[:10]}"
    )
    for k, versions in actual.items():
        versions.sort(key=lambda r: (r[start_c], r[end_c] is None, r[end_c]))
        assert_chain_invariants(k, versions, scd)
        exp = expected[k]
        got_values = [{c: v for c, v in r.items() if c not in scd} for r in versions]
        assert got_values == [e.values for e in exp], (
            f"key {k}: values {_short(got_values)} != {_short([e.values for e in exp])}"
        )
        for r, e in zip(versions, exp, strict=True):
            if e.start is not None:
                assert r[start_c] == e.start, (
                    f"key {k}: version start {r[start_c]} != commit time {e.start}"
                )
            assert r[end_c] == e.end, f"key {k}: version end {r[end_c]} != {e.end}"
            assert r[cur_c] is e.current, f"key {k}: current flag {r[cur_c]} for end {r[end_c]}"


def assert_chain_invariants(k: Key, versions: list[Row], scd: Sequence[str] = SCD) -> None:
    """Sorted by start: at most one current version, the last; versions never overlap."""
    start_c, end_c, cur_c = scd
    currents = [r for r in versions if r[cur_c]]
    assert len(currents) <= 1, f"key {k}: {len(currents)} current versions"
    for a, b in zip(versions, versions[1:], strict=False):
        assert a[end_c] is not None and not a[cur_c], f"key {k}: a non-last version is open"
        assert a[end_c] <= b[start_c], f"key {k}: versions overlap ({a[end_c]} > {b[start_c]})"
    for r in versions:
        assert r[end_c] is None or r[start_c] <= r[end_c], f"key {k}: version ends before it starts"
        assert r[cur_c] is (r[end_c] is None), f"key {k}: current flag disagrees with end"


def slots(uri: str) -> list[str]:
    return [
        r[0]
        for r in rows(
            uri,
            "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()",
        )
    ]


def publications(uri: str) -> list[str]:
    return [r[0] for r in rows(uri, "SELECT pubname::text FROM pg_publication")]


@contextlib.contextmanager
def ledger(uri: str, table: str = "public.t", key: tuple[str, ...] = ("id",)) -> Iterator[Ledger]:
    led = Ledger(uri, table, key)
    try:
        yield led
    finally:
        led.close()


def assert_scd2_suffix(
    tgt: str, table: str, led: Ledger, key: Sequence[str] = ("id",), scd: Sequence[str] = SCD
) -> None:
    """SCD2 after a full load that ran while the ledger's writes went on (the snapshot point is
    unknown to the test): every row state must be unique per key (a counter column), the first
    version is some state S[k] of the key, and the versions after it are exactly the states
    committed after S[k], opened at their commit times: nothing lost, nothing applied twice."""
    start_c, end_c, cur_c = scd
    states: dict[Key, list[tuple[Row | None, datetime | None]]] = {
        k: [(r, None)] for k, r in led.initial.items()
    }
    for ev in led.events:
        for k, r in ev.changes.items():
            states.setdefault(k, []).append((r, ev.ts))
    actual: dict[Key, list[Row]] = {}
    for r in target_rows(tgt, table):
        actual.setdefault(tuple(r[c] for c in key), []).append(r)
    for k, versions in actual.items():
        versions.sort(key=lambda r: r[start_c])
        assert_chain_invariants(k, versions, scd)
        seq = states.get(k, [])
        values = [{c: v for c, v in r.items() if c not in scd} for r in versions]
        idx = [i for i, (r, _) in enumerate(seq) if r == values[0]]
        assert len(idx) == 1, f"key {k}: first version {values[0]} is not exactly one source state"
        rest = seq[idx[0] :]
        exp_values = [r for r, _ in rest if r is not None]
        assert values == exp_values, (
            f"key {k}: versions {_short(values)} != states {_short(exp_values)}"
        )
        live = [(r, ts) for r, ts in rest[1:]]
        for _i, (r, ts) in enumerate(live):
            if r is not None:  # a version opened at this commit
                pos = [j for j, v in enumerate(values) if v == r]
                assert versions[pos[0]][start_c] == ts, f"key {k}: start != commit time {ts}"
        last = rest[-1][0]
        assert (last is None) == (not versions[-1][cur_c]), f"key {k}: current flag vs source"
    gone = [
        k for k, seq in states.items() if any(r is not None for r, _ in seq) and k not in actual
    ]
    assert not gone, f"keys never on the target: {gone[:10]}"
