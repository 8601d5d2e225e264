"""Running a diff (and its repair) against the source and the target (with `mariadb.py`, the I/O of reconcile/).

The target is reached through a `side.TargetSide`: `_PgTarget` here for PostgreSQL,
`mariadb.MariaTarget` for MariaDB/MySQL (chosen from the target URI); everything below is the same
for both.

One round: the source is read in one REPEATABLE READ snapshot whose WAL position L is recorded;
when the task runs (its runner lock is held, or its slot is active) the target is read once its
checkpoint has passed L,
else at once. Both sides compute bucket fingerprints concurrently (sqlgen); differing buckets
are narrowed to keys through the plan and a staged join on the target. While CDC runs, the target
may already hold changes committed after L: the keys a round finds are checked again in fresh
snapshots, and only keys that differ in every round are reported.

Repair, one target transaction per chunk of keys: the task's checkpoint row is locked first (its
applier waits for the chunk), the source is read in a fresh snapshot, the keys still differing are
fixed (upsert: delete, insert the source row; SCD2: close the current version at the repair time,
open the source's as a new one), the chunk commits and is logged. A change the applier applies
after the chunk is newer than the repair's snapshot, so it ends in the source's state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb.capture.slot import emit_heartbeat, slot_name, slot_status
from trempy_nb.changes import lsn_to_int
from trempy_nb.connections import is_mariadb_uri
from trempy_nb.db import connect
from trempy_nb.errors import SettingsError, TerminalError, TransientError
from trempy_nb.fullload import target_spec
from trempy_nb.pgcopy.copyio import copy_frame, iter_frames
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.reconcile import sqlgen
from trempy_nb.reconcile.chunks import (
    DiffRow,
    Fingerprint,
    TableDiff,
    batches,
    bucket_count,
    diff_row,
    differing_buckets,
)
from trempy_nb.reconcile.side import TargetSide
from trempy_nb.reconcile.sqlgen import DiffShape, Selection
from trempy_nb.settings import TaskSettings
from trempy_nb.writer import sql as wsql
from trempy_nb.writer import state
from trempy_nb.writer.ddl import existing_columns

#: rows per chunk: a bucket holds about this many rows, a narrowing or repair step this many keys
CHUNK_ROWS = 50_000
#: how long to wait for a streaming task's target to reach the source snapshot
WAIT_SECONDS = 60.0
#: 'auto' (hashtextextended when both servers agree on it, else md5) or 'md5'
HASH = "auto"

Log = Callable[[str, str], None]  # (level, message)


class TargetBehind(TransientError):
    """The task's target did not reach the diff's source snapshot in time: comparing now would
    report changes still in flight as differences."""


@dataclass(frozen=True)
class DiffOptions:
    chunk_rows: int = CHUNK_ROWS
    wait_seconds: float = WAIT_SECONDS
    rounds: int = 3  # while the task streams: rounds that must all find a key before it is reported
    repair: bool = False


def build_shape(settings: TaskSettings, plan: TablePlan, src: psycopg.Connection,
                tgt: psycopg.Connection) -> DiffShape:
    """What to compare for one table on a PostgreSQL target."""
    spec = target_spec(plan, settings)
    types = existing_columns(tgt, spec.schema, spec.table)
    sqlgen.check_target_table(settings, plan, spec, types)
    assert types is not None
    known: dict[str, bool] = {}
    for t in sorted({types[c] for c in spec.data_columns}):
        row = src.execute("SELECT to_regtype(%s) IS NOT NULL", (t,)).fetchone()
        known[t] = bool(row and row[0])
    src.rollback()
    volatile = sqlgen.volatile_columns(plan)
    compared = tuple(c for c in spec.data_columns if c not in volatile)
    return DiffShape(plan, spec, {c: types[c] for c in spec.data_columns}, compared,
                     sqlgen.source_exprs(plan), known, fast_hash=_same_fast_hash(src, tgt))


def _probe(conn: psycopg.Connection) -> str | None:
    try:
        row = conn.execute(sqlgen.PROBE_SQL).fetchone()
        return str(row[0]) if row else None
    except psycopg.Error:  # PostgreSQL before 11
        return None
    finally:
        conn.rollback()


def _same_fast_hash(src: psycopg.Connection, tgt: psycopg.Connection) -> bool:
    """Whether both servers hash text alike with the fast function (same byte order, 11+)."""
    if HASH == "md5":
        return False
    a = _probe(src)
    return a is not None and a == _probe(tgt)


def _session(conn: psycopg.Connection) -> psycopg.Connection:
    """A diff's queries are single scans: compiling them with JIT costs more than it saves."""
    conn.execute("SET jit = off")
    conn.commit()
    return conn


# -- snapshots and waiting -------------------------------------------------------------------


def snapshot(conn: psycopg.Connection) -> int:
    """Open a REPEATABLE READ READ ONLY transaction; returns the WAL position it was taken at."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return lsn_to_int(row[0])


def _position(conn: psycopg.Connection, task: str, local: bool) -> int | None:
    row = state.read_positions(conn, task)
    if row is None:
        return None
    lsn, slot_lsn = row[0], int(row[1] or 0)
    # the local transport records the slot's position only after the target committed up to it;
    # with RabbitMQ it is the broker's, so only the applied checkpoint counts
    return max(lsn, slot_lsn) if local else lsn


def wait_for_target(source_uri: str, target: TargetSide, task: str, lsn: int, local: bool, wait: float) -> None:
    """Block until the target's checkpoint reaches `lsn`; a heartbeat lets an idle stream get there."""
    with contextlib.suppress(psycopg.Error), connect(source_uri, autocommit=True) as src:
        emit_heartbeat(src)
    deadline = time.monotonic() + wait
    while True:
        at = target.position(task, local)
        if at is not None and at >= lsn:
            return
        if time.monotonic() >= deadline:
            where = "none" if at is None else f"{at:X}"
            raise TargetBehind(
                f"target behind: task {task}'s checkpoint ({where}) has not reached the source snapshot"
                f" ({lsn:X}) within {wait:g}s; comparing now would report changes still in flight"
                " (retry, or wait longer)"
            )
        time.sleep(0.2)


#: Is the task's runner lock held? Runners hold a session advisory lock on the source, keyed
#: hashtext('trempy:<task>') (runner.task_lock); pg_locks shows a bigint key as classid (high 32
#: bits) and objid (low 32 bits).
_RUNNER_LOCKED = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint)"
)


def _streaming(source_uri: str, task: str) -> bool:
    """Whether a runner of the task is running (it holds the task's lock) or its slot is being read."""
    with connect(source_uri, autocommit=True) as src:
        row = src.execute(_RUNNER_LOCKED, (f"trempy:{task}",)).fetchone()
        status = slot_status(src, slot_name(task))
    return bool(row and row[0]) or bool(status is not None and status.active)


# -- a PostgreSQL target ---------------------------------------------------------------------


class _PgTarget:
    """The `TargetSide` of a PostgreSQL target: the staged rows in a temporary table, one join."""

    def __init__(self, target_uri: str) -> None:
        self.uri = target_uri
        self.conn = _session(connect(target_uri))

    def shape(self, settings: TaskSettings, plan: TablePlan, src: psycopg.Connection) -> DiffShape:
        shape = build_shape(settings, plan, src, self.conn)
        self.conn.rollback()
        return shape

    def position(self, task: str, local: bool) -> int | None:
        with connect(self.uri, autocommit=True) as tgt:
            return _position(tgt, task, local)

    def begin(self) -> None:
        self.conn.rollback()
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.conn.execute("SELECT 1")

    def fingerprints(self, shape: DiffShape, buckets: int) -> dict[int, Fingerprint]:
        return _fingerprints(self.conn, sqlgen.target_buckets_sql(shape, buckets))

    def stage(self, shape: DiffShape, frames: Iterable[pl.DataFrame]) -> None:
        tcur = self.conn.cursor()
        tcur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sqlgen.STAGE))
        tcur.execute(sqlgen.create_stage_sql(shape))
        for frame in frames:
            copy_frame(tcur, sqlgen.STAGE, shape.spec.data_columns, frame)
        tcur.execute(wsql.analyze_sql(sqlgen.STAGE, shape.spec.key))  # joined on the key

    def compare(self, shape: DiffShape, sel: Selection, itersize: int) -> Iterator[Sequence[Any]]:
        with self.conn.cursor(name="trempy_diff") as cur:
            cur.itersize = max(100, itersize)
            cur.execute(sqlgen.compare_sql(shape, sel))
            yield from cur

    def counts(self, shape: DiffShape) -> tuple[int, int]:
        staged = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sqlgen.STAGE)).fetchone()
        q = sql.SQL("SELECT count(*) FROM {} AS t").format(shape.spec.ident)
        current = sqlgen.target_current(shape)
        if current is not None:
            q = sql.SQL("{} WHERE {}").format(q, current)
        held = self.conn.execute(q).fetchone()
        return (int(staged[0]) if staged else 0, int(held[0]) if held else 0)

    def begin_repair(self, task: str) -> None:
        self.conn.rollback()
        self.conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        state.read_checkpoint(self.conn, task, for_update=True)  # the task's applier waits for us

    def fix(self, shape: DiffShape, keys: Sequence[tuple[str, ...]]) -> None:
        spec, tcur = shape.spec, self.conn.cursor()
        tcur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sqlgen.KEYS))
        tcur.execute(sqlgen.create_keys_sql(shape))
        tcur.execute(sqlgen.fill_keys_sql(shape, keys))
        tcur.execute(sqlgen.trim_stage_sql(shape))
        if spec.scd2:
            now = sql.SQL("now()")
            tcur.execute(wsql.scd2_close_sql(spec.ident, sqlgen.KEYS, spec, now, sql.SQL("true")))
            tcur.execute(wsql.scd2_open_missing_sql(spec.ident, sqlgen.STAGE, spec.data_columns, spec, now))
        else:
            tcur.execute(wsql.upsert_delete_sql(spec.ident, sqlgen.KEYS, spec.key))
            tcur.execute(sqlgen.insert_staged_sql(shape))

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


def _fingerprints(conn: psycopg.Connection, query: sql.Composable) -> dict[int, Fingerprint]:
    # the planner cannot know that the buckets are few and would sort every row to group
    # them: one hash table of a few entries does (a quarter less time on 2M rows)
    conn.execute("SET LOCAL enable_sort = off")
    try:
        return {int(b): (int(c), int(h)) for b, c, h in conn.execute(query).fetchall()}
    finally:
        conn.execute("SET LOCAL enable_sort TO DEFAULT")


def _target_side(target_uri: str) -> TargetSide:
    """The target's side of a diff, by the URI's database."""
    if not is_mariadb_uri(target_uri):
        return _PgTarget(target_uri)
    try:
        # lazy: the MariaDB driver is the optional extra trempy_nb[mariadb], imported only for such targets
        from trempy_nb.reconcile.mariadb import MariaTarget
    except ImportError as exc:
        raise SettingsError(f"a MariaDB/MySQL target needs its driver: pip install 'trempy_nb[mariadb]' ({exc})") from None
    return MariaTarget(target_uri)


# -- one table -------------------------------------------------------------------------------


class _Table:
    """The diff of one table: its shape, connections and options."""

    def __init__(self, settings: TaskSettings, plan: TablePlan, source_uri: str, target_uri: str,
                 options: DiffOptions, streaming: bool, log: Log | None) -> None:
        self.settings, self.plan, self.options, self.streaming = settings, plan, options, streaming
        self.source_uri, self.target_uri, self.log = source_uri, target_uri, log
        self.local = settings.task.transport == "local"
        self.src = _session(connect(source_uri))
        try:
            self.tgt = _target_side(target_uri)
        except BaseException:
            self.src.close()
            raise
        self.shape = self.tgt.shape(settings, plan, self.src)
        spec = self.shape.spec
        self.result = TableDiff(plan.source.qualified, f"{spec.schema}.{spec.table}", streaming=streaming,
                                not_compared=tuple(c for c in spec.data_columns if c not in self.shape.compared))

    def close(self) -> None:
        for conn in (self.src, self.tgt):
            with contextlib.suppress(Exception):
                conn.close()

    # rounds
    def _begin(self) -> None:
        """A source snapshot, and a target transaction that has caught up with it."""
        self.tgt.rollback()
        lsn = snapshot(self.src)
        if self.streaming:
            wait_for_target(self.source_uri, self.tgt, self.settings.name, lsn, self.local,
                            self.options.wait_seconds)
        self.tgt.begin()

    def run(self) -> TableDiff:
        self._begin()
        rows = self._first_round()
        rounds = 1
        while rows and self.streaming and rounds < self.options.rounds and sqlgen.keys_selectable(self.shape):
            rounds += 1
            self._begin()
            rows = self._by_keys(rows)
        self.result.rounds = rounds
        self.result.rows = rows
        self.src.rollback()
        self.tgt.rollback()
        if self.options.repair and rows:
            self.result.repaired = self._repair(rows)
        return self.result

    def _first_round(self) -> list[DiffRow]:
        shape, res = self.shape, self.result
        if not shape.hashable:
            res.route = "plan"
            found = self._narrow(Selection())
            res.source_rows, res.target_rows = self.tgt.counts(shape)
            return found
        n = bucket_count(self._estimate(), self.options.chunk_rows)
        res.buckets = n
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="trempy-diff") as pool:
            s = pool.submit(_fingerprints, self.src, sqlgen.source_buckets_sql(shape, n))
            t = pool.submit(self.tgt.fingerprints, shape, n)
            source, target = s.result(), t.result()
        res.source_rows = sum(c for c, _ in source.values())
        res.target_rows = sum(c for c, _ in target.values())
        suspects = differing_buckets(source, target)
        res.narrowed = len(suspects)
        return self._narrow(Selection(buckets=tuple(suspects), bucket_count=n)) if suspects else []

    def _by_keys(self, rows: Sequence[DiffRow]) -> list[DiffRow]:
        found: list[DiffRow] = []
        for part in batches(rows, self.options.chunk_rows):
            found += self._narrow(Selection(keys=tuple(r.key_text for r in part)))
        return found

    def _estimate(self) -> int:
        plan = self.plan
        ident = sql.Identifier(plan.source.schema, plan.source.name).as_string(self.src)
        row = self.src.execute(sqlgen.source_estimate_sql(), (ident,)).fetchone()
        if row is not None and int(row[0]) >= 0:
            return int(row[0])
        row = self.src.execute(sqlgen.source_count_sql(self.shape)).fetchone()
        return int(row[0]) if row else 0

    # narrowing: the source rows through the plan, staged on the target, joined there
    def _stage(self, sel: Selection) -> None:
        columns = list(self.plan.source_columns)
        chunk_bytes = max(1 << 20, self.options.chunk_rows * 200)
        frames = iter_frames(self.src.cursor(), sqlgen.source_rows_sql(self.shape, sel), columns,
                             chunk_bytes=chunk_bytes)
        self.tgt.stage(self.shape, (self.plan.apply(frame) for frame in frames))

    def _compare(self, sel: Selection) -> Iterator[DiffRow]:
        shape, res = self.shape, self.result
        for row in self.tgt.compare(shape, sel, self.options.chunk_rows):
            yield diff_row(res.table, res.target, shape.key, shape.compared, row)

    def _narrow(self, sel: Selection) -> list[DiffRow]:
        self._stage(sel)
        return list(self._compare(sel))

    # repair
    def _repair(self, rows: Sequence[DiffRow]) -> int:
        if not sqlgen.keys_selectable(self.shape):
            raise TerminalError(
                f"cannot repair {self.result.target}: its key is computed by a transformation with no SQL"
                " form, so the source rows of a key cannot be selected"
            )
        fixed = 0
        for part in batches(rows, self.options.chunk_rows):
            fixed += self._repair_chunk(part)
        return fixed

    def _repair_chunk(self, rows: Sequence[DiffRow]) -> int:
        tgt = self.tgt
        tgt.begin_repair(self.settings.name)
        try:
            snapshot(self.src)
            sel = Selection(keys=tuple(r.key_text for r in rows))
            self._stage(sel)
            still = list(self._compare(sel))
            if still:
                tgt.fix(self.shape, [r.key_text for r in still])
            tgt.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                tgt.rollback()
            raise
        self.src.rollback()
        if still and self.log:
            kinds = {k: sum(1 for r in still if r.kind == k) for k in ("missing", "extra", "different")}
            self.log("INFO", f"diff repair of {self.result.target}: {len(still)} key(s) fixed"
                             f" ({kinds['missing']} missing, {kinds['extra']} extra, {kinds['different']} different)")
        return len(still)


def diff_tables(settings: TaskSettings, plans: Sequence[TablePlan], source_uri: str, target_uri: str,
                options: DiffOptions | None = None, log: Log | None = None) -> list[TableDiff]:
    """Diff (and with options.repair, repair) each planned table; one TableDiff per table."""
    options = options or DiffOptions()
    streaming = settings.task.replication_type != "full_load" and _streaming(source_uri, settings.name)
    out: list[TableDiff] = []
    for plan in plans:
        table = _Table(settings, plan, source_uri, target_uri, options, streaming, log)
        try:
            out.append(table.run())
        finally:
            table.close()
    return out
