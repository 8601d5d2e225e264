"""A diff's target side on MariaDB/MySQL (`side.TargetSide`): the same rounds, narrowing and repair.

Rounds read the target in one `START TRANSACTION WITH CONSISTENT SNAPSHOT`; fingerprints are computed
in SQL over the canonical text (`mariadb_sql`), the source's over the same text (`sqlgen`, shape
`canonical`). Narrowed rows are staged in a TEMPORARY table typed like the target, loaded through the
writer's LOAD DATA path (`writer.mariadb.bulk`) from the plan's output, and compared in two queries
(MariaDB has no FULL JOIN, and a TEMPORARY table is read once per query). Repair holds the task's
checkpoint row (`FOR UPDATE`, as its applier does) in a READ COMMITTED transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import polars as pl
import psycopg
import pymysql

from trempy_nb.fullload import target_spec
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.reconcile import mariadb_sql as msql
from trempy_nb.reconcile import sqlgen
from trempy_nb.reconcile.chunks import Fingerprint
from trempy_nb.reconcile.sqlgen import DiffShape, Selection
from trempy_nb.settings import TaskSettings
from trempy_nb.writer.mariadb import capabilities, state
from trempy_nb.writer.mariadb import errors as merr
from trempy_nb.writer.mariadb import uri as maria_uri
from trempy_nb.writer.mariadb.apply import read_checkpoint
from trempy_nb.writer.mariadb.bulk import load_frame
from trempy_nb.writer.mariadb.ddl import column_types, existing_columns
from trempy_nb.writer.mariadb.names import execute, quote
from trempy_nb.writer.mariadb.types import MariaType, to_load_text

#: ER_NO_SUCH_TABLE: the task's state tables do not exist (yet)
NO_SUCH_TABLE = 1146


class MariaTarget:
    """The `TargetSide` of a MariaDB/MySQL target (one session: its TEMPORARY tables are its own)."""

    def __init__(self, target_uri: str) -> None:
        self.target = maria_uri.target_of(target_uri)
        self.conn = maria_uri.connect(self.target)
        self._poll: Any = None  # an autocommit session for the task's position (waiting)
        try:
            info = capabilities.server_info(self.conn)
        except BaseException:
            self.conn.close()
            raise
        self.json_normalize = info.mariadb and info.numbers >= (10, 7)
        self.native_uuid = info.native_uuid
        self.types: dict[str, MariaType] = {}

    def shape(self, settings: TaskSettings, plan: TablePlan, src: psycopg.Connection) -> DiffShape:
        spec = target_spec(plan, settings)
        held = existing_columns(self.conn, spec.schema, spec.table)
        self.conn.rollback()
        sqlgen.check_target_table(settings, plan, spec, held)
        self.types = column_types(spec, native_uuid=self.native_uuid)
        types = {c.name: c.pg_type for c in spec.columns}  # the plan's output types: the source renders those
        volatile = sqlgen.volatile_columns(plan)
        compared = tuple(c for c in spec.data_columns if c not in volatile)
        return DiffShape(plan, spec, types, compared, sqlgen.source_exprs(plan),
                         {t: True for t in types.values()}, canonical=True)

    def position(self, task: str, local: bool) -> int | None:
        if self._poll is None or not self._poll.open:
            self._poll = maria_uri.connect(self.target)
            self._poll.autocommit(True)
        try:
            lsn = read_checkpoint(self._poll, task)
            slot = state.read_slot_lsn(self._poll, task) if lsn is not None else 0
        except pymysql.err.MySQLError as exc:
            if merr.errno(exc) == NO_SUCH_TABLE:
                return None
            raise
        if lsn is None:
            return None
        # as on PostgreSQL: the local transport records the slot only after the target committed
        return max(lsn, slot) if local else lsn

    def _run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            execute(cur, statement, params)
            return list(cur.fetchall())

    def begin(self) -> None:
        self.conn.rollback()
        self._run("START TRANSACTION WITH CONSISTENT SNAPSHOT")

    def fingerprints(self, shape: DiffShape, buckets: int) -> dict[int, Fingerprint]:
        rows = self._run(msql.fingerprints_sql(shape, self.types, buckets))
        return {int(b): (int(c), int(h)) for b, c, h in rows}

    def stage(self, shape: DiffShape, frames: Iterable[pl.DataFrame]) -> None:
        columns = list(shape.spec.data_columns)
        pg_types = {c.name: c.pg_type for c in shape.spec.columns}
        types = {c: self.types[c] for c in columns}
        with self.conn.cursor() as cur:
            execute(cur, msql.drop_sql(msql.STAGE))
            execute(cur, msql.create_like_sql(msql.STAGE, shape, columns))
            for frame in frames:
                out = to_load_text(frame.select(columns), types, pg_types)
                load_frame(cur, quote(msql.STAGE), columns, out, types)

    def _keys_table(self, name: str, shape: DiffShape, keys: Sequence[tuple[str, ...]]) -> None:
        with self.conn.cursor() as cur:
            execute(cur, msql.drop_sql(name))
            execute(cur, msql.create_like_sql(name, shape, shape.key))
            if keys:
                cur.executemany(msql.fill_keys_sql(name, shape, self.types), [tuple(k) for k in keys])

    def compare(self, shape: DiffShape, sel: Selection, itersize: int) -> Iterator[Sequence[Any]]:
        if sel.keys is not None:
            self._keys_table(msql.SELECTED, shape, sel.keys)
        n = len(shape.compared)
        for query in (msql.staged_vs_target_sql(shape, self.types, self.json_normalize),
                      msql.target_extra_sql(shape, self.types, sel)):
            for row in self._run(query):
                yield (row[0], [bool(f) for f in row[1:1 + n]], *row[1 + n:])

    def counts(self, shape: DiffShape) -> tuple[int, int]:
        staged, held = msql.count_sql(shape)
        return int(self._run(staged)[0][0]), int(self._run(held)[0][0])

    def begin_repair(self, task: str) -> None:
        self.conn.rollback()
        self._run("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        self.conn.begin()
        try:
            read_checkpoint(self.conn, task, for_update=True)  # the task's applier waits for us
        except pymysql.err.MySQLError as exc:
            if merr.errno(exc) != NO_SUCH_TABLE:  # no state tables: no applier to hold back
                raise

    def fix(self, shape: DiffShape, keys: Sequence[tuple[str, ...]]) -> None:
        self._keys_table(msql.KEYS, shape, keys)
        if shape.spec.scd2:
            now = self._run("SELECT UTC_TIMESTAMP(6)")[0][0]
            for stmt in msql.scd2_fix_sql(shape):
                self._run(stmt, (now,))
        else:
            for stmt in msql.upsert_fix_sql(shape):
                self._run(stmt)

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        for conn in (self.conn, self._poll):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
