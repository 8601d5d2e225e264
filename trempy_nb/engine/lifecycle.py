"""Per-table lifecycle on a running task, carried out by its owner: add a table, resync one, pause, resume.

The other tables keep streaming. One rule makes every action exact: a table is *held* while it is
paused, loading or resyncing. Its changes keep arriving with the stream but go, in stream order, to
`trempy.held_changes` on the target, written in the transaction of the batch they came in (and of its
checkpoint), so the slot advances for everyone. Releasing a held table applies its held changes in
order (exactly once: a replay checkpoint of its own, `<task>#held:<schema>.<table>`) before any newer
change of that table, under the applier's batch lock.

Loading in step with the stream (add-table, resync): the table is held first; for add-table the table
joins the publication (ALTER PUBLICATION ... ADD TABLE commits at P); then a TEMPORARY logical slot is
created with an exported snapshot on a replication connection: its consistent point S sees every
transaction committed before S and none after. The table is loaded from that snapshot in ONE target
transaction that also records "loaded at S" (`trempy.load_state.snapshot_lsn`). From then on the
applier drops that table's changes committed at or before S (they are in the load; the stream may still
be behind S and deliver some later) and applies the others: the held ones first. No gap: every change
after S is held or streamed; no overlap: nothing at or before S is applied twice.

pgoutput decides a change's publication membership from the catalog as of that change's place in the
WAL (historic snapshot), so a table added at P streams from P on; the changes between P and S are
dropped by the rule above, and the transactions running across P finish before S (slot creation waits
for them), so they are in the snapshot.

Requests come from the state store (`store.lifecycle`): a poller thread reads the task's open requests
about once a second (one indexed query) and carries them out between batches (it takes the applier's
lock); loads run in a thread of their own meanwhile. The target's `trempy.table_lifecycle` is the truth
about which tables are held, so a restarted owner keeps holding them; requests it finds running were
left by a dead owner and are taken up again.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from trempy_nb import changes as ch
from trempy_nb.capture.slot import add_publication_table
from trempy_nb.capture.snapshot import create_slot_with_snapshot
from trempy_nb.db import connect, task_app_name
from trempy_nb.fullload import load_table, target_spec
from trempy_nb.fullload.load import begin_snapshot
from trempy_nb.metadata import MetadataStore
from trempy_nb.pgcopy.copyio import copy_frame, iter_frames, select_query
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.redact import mask
from trempy_nb.settings import TaskSettings, parse_settings
from trempy_nb.validation import validate_live
from trempy_nb.writer import sql as wsql
from trempy_nb.writer import state
from trempy_nb.writer.apply import TableApply
from trempy_nb.writer.dialect import TargetDialect
from trempy_nb.writer.fence import Fence

#: how often the owner looks for new requests (s): one indexed query each time. Idle, every
#: POLL_IDLE_S (a worker holding 20 idle tasks would otherwise query its store 20 times a second);
#: every POLL_S while a request or a load is under way, and for a minute after one
POLL_S = 1.0
POLL_IDLE_S = 5.0
BUSY_FOR_S = 60.0
#: held changes are replayed in groups of up to about this many bytes of held frames (one target
#: transaction each): consecutive parts of one source shape
DRAIN_BYTES = 32 << 20

Key = tuple[str, str]
PlanFor = Callable[[ch.TableChanges, Any], TablePlan]


def table_name(key: Key) -> str:
    return f"{key[0]}.{key[1]}"


def parse_table(text: str) -> Key:
    """'schema.table' (or 'table': public) -> key."""
    schema, _, table = text.rpartition(".")
    return (schema or "public", table)


@dataclass
class HeldPart:
    """One batch's changes of a held table, as stored on the target."""

    key: Key
    frame: bytes
    truncated_at: str | None


@dataclass
class _Load:
    request: dict[str, Any]
    thread: threading.Thread | None = None
    lsn: int | None = None
    rows: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def encode_part(tc: ch.TableChanges) -> HeldPart:
    """A table's share of a batch as bytes for `trempy.held_changes` (Arrow IPC keeps every type)."""
    buf = io.BytesIO()
    tc.frame.write_ipc(buf)
    truncs = json.dumps([_truncate_json(t) for t in tc.truncated_at]) if tc.truncated_at else None
    return HeldPart(tc.key, buf.getvalue(), truncs)


def _truncate_json(t: tuple[Any, ...]) -> list[Any]:
    """(seq, lsn[, commit time]) as JSON values."""
    return [int(t[0]), int(t[1]), *(v.isoformat() for v in t[2:])]


def decode_part(frame: bytes, truncated_at: str | None) -> tuple[pl.DataFrame, list[tuple[Any, ...]]]:
    df = pl.read_ipc(io.BytesIO(frame))
    truncs: list[tuple[Any, ...]] = []
    for t in json.loads(truncated_at) if truncated_at else []:
        truncs.append((int(t[0]), int(t[1]), *(datetime.fromisoformat(x) for x in t[2:])))
    return df, truncs


class TableLifecycle:
    """The owner's side of per-table lifecycle for one run (see the module docstring).

    `lock` is held by the applier around each batch and by every state change here, so a table is
    held, loaded or released between batches, never inside one."""

    def __init__(self, task: str, settings: TaskSettings, plans: dict[Key, TablePlan], source: str, target: str, *,
                 store: MetadataStore, run_id: str | None, dialect: TargetDialect, fence: Fence | None,
                 plan_for: PlanFor, on_settings: Callable[[TaskSettings], None],
                 fresh_load: bool = False) -> None:
        self.task, self.settings, self.plans = task, settings, plans
        self.source, self.target = source, target
        self.store, self.run_id, self.dialect, self.fence = store, run_id, dialect, fence
        self.plan_for, self.on_settings, self.fresh_load = plan_for, on_settings, fresh_load
        self.lock = threading.RLock()
        self.held: dict[Key, str] = {}
        self.skip: dict[Key, int] = {}
        self._loads: dict[Key, _Load] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    # owner start/stop ---------------------------------------------------------------------
    def start(self) -> TableLifecycle:
        """Read the held tables and load points from the target, hold the tables of open add requests
        (before the first batch), then poll in a thread."""
        with self._target("lifecycle") as tgt:
            state.ensure_state_tables(tgt)
            self.held = state.held_tables(tgt, self.task)
            self.skip = state.loaded_lsn(tgt, self.task)
            loaded = state.loaded_tables(tgt, self.task)
            tgt.commit()
            for req in self.store.open_table_requests(self.task):
                key = parse_table(req["table"])
                if req["action"] != "add" or key not in self.plans or key in self.held:
                    continue
                if self.fresh_load and key in loaded:
                    continue  # this run's full load just loaded it: `_process` says so
                state.set_table_held(tgt, self.task, key, "loading", req["id"])
                tgt.commit()
                self.held[key] = "loading"
        self._thread = threading.Thread(target=self._run, name=f"trempy-lifecycle-{self.task}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        busy_until = 0.0
        while not self._halt.wait(POLL_S if time.monotonic() < busy_until or self._loads else POLL_IDLE_S):
            try:
                if self.tick():
                    busy_until = time.monotonic() + BUSY_FOR_S
            except Exception as exc:  # a broken store or target: logged, the next poll retries
                self._log("WARNING", f"table lifecycle: {type(exc).__name__}: {exc}")

    def tick(self) -> bool:
        """One poll: finish the loads that are done, take up new requests; whether there was any."""
        busy = bool(self._loads)
        for key, load in list(self._loads.items()):
            if load.done.is_set():
                with self.lock:
                    self._finish_load(key, load)
        for req in self.store.open_table_requests(self.task):
            busy = True
            key = parse_table(req["table"])
            if key in self._loads:
                continue  # loading: finished above once its thread is done
            with self.lock:
                try:
                    self._process(req, key)
                except Exception as exc:
                    self._fail(req, key, exc)
        return busy

    # the applier's side --------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self.lock:
            yield

    def split(self, batch: ch.ChangeBatch) -> tuple[list[ch.TableChanges], list[HeldPart]]:
        """The batch's tables to apply, and the parts to hold (call under `lock`). A table's changes
        committed at or before the snapshot it was loaded from are dropped: they are in the load."""
        apply: list[ch.TableChanges] = []
        held: list[HeldPart] = []
        for tc in batch.tables:
            upto = self.skip.get(tc.key)
            if upto is not None:
                tc = _after(tc, upto)
                if not tc.frame.height and not tc.truncated_at:
                    continue
            if tc.key in self.held:
                held.append(encode_part(tc))
            else:
                apply.append(tc)
        return apply, held

    def hold_writer(self, parts: list[HeldPart], end_lsn: int) -> Callable[[psycopg.Connection], None]:
        """What `apply_batch(also=...)` runs inside the batch's transaction."""

        def write(conn: psycopg.Connection) -> None:
            for p in parts:
                state.hold_changes(conn, self.task, p.key, end_lsn, p.frame, p.truncated_at)

        return write

    # requests -----------------------------------------------------------------------------
    def _process(self, req: dict[str, Any], key: Key) -> None:
        action, rid = req["action"], int(req["id"])
        if req["state"] == "requested":
            self.store.start_table_request(rid)
        if action in ("pause", "resume", "resync") and key not in self.plans:
            raise _Refused(f"{table_name(key)} is not a table of task {self.task}")
        if action == "pause":
            why = self.held.get(key)
            if why not in (None, "paused"):
                raise _Refused(f"{table_name(key)} is {why}: pause it once that is done")
            self._hold(key, "paused", rid)
            self.store.set_table_state(self.task, table_name(key), "paused", request_id=rid)
            self._done(rid, f"{table_name(key)} paused: its changes are held on the target", key)
        elif action == "resume":
            why = self.held.get(key)
            if why is None:
                self._done(rid, f"{table_name(key)} was not paused", key)
            elif why != "paused":
                raise _Refused(f"{table_name(key)} is {why}, not paused: it streams again once that is done")
            else:
                n = self._release(key)
                self.store.set_table_state(self.task, table_name(key), "streaming", request_id=rid)
                self._done(rid, f"{table_name(key)} resumed: {n} held change(s) applied in order", key)
        elif action == "add":
            self._add(req, key)
        elif action == "resync":
            if self.held.get(key) == "paused":
                raise _Refused(f"{table_name(key)} is paused: resume it first")
            self._hold(key, "resyncing", rid)
            self.store.set_table_state(self.task, table_name(key), "resyncing", request_id=rid)
            self._start_load(key, req)
        else:  # pragma: no cover - the store's CHECK constraint allows no other action
            raise _Refused(f"unknown table action {action!r}")

    def _add(self, req: dict[str, Any], key: Key) -> None:
        rid = int(req["id"])
        if key in self.plans and key not in self.held:
            with self._target("lifecycle") as tgt:
                loaded = key in state.loaded_tables(tgt, self.task)
            if loaded:
                self.store.set_table_state(self.task, table_name(key), "streaming", request_id=rid)
                self._done(rid, f"{table_name(key)} is loaded and streaming", key)
                return
        if key not in self.plans:
            settings = _with_table(self.settings, key)
            plan = validate_live(settings, self.source).plans[key]  # the table and its CDC prerequisites
            self._hold(key, "loading", rid)  # before the publication: every change of it is held
            self.plans[key] = plan
            self.settings = settings
            self.on_settings(settings)
            self._record_shape(key)
        elif key not in self.held:
            self._hold(key, "loading", rid)
        with connect(self.source, autocommit=True, application_name=task_app_name(self.task, "lifecycle")) as src:
            add_publication_table(src, f"trempy_{self.task}", key)
        self.store.set_table_state(self.task, table_name(key), "loading", request_id=rid)
        self._start_load(key, req)

    def _hold(self, key: Key, why: str, rid: int) -> None:
        with self._target("lifecycle") as tgt:
            state.set_table_held(tgt, self.task, key, why, rid)
            tgt.commit()
        self.held[key] = why

    def _record_shape(self, key: Key) -> None:
        plan = self.plans[key]
        with self._target("lifecycle") as tgt:
            self.dialect.record_shapes(tgt, self.task, {key: [(c.name, c.pg_type) for c in plan.source.columns]})
            tgt.commit()

    def _done(self, rid: int, message: str, key: Key | None = None) -> None:
        self.store.end_table_request(rid, "done", message=message)
        self._log("INFO", message, key)

    def _fail(self, req: dict[str, Any], key: Key, exc: BaseException) -> None:
        msg = mask(str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc}")
        self.store.end_table_request(int(req["id"]), "failed", error=msg)
        self._log("ERROR", f"{req['action']} {table_name(key)}: {msg}", key)

    # loads --------------------------------------------------------------------------------
    def _start_load(self, key: Key, req: dict[str, Any]) -> None:
        load = _Load(req)
        load.thread = threading.Thread(target=self._load, args=(key, load), daemon=True,
                                       name=f"trempy-lifecycle-load-{self.task}")
        self._loads[key] = load
        load.thread.start()

    def _load(self, key: Key, load: _Load) -> None:
        try:
            load.lsn, load.rows = self._load_in_step(key, load.request)
        except BaseException as exc:  # handed to the poller, which fails the request
            load.error = exc
        finally:
            load.done.set()

    def _load_in_step(self, key: Key, req: dict[str, Any]) -> tuple[int, int]:
        """Snapshot S from a temporary slot, the table loaded from it in one target transaction that
        records "loaded at S"; returns (S, rows)."""
        plan, settings = self.plans[key], self.settings
        options = req.get("options") or {}
        resync = req["action"] == "resync"
        spec = target_spec(plan, settings)
        # one load of a table at a time, across runs: a load left running by a stopped run commits (or
        # dies) before this one takes its snapshot, so the newest snapshot is the one that lands last.
        # A session lock, committed at once: an open transaction would hold back the slot creation.
        with self._target("lifecycle-load") as guard:
            guard.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"trempy:load:{self.task}:{table_name(key)}",))
            guard.commit()
            with connect(self.source, autocommit=True,
                         application_name=task_app_name(self.task, "lifecycle")) as src:
                row = src.execute("SELECT clock_timestamp()").fetchone()
            ts = row[0] if row else None  # new versions open here: before S, so no held change predates them
            slot = f"trempy_lc_{uuid.uuid4().hex[:16]}"
            with create_slot_with_snapshot(self.source, slot, task_app_name(self.task, "snapshot"),
                                           temporary=True) as (lsn, snapshot):
                if resync and spec.scd2 and not options.get("baseline"):
                    rows = scd2_append(settings, plan, self.source, self.target, snapshot, lsn, ts, self.fence)
                else:
                    if resync:  # a resync starts from an empty table (an SCD2 baseline too), in the load's transaction
                        fl = settings.task.full_load_settings.model_copy(update={"truncate_before_insert": True})
                        settings = settings.model_copy(update={"task": settings.task.model_copy(
                            update={"full_load_settings": fl})})
                    result = load_table(settings, plan, self.source, self.target, snapshot=snapshot,
                                        snapshot_lsn=lsn, load_ts=ts, fence=self.fence)
                    rows = result.rows_written
        return lsn, rows

    def _finish_load(self, key: Key, load: _Load) -> None:
        del self._loads[key]
        req, rid = load.request, int(load.request["id"])
        if load.error is not None:
            if req["action"] == "resync":  # nothing committed: the table streams on as before
                self._release(key)
                self.store.set_table_state(self.task, table_name(key), "streaming", request_id=rid)
            else:  # add: the table stays held (loading) until add-table succeeds
                self.store.set_table_state(self.task, table_name(key), "loading", request_id=rid,
                                           detail=f"failed: {load.error}")
            self._fail(req, key, load.error)
            return
        assert load.lsn is not None
        self.skip[key] = load.lsn
        n = self._release(key)
        self.store.set_table_state(self.task, table_name(key), "streaming", request_id=rid)
        what = "added" if req["action"] == "add" else "resynced"
        self._done(rid, f"{table_name(key)} {what}: {load.rows} row(s) loaded from a snapshot at"
                        f" {ch.int_to_lsn(load.lsn)}, then {n} held change(s) after it applied in order", key)

    # release: replay the held changes in order, then stream -----------------------------------
    def _release(self, key: Key) -> int:
        """Apply the table's held changes in order (skipping those in its load), then drop its hold."""
        applied = 0
        stream = state.held_stream(self.task, key)
        d = self.dialect
        conn = d.connect(self.target, application_name=task_app_name(self.task, "lifecycle"))
        try:
            after = 0
            while True:
                parts = state.read_held_changes(conn, self.task, key, after)
                conn.commit()
                if not parts:
                    break
                for group in _groups(parts):
                    applied += self._replay(conn, key, stream, group)
                after = parts[-1][0]
            with conn.transaction():
                d.check_fence(conn, self.fence, self.task)
                state.release_table(conn, self.task, key)
        finally:
            conn.close()
        self.held.pop(key, None)
        return applied

    def _replay(self, conn: psycopg.Connection, key: Key, stream: str, parts: list[state.HeldPart]) -> int:
        frames: list[pl.DataFrame] = []
        truncs: list[tuple[Any, ...]] = []
        offset = 0
        for _id, _end, blob, tjson in parts:
            df, tr = decode_part(blob, tjson)
            frames.append(df.with_columns(pl.col(ch.SEQ) + offset))
            truncs += [(t[0] + offset, *t[1:]) for t in tr]
            top = [int(df.get_column(ch.SEQ).max() or 0)] if df.height else []  # type: ignore[arg-type]
            offset += max([*top, *(int(t[0]) for t in tr), 0]) + 1
        frame = pl.concat(frames, how="vertical_relaxed")
        tc = _after(ch.TableChanges(key[0], key[1], frame, truncs), self.skip.get(key, -1))
        if not tc.frame.height and not tc.truncated_at:
            return 0
        plan = self.plan_for(tc, conn)
        out = plan.apply_changes(tc.frame) if tc.frame.height else tc.frame
        item = TableApply(spec=target_spec(plan, self.settings), frame=out, truncated_at=list(tc.truncated_at))
        self.dialect.apply_batch(conn, stream, [item], parts[-1][1], error_handling=self.settings.error_handling,
                                 on_row_error=None, fence=self.fence)
        return tc.frame.height + len(tc.truncated_at)

    # plumbing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _target(self, what: str) -> Iterator[psycopg.Connection]:
        conn = connect(self.target, application_name=task_app_name(self.task, what))
        try:
            yield conn
        finally:
            conn.close()

    def _log(self, level: str, message: str, key: Key | None = None) -> None:
        with contextlib.suppress(Exception):
            self.store.log(self.task, self.run_id, level, mask(message), table=table_name(key) if key else None)


class _Refused(Exception):
    """A request that cannot be carried out as asked (its message is the request's error)."""


def _after(tc: ch.TableChanges, lsn: int) -> ch.TableChanges:
    """The table's changes committed after `lsn`."""
    frame = tc.frame.filter(pl.col(ch.LSN) > lsn) if tc.frame.height else tc.frame
    truncs = [t for t in tc.truncated_at if int(t[1]) > lsn]
    if frame.height == tc.frame.height and len(truncs) == len(tc.truncated_at):
        return tc
    return ch.TableChanges(tc.schema, tc.table, frame, truncs)


def _groups(parts: list[state.HeldPart]) -> Iterator[list[state.HeldPart]]:
    """Consecutive held parts of one source shape, up to DRAIN_BYTES per group (one transaction)."""
    group: list[state.HeldPart] = []
    columns: list[str] | None = None
    size = 0
    for part in parts:
        cols = list(pl.read_ipc_schema(io.BytesIO(part[2])))
        if group and (cols != columns or size + len(part[2]) > DRAIN_BYTES):
            yield group
            group, size = [], 0
        group.append(part)
        columns = cols
        size += len(part[2])
    if group:
        yield group


def _with_table(settings: TaskSettings, key: Key) -> TaskSettings:
    doc = settings.to_dict()
    doc["tables"] = [*doc["tables"], {"schema_name": key[0], "table_name": key[1]}]
    return parse_settings(doc)


def scd2_append(settings: TaskSettings, plan: TablePlan, source: str, target: str, snapshot: str, lsn: int,
                ts: Any, fence: Fence | None) -> int:
    """Resync an SCD2 target keeping its history: in one target transaction, stage the snapshot's rows
    through the plan, close the current versions that differ or are gone at `ts`, open the source's
    rows as new versions at `ts`, record "loaded at `lsn`". Returns the rows staged."""
    spec = target_spec(plan, settings)
    stage = wsql.staging_ident("_trempy_resync")
    keys = wsql.staging_ident("_trempy_resync_gone")
    at = sql.Literal(ts) if ts is not None else sql.SQL("now()")
    staged = 0
    with connect(source, application_name=task_app_name(settings.name, "lifecycle")) as src, \
            connect(target, application_name=task_app_name(settings.name, "lifecycle")) as tgt:
        begin_snapshot(src, snapshot)
        cur = tgt.cursor()
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, sql.SQL(", ").join(sql.Identifier(c) for c in spec.data_columns), spec.ident))
        query = select_query(plan.source.schema, plan.source.name, list(plan.source_columns))
        for frame in iter_frames(src.cursor(), query, list(plan.source_columns)):
            out = plan.apply(frame)
            staged += out.height
            copy_frame(cur, stage, spec.data_columns, out)
        cur.execute(wsql.analyze_sql(stage, spec.key))
        match = sql.SQL(" AND ").join(sql.SQL("s.{c} = t.{c}").format(c=sql.Identifier(k)) for k in spec.key)
        same = sql.SQL(" AND ").join(
            sql.SQL("s.{c} IS NOT DISTINCT FROM t.{c}").format(c=sql.Identifier(c)) for c in spec.data_columns)
        # the keys whose current version differs from the snapshot or is gone from it
        cur.execute(sql.SQL(
            "CREATE TEMP TABLE {k} ON COMMIT DROP AS SELECT {cols} FROM {t} AS t WHERE t.{cur}"
            " AND NOT EXISTS (SELECT 1 FROM {s} AS s WHERE {match} AND {same})").format(
            k=keys, cols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in spec.key),
            t=spec.ident, cur=sql.Identifier(spec.current_col), s=stage, match=match, same=same))
        cur.execute(wsql.scd2_close_sql(spec.ident, keys, spec, at, sql.SQL("true")))
        cur.execute(wsql.scd2_open_missing_sql(spec.ident, stage, spec.data_columns, spec, at))
        state.record_loaded(cur, settings.name, (plan.source.schema, plan.source.name), staged, lsn)
        state.check_fence(tgt, fence, settings.name)
        tgt.commit()
        src.rollback()
    return staged
