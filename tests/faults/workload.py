"""Deterministic source workload and the ledger of what committed.

The workload is the only writer of its tables, so it keeps an exact model of them: every
statement it sends has explicit values (or a deterministic expression such as `v = v + 1`),
and each transaction's effect per key (row before, row after) is known without reading back.

Operations: single and multi-row inserts, updates of non-key columns (rows move in and out
of the filter `grp < 8`), updates to the same values, multi-row updates, primary-key changes,
deletes, and delete + re-insert of one key in one transaction. Values include NULLs, quotes,
backslashes, tabs, newlines and non-ASCII text.

The ledger: a transaction whose statements failed was rolled back (not committed). A
transaction whose COMMIT raised is *indeterminate*: it is resolved with
`pg_xact_status(xid)` once the source answers again, before the next transaction is
generated, so the model never diverges from the source.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from tests.faults.harness import OPTIONS, wait_until

COLS = ("id", "grp", "v", "s", "n", "d")
FILTER_LT = 8  # the filter of filtered tables: grp < 8
Row = tuple[Any, ...]
TKey = tuple[str, int]  # (table name, id)

_TEXT = [
    "plain",
    "it's",
    'say "hi"',
    "back\\slash",
    "tab\there",
    "new\nline",
    "ünïcødé ✓",
    "日本語",
    "",
    "semi;colon",
    "  spaced  ",
    "% percent _",
]
_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class WTable:
    name: str
    schema: str = "public"
    filtered: bool = False
    key_changes: bool = True

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)

    def visible(self, row: Row | None) -> bool:
        return row is not None and (not self.filtered or row[1] < FILTER_LT)

    def filter_doc(self) -> dict[str, Any]:
        return {
            "schema_name": self.schema,
            "table_name": self.name,
            "column_name": "grp",
            "filter_type": "less_than",
            "value": FILTER_LT,
        }

    def ddl(self) -> sql.Composed:
        return sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, grp int NOT NULL, v bigint, s text,"
            " n numeric(12,2), d timestamptz)"
        ).format(self.ident)


@dataclass
class Txn:
    idx: int
    xid: str
    n_ops: int
    effects: dict[TKey, tuple[Row | None, Row | None]]  # key -> (before, after)
    status: str = "committed"  # committed | indeterminate-committed
    ts: datetime | None = None  # commit time, filled by the checker


@dataclass
class Ledger:
    tables: dict[str, WTable]
    state: dict[str, dict[int, Row]] = field(default_factory=dict)
    txns: list[Txn] = field(default_factory=list)
    aborted: int = 0
    aborted_ops: int = 0
    indeterminate: int = 0
    indeterminate_ops: int = 0
    indeterminate_committed: int = 0
    initial: dict[str, dict[int, Row]] = field(
        default_factory=dict
    )  # rows present before the ledger

    def __post_init__(self) -> None:
        for t in self.tables:
            self.state.setdefault(t, {})
        self.lock = threading.Lock()

    @property
    def committed_ops(self) -> int:
        return sum(t.n_ops for t in self.txns)

    def commit(self, txn: Txn) -> None:
        with self.lock:
            txn.idx = len(self.txns)
            self.txns.append(txn)
            for (table, key), (_before, after) in txn.effects.items():
                if after is None:
                    self.state[table].pop(key, None)
                else:
                    self.state[table][key] = after

    def mark(self) -> int:
        """A position in the ledger (number of committed transactions so far)."""
        return len(self.txns)

    def report(self) -> None:
        from tests.faults.report import RESULTS

        if getattr(self, "_reported", False):
            return
        self._reported = True
        RESULTS.ledger(
            self.committed_ops,
            self.indeterminate_ops,
            sum(t.n_ops for t in self.txns if t.status != "committed"),
            len(self.txns),
        )


class TxnBuilder:
    """Statements of one transaction plus their effect on the model (an overlay on the ledger)."""

    def __init__(self, wl: Workload, table: WTable) -> None:
        self.wl, self.table = wl, table
        self.ops: list[tuple[sql.Composable, tuple[Any, ...]]] = []
        self.overlay: dict[int, Row | None] = {}
        self.before: dict[int, Row | None] = {}
        self.n_ops = 0

    def _get(self, key: int) -> Row | None:
        if key in self.overlay:
            return self.overlay[key]
        return self.wl.ledger.state[self.table.name].get(key)

    def _set(self, key: int, row: Row | None) -> None:
        if key not in self.before:
            self.before[key] = self.wl.ledger.state[self.table.name].get(key)
        self.overlay[key] = row

    def _pick(self) -> int | None:
        keys = self.wl.keys(self.table.name)
        for _ in range(5):
            if not keys:
                return None
            k = self.wl.rng.choice(keys)
            if self._get(k) is not None:
                return k
        return None

    # operations ------------------------------------------------------------------------
    def insert(self, n: int = 1) -> None:
        rows = [self.wl.new_row(self.wl.next_id(self.table.name)) for _ in range(n)]
        values = sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s, %s, %s)") for _ in rows)
        self.ops.append(
            (
                sql.SQL("INSERT INTO {} (id, grp, v, s, n, d) VALUES {}").format(
                    self.table.ident, values
                ),
                tuple(x for r in rows for x in r),
            )
        )
        for r in rows:
            self._set(r[0], r)
        self.n_ops += n

    def update(self) -> None:
        k = self._pick()
        if k is None:
            return self.insert()
        r = self.wl.new_row(k)
        self.ops.append(
            (
                sql.SQL(
                    "UPDATE {} SET grp = %s, v = %s, s = %s, n = %s, d = %s WHERE id = %s"
                ).format(self.table.ident),
                (*r[1:], k),
            )
        )
        self._set(k, r)
        self.n_ops += 1

    def update_same(self) -> None:
        k = self._pick()
        if k is None:
            return self.insert()
        self.ops.append(
            (sql.SQL("UPDATE {} SET v = v WHERE id = %s").format(self.table.ident), (k,))
        )
        self._set(k, self._get(k))
        self.n_ops += 1

    def update_many(self) -> None:
        keys = sorted(
            {k for k in (self._pick() for _ in range(self.wl.rng.randint(2, 8))) if k is not None}
        )
        if not keys:
            return self.insert()
        self.ops.append(
            (
                sql.SQL("UPDATE {} SET v = v + 1 WHERE id = ANY(%s)").format(self.table.ident),
                (keys,),
            )
        )
        for k in keys:
            r = self._get(k)
            assert r is not None
            self._set(k, (r[0], r[1], None if r[2] is None else r[2] + 1, *r[3:]))
        self.n_ops += len(keys)

    def change_key(self) -> None:
        k = self._pick()
        if k is None or not self.table.key_changes:
            return self.update()
        new = self.wl.next_id(self.table.name)
        r = self._get(k)
        assert r is not None
        self.ops.append(
            (sql.SQL("UPDATE {} SET id = %s WHERE id = %s").format(self.table.ident), (new, k))
        )
        self._set(k, None)
        self._set(new, (new, *r[1:]))
        self.n_ops += 1

    def delete(self) -> None:
        k = self._pick()
        if k is None:
            return self.insert()
        self.ops.append((sql.SQL("DELETE FROM {} WHERE id = %s").format(self.table.ident), (k,)))
        self._set(k, None)
        self.n_ops += 1

    def delete_reinsert(self) -> None:
        k = self._pick()
        if k is None:
            return self.insert()
        r = self.wl.new_row(k)
        self.ops.append((sql.SQL("DELETE FROM {} WHERE id = %s").format(self.table.ident), (k,)))
        self.ops.append(
            (
                sql.SQL(
                    "INSERT INTO {} (id, grp, v, s, n, d) VALUES (%s, %s, %s, %s, %s, %s)"
                ).format(self.table.ident),
                r,
            )
        )
        self._set(k, r)
        self.n_ops += 2

    def random_ops(self, n: int) -> TxnBuilder:
        rng = self.wl.rng
        choices = [
            self.insert,
            self.update,
            self.update,
            self.update_same,
            self.update_many,
            self.change_key,
            self.delete,
            self.delete_reinsert,
        ]
        weights = [5, 5, 4, 1, 1, 1, 3, 1]
        for _ in range(n):
            op = rng.choices(choices, weights)[0]
            if op == self.insert and rng.random() < 0.2:
                self.insert(rng.randint(2, 12))
            else:
                op()
        return self

    def effects(self) -> dict[TKey, tuple[Row | None, Row | None]]:
        return {(self.table.name, k): (self.before[k], self.overlay[k]) for k in self.overlay}


class Workload:
    """Writes the source tables through one connection and keeps the ledger."""

    def __init__(
        self, uri: str, tables: list[WTable], seed: int = 1, ledger: Ledger | None = None
    ) -> None:
        self.uri = uri
        self.tables = tables
        self.rng = random.Random(seed)
        self.ledger = ledger or Ledger({t.name: t for t in tables})
        self._keys: dict[str, list[int]] = {t.name: [] for t in tables}
        self._keys_version = -1
        self._next: dict[str, int] = {t.name: 0 for t in tables}
        self.conn: psycopg.Connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    # model helpers ---------------------------------------------------------------------
    def next_id(self, table: str) -> int:
        self._next[table] += 1
        return self._next[table]

    def keys(self, table: str) -> list[int]:
        if self._keys_version != len(self.ledger.txns):
            self._keys = {t: sorted(s) for t, s in self.ledger.state.items()}
            self._keys_version = len(self.ledger.txns)
        return self._keys[table]

    def new_row(self, key: int) -> Row:
        rng = self.rng
        v = None if rng.random() < 0.1 else rng.randint(-(10**12), 10**12)
        s = None if rng.random() < 0.1 else rng.choice(_TEXT) + str(rng.randint(0, 999))
        n = None if rng.random() < 0.1 else Decimal(rng.randint(-(10**9), 10**9)) / 100
        d = None if rng.random() < 0.1 else _EPOCH + timedelta(microseconds=rng.randint(0, 10**14))
        return (key, rng.randint(0, 9), v, s, n, d)

    # connections -----------------------------------------------------------------------
    def _conn(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.uri, options=OPTIONS, connect_timeout=5)
        return self.conn

    def close(self) -> None:
        self.stop()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()

    def create_tables(self) -> None:
        with psycopg.connect(self.uri, autocommit=True, options=OPTIONS) as c:
            for t in self.tables:
                c.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(t.schema))
                )
                c.execute(t.ddl())

    def seed(self, rows_per_table: int) -> None:
        for t in self.tables:
            left = rows_per_table
            while left > 0:
                b = TxnBuilder(self, t)
                b.insert(min(left, 500))
                left -= 500
                assert self.execute(b.ops, b.effects(), b.n_ops) is not None

    def bulk_seed(self, t: WTable, n: int) -> None:
        """Many rows fast (one INSERT ... SELECT), read back into the model as rows that existed
        before the ledger started (a full load opens their SCD2 versions)."""
        first = self._next[t.name] + 1
        self._next[t.name] += n
        with psycopg.connect(self.uri, autocommit=True, options=OPTIONS) as c:
            c.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT i, i %% 10, i * 7919, 'bulk ' || i, (i %% 1000) / 4.0,"
                    " timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'"
                    " FROM generate_series(%s::bigint, %s::bigint) i"
                ).format(t.ident),
                (first, first + n - 1),
            )
            rows = c.execute(
                sql.SQL("SELECT id, grp, v, s, n, d FROM {} WHERE id >= %s").format(t.ident),
                (first,),
            ).fetchall()
        for r in rows:
            self.ledger.state[t.name][r[0]] = tuple(r)
            self.ledger.initial.setdefault(t.name, {})[r[0]] = tuple(r)
        self._keys_version = -1

    def bulk_txn(self, t: WTable, n: int, ratio_filtered: bool = True) -> Txn:
        """One ledgered transaction inserting `n` rows with INSERT ... SELECT (a large transaction)."""
        first = self._next[t.name] + 1
        self._next[t.name] += n
        with psycopg.connect(self.uri, options=OPTIONS) as c:
            xid = c.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
            c.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT i, i %% 10, i * 31, 'big ' || i, (i %% 1000) / 4.0, NULL"
                    " FROM generate_series(%s::bigint, %s::bigint) i"
                ).format(t.ident),
                (first, first + n - 1),
            )
            rows = c.execute(
                sql.SQL("SELECT id, grp, v, s, n, d FROM {} WHERE id >= %s").format(t.ident),
                (first,),
            ).fetchall()
            c.commit()
        txn = Txn(-1, xid, n, {(t.name, r[0]): (None, tuple(r)) for r in rows})
        self.ledger.commit(txn)
        return txn

    def copy_txn(self, t: WTable, n: int) -> Txn:
        """One ledgered transaction loading `n` rows with COPY FROM STDIN."""
        rows = [self.new_row(self.next_id(t.name)) for _ in range(n)]
        with psycopg.connect(self.uri, options=OPTIONS) as c:
            xid = c.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
            with c.cursor().copy(
                sql.SQL("COPY {} (id, grp, v, s, n, d) FROM STDIN").format(t.ident)
            ) as cp:
                for r in rows:
                    cp.write_row(r)
            c.commit()
        txn = Txn(-1, xid, n, {(t.name, r[0]): (None, r) for r in rows})
        self.ledger.commit(txn)
        return txn

    def begin(self, t: WTable) -> OpenTxn:
        """A transaction kept open across other work (interleaving); see OpenTxn."""
        return OpenTxn(self, t)

    # execution ---------------------------------------------------------------------------
    def execute(
        self,
        ops: list[tuple[sql.Composable, tuple[Any, ...]]],
        effects: dict[TKey, tuple[Row | None, Row | None]],
        n_ops: int,
    ) -> Txn | None:
        """Run one transaction; ledger it as committed, aborted, or indeterminate (then resolved)."""
        try:
            conn = self._conn()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_current_xact_id()::text")
                row = cur.fetchone()
                assert row is not None
                xid = row[0]
                for stmt, params in ops:
                    cur.execute(stmt, params)
        except psycopg.Error as exc:
            self._drop_conn()
            self.ledger.aborted += 1
            self.ledger.aborted_ops += n_ops
            self.errors.append(str(exc)[:200])
            return None
        txn = Txn(-1, xid, n_ops, effects)
        try:
            conn.commit()
        except psycopg.Error:
            self._drop_conn()
            self.ledger.indeterminate += 1
            self.ledger.indeterminate_ops += n_ops
            status = self._resolve(xid)
            if status == "committed":
                txn.status = "indeterminate-committed"
                self.ledger.indeterminate_committed += 1
                self.ledger.commit(txn)
                return txn
            self.ledger.aborted += 1
            return None
        self.ledger.commit(txn)
        return txn

    def _drop_conn(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def _resolve(self, xid: str) -> str:
        def status() -> str | None:
            with psycopg.connect(
                self.uri, autocommit=True, options=OPTIONS, connect_timeout=3
            ) as c:
                try:
                    row = c.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
                except psycopg.errors.InvalidParameterValue as exc:
                    # after crash recovery: no WAL record of the xid survived, so no commit did
                    if "in the future" in str(exc):
                        return "aborted"
                    raise
            return row[0] if row and row[0] in ("committed", "aborted") else None

        return str(wait_until(status, 90, f"the outcome of transaction {xid}", interval=0.3))

    def step(self, max_ops: int = 4) -> Txn | None:
        t = self.rng.choice(self.tables)
        b = TxnBuilder(self, t).random_ops(self.rng.randint(1, max_ops))
        return self.execute(b.ops, b.effects(), b.n_ops)

    def run(self, n_txns: int) -> None:
        for _ in range(n_txns):
            self.step()

    # background --------------------------------------------------------------------------
    def start(self, rate: float = 60.0) -> Workload:
        """Write about `rate` transactions per second in a thread until stop()."""
        self._stop.clear()

        def loop() -> None:
            period = 1.0 / rate
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    if self.step() is None:
                        self._stop.wait(0.2)  # the source is away: do not spin
                except Exception as exc:  # recorded; the test fails on it
                    self.errors.append(f"workload crashed: {type(exc).__name__}: {exc}")
                    return
                self._stop.wait(max(0.0, period - (time.monotonic() - t0)))

        self._thread = threading.Thread(target=loop, daemon=True, name="fault-workload")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
            assert not self._thread.is_alive(), "workload thread did not stop"
            self._thread = None
        crashed = [e for e in self.errors if e.startswith("workload crashed")]
        assert not crashed, crashed


class OpenTxn:
    """A transaction on its own connection: statements sent in steps, committed or rolled back later."""

    def __init__(self, wl: Workload, t: WTable) -> None:
        self.wl = wl
        self.conn = psycopg.connect(wl.uri, options=OPTIONS)
        row = self.conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        self.xid = row[0]
        self.b = TxnBuilder(wl, t)
        self.sent = 0

    def more(self, n: int) -> OpenTxn:
        self.b.random_ops(n)
        with self.conn.cursor() as cur:
            for stmt, params in self.b.ops[self.sent :]:
                cur.execute(stmt, params)
        self.sent = len(self.b.ops)
        return self

    def savepoint(self) -> None:
        self.conn.execute("SAVEPOINT sp")
        self._sp = (dict(self.b.overlay), dict(self.b.before), self.b.n_ops)

    def rollback_to_savepoint(self) -> None:
        self.conn.execute("ROLLBACK TO SAVEPOINT sp")
        overlay, before, n_ops = self._sp
        self.wl.ledger.aborted_ops += self.b.n_ops - n_ops
        self.b.overlay, self.b.before, self.b.n_ops = overlay, before, n_ops

    def commit(self) -> Txn:
        self.conn.commit()
        self.conn.close()
        txn = Txn(-1, self.xid, self.b.n_ops, self.b.effects())
        self.wl.ledger.commit(txn)
        return txn

    def rollback(self) -> None:
        self.conn.rollback()
        self.conn.close()
        self.wl.ledger.aborted += 1
        self.wl.ledger.aborted_ops += self.b.n_ops
