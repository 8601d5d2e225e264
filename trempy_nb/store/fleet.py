"""The fleet's half of the store: desired state, workers, leases with epochs, actual state, takeovers.

A task+role is owned through a lease row: (task, role) -> worker, epoch, expires_at. Claiming
takes a free or expired row and increments its epoch in one conditional UPDATE inside a
short transaction that holds the row lock (PostgreSQL `FOR UPDATE`; SQLite `BEGIN
IMMEDIATE`), so exactly one claimer wins each epoch. Every time is the store's clock
(`clock_timestamp()`; on SQLite the host's clock), never the worker's, so workers with
skewed clocks agree on who holds what. Renewal checks the epoch: once a lease was taken
over, the old holder's renewal fails and its fencing token (the epoch) is stale on the
target. Why a row and not an advisory lock: docs/fleet.md, "Leases and fencing".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import polars as pl

from trempy_nb.errors import SettingsError, TaskRunning, UnknownTask, WorkerNameTaken
from trempy_nb.redact import mask
from trempy_nb.store.backend import Backend, Runner, to_datetime
from trempy_nb.store.schema import ACTIVE_STATES, STATES

__all__ = ["LEASE_TTL_S", "ROLES", "STATUS_COLUMNS", "Desired", "FleetMixin", "Lease", "Role", "roles_of", "status_frame"]

Desired = Literal["running", "stopped"]
Role = Literal["both", "producer", "consumer"]
ROLES: tuple[str, ...] = get_args(Role)
#: default lease time to live: a dead worker's task is free again at most this long after its last renewal
LEASE_TTL_S = 10.0
#: a reported active state without a live lease still counts as running this long (a runner outside the fleet)
ACTIVE_REPORT_S = 60.0


@dataclass(frozen=True)
class Lease:
    """Ownership of one task role by one worker; `epoch` is the fencing token the target checks.

    `previous_worker` and `previous_age_s` (seconds since that holder last renewed, at the claim)
    describe a takeover; both None for a first claim or after a release."""

    task: str
    role: str
    worker: str
    epoch: int
    ttl_s: float
    previous_worker: str | None = None
    previous_age_s: float | None = None


@functools.lru_cache(maxsize=1024)
def _roles_of_text(text: str) -> tuple[str, ...]:
    """`roles_of` a stored settings document, parsed once per distinct text (workers ask every
    second or so for every desired-running task)."""
    return tuple(roles_of(json.loads(text)))


def roles_of(settings: dict[str, Any]) -> list[str]:
    """The roles a task is run as: rabbitmq -> producer and consumer (separately owned), else both."""
    section = settings.get("task") if isinstance(settings.get("task"), dict) else {}
    return ["producer", "consumer"] if (section or {}).get("transport") == "rabbitmq" else ["both"]


#: the columns of a status table, in display order (fleet_status rows hold these and a few more)
STATUS_COLUMNS: dict[str, Any] = {
    "task": pl.String,
    "role": pl.String,
    "desired": pl.String,
    "state": pl.String,
    "worker": pl.String,
    "host": pl.String,
    "pid": pl.Int64,
    "heartbeat_age_s": pl.Float64,
    "lag_bytes": pl.Int64,
    "lag_s": pl.Float64,
    "changes_applied": pl.Int64,
    "epoch": pl.Int64,
    "error": pl.String,
}


def status_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """`fleet_status` rows as a frame of STATUS_COLUMNS (what `trempy-nb status` and `%trempy status` show)."""
    return pl.DataFrame([{k: r.get(k) for k in STATUS_COLUMNS} for r in rows], schema=STATUS_COLUMNS)


def _age(now: datetime | None, then: Any) -> float | None:
    when = to_datetime(then)
    if now is None or when is None:
        return None
    return round((now - when).total_seconds(), 3)


def _check_ttl(ttl_s: float) -> float:
    if not ttl_s or float(ttl_s) <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
    return float(ttl_s)


class FleetMixin:
    """Fleet methods of MetadataStore (the facade provides the backend and the frame reader)."""

    _b: Backend

    def __init__(self) -> None:
        #: workers this store object registered: name -> (host, pid, roles), to re-register after a lost row
        self._registered: dict[str, tuple[str, int, list[str]]] = {}

    # provided by the facade
    def _frame(self, kind: str, sql: str, params: tuple[Any, ...] = (), run: Runner | None = None) -> pl.DataFrame:
        raise NotImplementedError

    def _stored_settings(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def task_names(self) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def _clock(run: Runner) -> datetime | None:
        return to_datetime(run.execute("SELECT clock_timestamp()").fetchone()[0])

    def _unknown(self, name: str) -> UnknownTask:
        return UnknownTask(f"unknown task {name!r}; known tasks: {', '.join(self.task_names()) or 'none'}")

    # ------------------------------------------------------------------ desired state

    def submit(self, name: str, settings: dict[str, Any], *, replace: bool = False) -> None:
        """Store the task as desired-running; changed settings of an active task need replace=True."""
        # lazy: start-up speed (status and logs never need pydantic)
        from trempy_nb.settings import parse_settings

        parsed = parse_settings(settings)
        if parsed.name != name:
            raise SettingsError(f"task name {name!r} differs from the settings' task.task_name {parsed.name!r}")
        text = json.dumps(self._stored_settings(name, settings), sort_keys=False)
        with self._b.write() as run:
            lock = self._b.dialect.for_update
            row = run.execute(f"SELECT settings FROM tasks WHERE name = ?{lock}", (name,)).fetchone()  # noqa: S608
            changed = row is not None and row[0] != text
            if changed and not replace:
                owner = self._active_owner(run, name)
                if owner is not None:
                    raise TaskRunning(
                        f"task {name} is running ({owner}) and its settings changed: stop it first"
                        " (trempy-nb stop), or submit with --replace to restart it with the new settings"
                    )
            run.execute(
                "INSERT INTO tasks (name, settings, updated_at, desired) VALUES (?, ?, ?, 'running') "
                "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings, desired = 'running', "
                "updated_at = excluded.updated_at, settings_version = tasks.settings_version + "
                "(CASE WHEN tasks.settings = excluded.settings THEN 0 ELSE 1 END)",
                (name, text, self._b.now()),
            )
            if changed:  # new settings, new start: the old error belongs to the old document
                run.execute("UPDATE task_state SET error = NULL WHERE task = ?", (name,))

    def _active_owner(self, run: Runner, name: str) -> str | None:
        """Who runs the task now (a live lease, or a recent active report), as text; None if nobody."""
        now = self._clock(run)
        for worker, host, pid in run.execute(
            "SELECT l.worker, w.host, w.pid FROM leases l LEFT JOIN workers w ON w.name = l.worker "
            "WHERE l.task = ? AND l.worker IS NOT NULL AND l.expires_at > clock_timestamp() ORDER BY l.role",
            (name,),
        ).fetchall():
            return f"worker {worker}" + (f" on {host}, pid {pid}" if host else "")
        for state, worker, updated in run.execute(
            "SELECT state, worker, updated_at FROM task_state WHERE task = ? ORDER BY role", (name,)
        ).fetchall():
            age = _age(now, updated)
            if state in ACTIVE_STATES and age is not None and age < ACTIVE_REPORT_S:
                return f"{state}" + (f" on {worker}" if worker else "")
        return None

    def set_desired(self, name: str, desired: Desired) -> None:
        """Say whether the task should run; its owner (if any) drains and stops, or a worker claims it."""
        if desired not in get_args(Desired):
            raise SettingsError(f"desired state must be running or stopped, not {desired!r}")
        with self._b.write() as run:
            found = run.execute("UPDATE tasks SET desired = ? WHERE name = ?", (desired, name)).rowcount
        if not found:
            raise self._unknown(name)

    # ------------------------------------------------------------------ workers

    def register_worker(self, name: str, host: str, pid: int, roles: list[str], ttl_s: float) -> None:
        """Record a live worker; WorkerNameTaken if another live worker has the name."""
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise SettingsError(f"worker roles must be among {', '.join(ROLES)}, not {roles!r}")
        ttl = _check_ttl(ttl_s)
        with self._b.write() as run:
            taken = run.execute(
                "INSERT INTO workers (name, host, pid, roles, started_at, heartbeat_at, expires_at) "  # noqa: S608
                f"VALUES (?, ?, ?, ?, clock_timestamp(), clock_timestamp(), {self._b.dialect.after}) "
                "ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                "roles = excluded.roles, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at "
                "WHERE workers.expires_at <= clock_timestamp() "
                "OR (workers.host = excluded.host AND workers.pid = excluded.pid)",
                (name, host, int(pid), json.dumps(list(roles)), ttl),
            ).rowcount == 0
            if taken:
                other = run.execute("SELECT host, pid FROM workers WHERE name = ?", (name,)).fetchone()
                where = f" (host {other[0]}, pid {other[1]})" if other else ""
                raise WorkerNameTaken(f"a live worker is already named {name!r}{where}: choose another --name")
        self._registered[name] = (host, int(pid), list(roles))

    def worker_heartbeat(self, name: str, ttl_s: float) -> None:
        """Keep the worker alive for ttl_s more; re-registers it if its row vanished (WorkerNameTaken if taken)."""
        ttl = _check_ttl(ttl_s)
        me = self._registered.get(name)
        cond, params = ("AND host = ? AND pid = ?", [me[0], me[1]]) if me else ("", [])
        with self._b.write() as run:
            done = run.execute(
                f"UPDATE workers SET heartbeat_at = clock_timestamp(), expires_at = {self._b.dialect.after} "  # noqa: S608
                f"WHERE name = ? {cond}",
                (ttl, name, *params),
            ).rowcount
        if done:
            return
        if me is None:
            raise KeyError(f"no worker {name!r} is registered in {self._b.describe()}")
        self.register_worker(name, me[0], me[1], me[2], ttl)

    def unregister_worker(self, name: str) -> None:
        """Forget the worker and free whatever leases it still holds (it stopped: others may claim at once)."""
        me = self._registered.pop(name, None)
        cond, params = ("AND host = ? AND pid = ?", [me[0], me[1]]) if me else ("", [])
        with self._b.write() as run:
            gone = run.execute(f"DELETE FROM workers WHERE name = ? {cond}", (name, *params)).rowcount  # noqa: S608
            if gone:
                run.execute("UPDATE leases SET worker = NULL, expires_at = NULL WHERE worker = ?", (name,))

    def workers(self) -> list[dict[str, Any]]:
        """Registered workers by name: name, host, pid, roles, heartbeat_age_s, alive."""
        with self._b.read() as run:
            now = self._clock(run)
            rows = run.execute(
                "SELECT name, host, pid, roles, heartbeat_at, expires_at FROM workers ORDER BY name"
            ).fetchall()
        out = []
        for name, host, pid, roles, beat, expires in rows:
            until = to_datetime(expires)
            out.append({
                "name": name,
                "host": host,
                "pid": int(pid),
                "roles": json.loads(roles),
                "heartbeat_age_s": _age(now, beat),
                "alive": bool(now is not None and until is not None and until > now),
            })
        return out

    # ------------------------------------------------------------------ leases

    def claimable(self, roles: list[str]) -> list[tuple[str, str]]:
        """(task, role) pairs wanted running, of one of `roles`, that nobody holds a live lease on."""
        with self._b.read() as run:
            tasks = run.execute("SELECT name, settings FROM tasks WHERE desired = 'running' ORDER BY name").fetchall()
            held = {
                (t, r)
                for t, r in run.execute(
                    "SELECT task, role FROM leases WHERE worker IS NOT NULL AND expires_at > clock_timestamp()"
                ).fetchall()
            }
        out = []
        for name, text in tasks:
            for role in _roles_of_text(text):
                if role in roles and (name, role) not in held:
                    out.append((name, role))
        return out

    def claim(self, task: str, role: str, worker: str, ttl_s: float) -> Lease | None:
        """Take the task role's lease if it is free or expired, incrementing its epoch; None if someone holds it."""
        ttl = _check_ttl(ttl_s)
        d = self._b.dialect
        with self._b.write() as run:
            row = run.execute("SELECT settings, desired FROM tasks WHERE name = ?", (task,)).fetchone()
            if row is None:
                raise self._unknown(task)
            if role not in roles_of(json.loads(row[0])):
                raise SettingsError(f"task {task} runs as {' and '.join(roles_of(json.loads(row[0])))}, not as {role!r}")
            if row[1] != "running":
                return None
            run.execute("INSERT INTO leases (task, role, worker, epoch) VALUES (?, ?, NULL, 0) ON CONFLICT (task, role) DO NOTHING",
                        (task, role))
            before = run.execute(
                f"SELECT worker, renewed_at, clock_timestamp() FROM leases WHERE task = ? AND role = ?{d.for_update}",  # noqa: S608
                (task, role),
            ).fetchone()
            won = run.execute(
                "UPDATE leases SET worker = ?, epoch = epoch + 1, acquired_at = clock_timestamp(), "  # noqa: S608
                f"renewed_at = clock_timestamp(), expires_at = {d.after}, ttl_s = ? "
                "WHERE task = ? AND role = ? AND (worker IS NULL OR expires_at IS NULL OR expires_at <= clock_timestamp())",
                (worker, ttl, ttl, task, role),
            ).rowcount
            if won != 1:
                return None
            epoch = int(run.execute("SELECT epoch FROM leases WHERE task = ? AND role = ?", (task, role)).fetchone()[0])
        previous = before[0] if before else None
        return Lease(task, role, worker, epoch, ttl, previous,
                     _age(to_datetime(before[2]), before[1]) if previous else None)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease by its ttl; False when it was taken over (another holder or a newer epoch)."""
        with self._b.write() as run:
            return run.execute(
                f"UPDATE leases SET renewed_at = clock_timestamp(), expires_at = {self._b.dialect.after} "  # noqa: S608
                "WHERE task = ? AND role = ? AND worker = ? AND epoch = ?",
                (lease.ttl_s, lease.task, lease.role, lease.worker, lease.epoch),
            ).rowcount == 1

    def renew_many(self, worker: str, leases: Sequence[Lease]) -> dict[tuple[str, str], bool]:
        """Extend several leases of `worker` in one transaction (a keeper's round: one store write
        however many tasks it holds); per (task, role), whether it is still held at its epoch."""
        if not leases:
            return {}
        after = self._b.dialect.after
        which = " OR ".join(["(task = ? AND role = ? AND epoch = ?)"] * len(leases))
        ttl = _check_ttl(max(lease.ttl_s for lease in leases))
        params: list[Any] = [ttl, worker]
        for lease in leases:
            params += [lease.task, lease.role, lease.epoch]
        with self._b.write() as run:
            run.execute(f"UPDATE leases SET renewed_at = clock_timestamp(), expires_at = {after} "  # noqa: S608 - placeholders only
                        f"WHERE worker = ? AND ({which})", tuple(params))
            held = {(str(t), str(r), int(e)) for t, r, e in
                    run.execute("SELECT task, role, epoch FROM leases WHERE worker = ?", (worker,)).fetchall()}
        return {(lease.task, lease.role): (lease.task, lease.role, lease.epoch) in held for lease in leases}

    def release(self, lease: Lease) -> None:
        """Give the lease up (the epoch stays: the next claim increments it); no-op if already taken over."""
        with self._b.write() as run:
            run.execute(
                "UPDATE leases SET worker = NULL, expires_at = NULL WHERE task = ? AND role = ? AND worker = ? AND epoch = ?",
                (lease.task, lease.role, lease.worker, lease.epoch),
            )

    # ------------------------------------------------------------------ actual state

    def report(
        self,
        task: str,
        *,
        role: str = "both",
        state: str,
        worker: str | None = None,
        error: str | BaseException | None = None,
        lag_bytes: int | None = None,
        lag_s: float | None = None,
        changes_applied: int | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        """Record what a task role is doing. None keeps a field's last value; error="" clears the error.
        `host`/`pid`: where a run outside the fleet reports from (a worker's come from its row)."""
        if state not in STATES:
            raise SettingsError(f"task state must be one of {', '.join(STATES)}, not {state!r}")
        if role not in ROLES:
            raise SettingsError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        text = None if error is None else mask(error).strip()
        with self._b.write() as run:
            run.execute(
                "INSERT INTO task_state (task, role, state, worker, error, lag_bytes, lag_s, changes_applied, host, pid,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, clock_timestamp()) ON CONFLICT (task, role) DO UPDATE SET "
                "host = COALESCE(excluded.host, task_state.host), pid = COALESCE(excluded.pid, task_state.pid), "
                "state = excluded.state, worker = COALESCE(excluded.worker, task_state.worker), "
                "error = CASE WHEN ? THEN NULL ELSE COALESCE(excluded.error, task_state.error) END, "
                "lag_bytes = COALESCE(excluded.lag_bytes, task_state.lag_bytes), "
                "lag_s = COALESCE(excluded.lag_s, task_state.lag_s), "
                "changes_applied = COALESCE(excluded.changes_applied, task_state.changes_applied), "
                "updated_at = excluded.updated_at",
                (
                    task, role, state, worker, text or None,
                    None if lag_bytes is None else int(lag_bytes),
                    None if lag_s is None else float(lag_s),
                    None if changes_applied is None else int(changes_applied),
                    host, None if pid is None else int(pid),
                    text == "",
                ),
            )

    def fleet_status(self, name: str | None = None) -> list[dict[str, Any]]:
        """One dict per task role: desired and actual state, owner, heartbeat age, lag, changes, error, epoch."""
        where, params = ("WHERE name = ?", (name,)) if name else ("", ())
        by_task = "WHERE task = ?" if name else ""
        with self._b.read() as run:
            now = self._clock(run)
            tasks = run.execute(
                f"SELECT name, desired, settings, settings_version FROM tasks {where} ORDER BY name", params  # noqa: S608
            ).fetchall()
            leases = {
                (r[0], r[1]): r
                for r in run.execute(
                    f"SELECT task, role, worker, epoch, renewed_at, expires_at FROM leases {by_task}", params  # noqa: S608
                ).fetchall()
            }
            states = {
                (r[0], r[1]): r
                for r in run.execute(
                    "SELECT task, role, state, worker, error, lag_bytes, lag_s, changes_applied, updated_at, host, pid "  # noqa: S608
                    f"FROM task_state {by_task}",
                    params,
                ).fetchall()
            }
            workers = {
                r[0]: r for r in run.execute("SELECT name, host, pid, heartbeat_at FROM workers").fetchall()
            }
        # a task run outside the store's tasks (a settings file run from the CLI or a notebook)
        # shows while it reports: wanted running while its last report is active
        stored = {t[0] for t in tasks}
        for task in sorted({t for t, _ in states} - stored):
            active = any(st[2] in ACTIVE_STATES for (t, _), st in states.items() if t == task)
            tasks.append((task, "running" if active else "stopped", None, 0))
        tasks.sort(key=lambda t: str(t[0]))
        if name and not tasks:
            raise self._unknown(name)
        out = []
        for task, desired, text, version in tasks:
            roles = list(_roles_of_text(text)) if text is not None else []
            roles += sorted({r for t, r in (*leases, *states) if t == task and r not in roles})
            for role in roles:
                lease, st = leases.get((task, role)), states.get((task, role))
                expires = to_datetime(lease[5]) if lease else None
                live = bool(lease and lease[2] and expires and now and expires > now)
                owner = lease[2] if live and lease else (st[3] if st and st[2] in ACTIVE_STATES else None)
                w = workers.get(owner) if owner else None
                state = st[2] if st else ("pending" if desired == "running" else "stopped")
                out.append({
                    "task": task,
                    "role": role,
                    "desired": desired,
                    "state": state,
                    "worker": owner,
                    "host": w[1] if w else (st[9] if st and owner else None),
                    "pid": int(w[2]) if w else (int(st[10]) if st and owner and st[10] is not None else None),
                    "heartbeat_age_s": _age(now, w[3]) if w else (_age(now, lease[4]) if live and lease else None),
                    "lag_bytes": None if not st or st[5] is None else int(st[5]),
                    "lag_s": None if not st or st[6] is None else float(st[6]),
                    "changes_applied": None if not st or st[7] is None else int(st[7]),
                    "error": st[4] if st else None,
                    "epoch": int(lease[3]) if lease else 0,
                    "lease_expires_in_s": round((expires - now).total_seconds(), 3) if live and expires and now else None,
                    "reported_age_s": _age(now, st[8]) if st else None,
                    "settings_version": int(version),
                })
        return out

    # ------------------------------------------------------------------ takeovers

    def record_takeover(self, task: str, role: str, from_worker: str | None, to_worker: str, seconds: float | None) -> None:
        """Remember that `to_worker` took the task role over from `from_worker` after `seconds`."""
        with self._b.write() as run:
            run.execute(
                "INSERT INTO takeovers (time, task, role, from_worker, to_worker, seconds) VALUES (?, ?, ?, ?, ?, ?)",
                (self._b.now(), task, role, from_worker, to_worker, None if seconds is None else float(seconds)),
            )

    def takeovers(self, task: str | None = None) -> pl.DataFrame:
        """Takeovers, oldest first: time, task, role, from_worker, to_worker, seconds."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        return self._frame(
            "takeovers",
            f"SELECT time, task, role, from_worker, to_worker, seconds FROM takeovers {where} ORDER BY id",  # noqa: S608
            params,
        )
