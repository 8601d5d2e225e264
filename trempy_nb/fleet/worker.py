"""The worker: a long-lived process that owns tasks through leases in the state store.

One supervisor loop (`tick`, every `tick_s`) claims desired-running (task, role) pairs, starts
one `engine.runner.Runner` per pair with a `Fence(lease.epoch, valid=clock.valid)`, watches the
runners, reports their actual state, lag and changes to the store, and stops a runner when the
task's desired state becomes stopped (drain), when the lease is lost (zombie: the fence refuses
its writes on the target whatever it does) or when the worker drains (SIGTERM). A keeper thread
heartbeats the worker and renews every lease every ttl/3 and records, per lease, when the last
successful renewal was *sent* (`policy.LeaseClock`): the one proof of ownership that needs no
store, so a worker cut off from the store keeps applying only while that proof holds.

A failed run is restarted with capped exponential backoff; after `Backoff.max_failures` failures
in a row the task is reported failed with its error and set desired-stopped (so no other worker
restarts it in a loop; `trempy-nb submit` or `%trempy run --detach` asks again).
"""

from __future__ import annotations

import math
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from trempy_nb.engine.reporting import actual_state
from trempy_nb.engine.runner import Runner
from trempy_nb.errors import Fenced
from trempy_nb.fleet.assignment import (
    STOP_DESIRED,
    STOP_DRAIN,
    STOP_FAILED,
    STOP_LOST,
    Assignment,
    RunnerLike,
)
from trempy_nb.fleet.outage import OUTAGE_ERRORS, OutageTolerantStore
from trempy_nb.fleet.policy import (
    HEALTHY_AFTER_S,
    RENEWALS_PER_TTL,
    Backoff,
    LeaseClock,
    default_worker_name,
    lease_expired_for,
)
from trempy_nb.ops.slotwatch import watch_retained
from trempy_nb.redact import mask
from trempy_nb.store.fleet import LEASE_TTL_S
from trempy_nb.writer.fence import Fence

#: builds a runnable task from stored settings (the surface passes `Task.from_settings`)
MakeTask = Callable[[dict[str, Any]], Any]
#: builds a (not yet started) runner for a task in a role under a fence, recording into a store
MakeRunner = Callable[[Any, str, Fence, Any], RunnerLike]

DEFAULT_TTL_S = LEASE_TTL_S  # 10 s: takeover (expiry + claim + start) lands within 15 s
DEFAULT_MAX_TASKS = 32
DRAIN_TIMEOUT_S = 120.0
#: an unchanged role is reported again after this long (its row's age shows it is alive)
REPORT_IDLE_S = 15.0
#: how often the worker asks the store for claimable tasks (s)
CLAIM_EVERY_S = 1.0


def engine_runner(task: Any, role: str, fence: Fence, store: Any) -> RunnerLike:
    """The engine's `Runner` in `role`, fenced by the lease (no progress bars: a log file)."""
    return Runner(task, until_caught_up=False, progress=False, role=role,  # type: ignore[arg-type]
                  fence=fence, store=store)


class Worker:
    """See the module docstring. `store` is a `MetadataStore` with the fleet API."""

    def __init__(self, store: Any, *, make_task: MakeTask, name: str | None = None,
                 roles: list[str] | None = None, max_tasks: int = DEFAULT_MAX_TASKS,
                 ttl_s: float = DEFAULT_TTL_S, backoff: Backoff | None = None,
                 make_runner: MakeRunner = engine_runner, report_every_s: float = 2.0,
                 tick_s: float = 0.5, out: TextIO | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"--lease-ttl must be positive (got {ttl_s})")
        if max_tasks < 1:
            raise ValueError(f"--max-tasks must be at least 1 (got {max_tasks})")
        self.store = store
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or default_worker_name(self.host, self.pid)
        self.roles = roles or ["both", "producer", "consumer"]
        self.max_tasks = max_tasks
        self.ttl_s = ttl_s
        self.backoff = backoff or Backoff()
        self.make_task = make_task
        self.make_runner = make_runner
        self.report_every_s = report_every_s
        self.tick_s = tick_s
        self.out = out or sys.stdout
        self.held: dict[tuple[str, str], Assignment] = {}
        self.fenced = 0  # late writes of this worker refused by the target's fence
        self.takeovers = 0
        self._lock = threading.RLock()
        self._drain = threading.Event()
        self._done = threading.Event()
        self._keeper: threading.Thread | None = None
        self._store_ok = True
        self._desired: dict[str, str] = {}
        self._status_rows: list[dict[str, Any]] = []
        self._last_report = 0.0
        self._seen_claimable: dict[tuple[str, str], float] = {}
        self._next_claim = 0.0
        self._applied_before: dict[tuple[str, str], int] = {}
        #: what the runs record into: the store, riding out its outages (fleet.outage)
        self.run_store = OutageTolerantStore(store, on_outage=self._store_lost)

    # lifecycle -----------------------------------------------------------------------------
    def register(self) -> None:
        """Register the worker (`WorkerNameTaken` if a live worker has the name) and start the
        keeper thread (heartbeat + lease renewals)."""
        self.store.register_worker(self.name, self.host, self.pid, list(self.roles), self.ttl_s)
        self.say("INFO", f"worker {self.name} up (host {self.host}, pid {self.pid}, roles"
                 f" {','.join(self.roles)}, lease ttl {self.ttl_s:g} s, max tasks {self.max_tasks})")
        self._keeper = threading.Thread(target=self._keep, name="trempy-worker-keeper", daemon=True)
        self._keeper.start()

    def request_drain(self) -> None:
        """SIGTERM: stop claiming, stop every runner after its batch, release, exit."""
        if not self._drain.is_set():
            self.say("INFO", f"worker {self.name} draining: finishing batches, releasing tasks")
        self._drain.set()

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    def run(self) -> int:
        """The supervisor loop until drained (`request_drain`); returns the exit code, 0."""
        drain_deadline: float | None = None
        try:
            while True:
                self.tick()
                if self.draining:
                    drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT_S
                    if not self.held:
                        break
                    if time.monotonic() > drain_deadline:
                        left = ", ".join(f"{t}/{r}" for t, r in self.held)
                        self.say("WARNING", f"drain timed out; leases left to expire: {left}")
                        break
                time.sleep(self.tick_s)
        finally:
            self._done.set()
            self._call(self.store.unregister_worker, self.name)
            self.say("INFO", f"worker {self.name} stopped (takeovers {self.takeovers},"
                     f" fenced writes refused {self.fenced})")
        return 0

    # the supervisor ---------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_report >= self.report_every_s:
            self._refresh_status()
        with self._lock:
            held = list(self.held.values())
        for a in held:
            self._supervise(a, time.monotonic())
        if not self.draining and self._store_ok:
            self._claim()
        if now - self._last_report >= self.report_every_s:
            self._last_report = now
            self._report()

    def _supervise(self, a: Assignment, now: float) -> None:
        if a.stopping is None:
            if not a.clock.valid():
                why = "taken over" if a.clock.lost else "not renewed within its ttl"
                self.say("WARNING", f"lease of epoch {a.epoch} lost ({why}): stopping at once; the"
                         " target's fence refuses any late write", a.task, a.role)
                self._stop(a, STOP_LOST)
            elif self.draining:
                self._stop(a, STOP_DRAIN)
            elif self._desired.get(a.task) == "stopped":
                self.say("INFO", "desired state stopped: draining the task", a.task, a.role)
                self._stop(a, STOP_DESIRED)
        runner = a.runner
        if runner is not None and runner.running:
            if a.failures.count and a.up_for(now) > HEALTHY_AFTER_S:
                a.failures.healthy()
            return
        if runner is not None:
            self._ended(a, runner, now)
            return
        if a.stopping is not None:
            self._finish(a)
            return
        if now >= a.failures.retry_at and a.clock.valid():
            self._start(a, now)

    def _start(self, a: Assignment, now: float) -> None:
        try:
            settings = self.store.load_task(a.task)
            task = self.make_task(settings)
            # the fleet reloads only at a task's very first start: a takeover or a restart continues
            if not (a.epoch == 1 and a.starts == 0):
                task.settings.task.start_mode = "continue"
            runner = self.make_runner(task, a.role, Fence(a.epoch, valid=a.clock.valid), self.run_store)
            a.starts += 1
            a.started_at = now
            a.runner = runner
            runner.start()
        except Exception as exc:  # noqa: BLE001 - bad settings, store down: a failure (not counted if the store's)
            a.runner = None
            if isinstance(exc, OUTAGE_ERRORS):
                self._store_lost(exc)
            self._failed(a, mask(f"{type(exc).__name__}: {exc}"), now)
            return
        a.state = "pending"
        self.say("INFO", f"started (epoch {a.epoch}, start {a.starts})", a.task, a.role)

    def _stop(self, a: Assignment, why: str) -> None:
        a.stopping = why
        if a.runner is not None and a.runner.running:
            try:
                a.runner.stop(timeout=0)  # asks; the loop sees it end
            except Exception:  # noqa: BLE001, S110 - its error is read when it ends
                pass

    def _ended(self, a: Assignment, runner: RunnerLike, now: float) -> None:
        a.runner = None
        self._applied_before[a.key] = self._applied_before.get(a.key, 0) + int(runner.counters.changes)
        err = runner.error
        if isinstance(err, Fenced) or a.stopping == STOP_LOST or a.clock.lost:
            if isinstance(err, Fenced):
                self.fenced += 1
                self.say("WARNING", f"fenced: a late write of epoch {a.epoch} was refused by the target"
                         f" ({mask(str(err))})", a.task, a.role, fields={"event": "fenced", "epoch": a.epoch})
            self._forget(a, report=None)
            return
        if a.stopping in (STOP_DESIRED, STOP_DRAIN):
            self._forget(a, report="stopped")
            return
        if err is None:
            if runner.status == "succeeded" and _one_shot(runner):
                self.say("INFO", "full load done: desired state set to stopped", a.task, a.role)
                self._call(self.store.set_desired, a.task, "stopped")
                self._forget(a, report="stopped")
                return
            err_text = f"the run ended on its own (status {runner.status})"
        else:
            err_text = mask(str(err))
        self._failed(a, err_text, now)

    def _failed(self, a: Assignment, error: str, now: float) -> None:
        if not self._store_ok:  # the store's outage, not the task's fault: no count, retry when it answers
            a.failures.retry_at = now + self.backoff.base_s
            self.say("WARNING", f"run ended while the state store is unreachable, retrying: {error}",
                     a.task, a.role, store=False)
            return
        give_up = a.failures.failed(error, self.backoff, now)
        n, limit = a.failures.count, self.backoff.max_failures
        if give_up:
            self.say("ERROR", f"failed {n} times in a row, giving up: {error}", a.task, a.role)
            a.stopping = STOP_FAILED
            self._call(self.store.report, a.task, role=a.role, state="failed", worker=self.name, error=error)
            self._call(self.store.set_desired, a.task, "stopped")
            self._forget(a, report=None)
            return
        wait = max(0.0, a.failures.retry_at - now)
        self.say("WARNING", f"run failed ({n}/{limit}), restarting in {wait:.1f} s: {error}", a.task, a.role)
        self._call(self.store.report, a.task, role=a.role, state="pending", worker=self.name,
                   error=f"restarting in {wait:.0f} s after failure {n}/{limit}: {error}")

    def _finish(self, a: Assignment) -> None:
        report = None if a.stopping in (STOP_LOST, STOP_FAILED) else "stopped"
        self._forget(a, report=report)

    def _forget(self, a: Assignment, *, report: str | None) -> None:
        """Drop an assignment: report its final state while the lease is still ours, release it
        (a no-op in the store when it was taken over)."""
        if report is not None and a.clock.valid():
            self._call(self.store.report, a.task, role=a.role, state=report, worker=self.name)
        self._call(self.store.release, a.lease)
        with self._lock:
            self.held.pop(a.key, None)
        self.say("INFO", f"released (epoch {a.epoch}{', ' + a.stopping if a.stopping else ''})",
                 a.task, a.role)

    # claiming ---------------------------------------------------------------------------------
    def _claim(self) -> None:
        if len(self.held) >= self.max_tasks:
            return
        now = time.monotonic()
        if now < self._next_claim:  # at most once a second: idle, the store is asked little
            return
        self._next_claim = now + CLAIM_EVERY_S
        pairs = self._call(self.store.claimable, list(self.roles))
        if not pairs:
            self._seen_claimable.clear()
            return
        now = time.monotonic()
        pairs = [(str(t), str(r)) for t, r in pairs if (t, r) not in self.held]
        self._seen_claimable = {p: self._seen_claimable.get(p, now) for p in pairs}
        if len(self.held) >= self._fair_share():
            # over our share: leave it to a less busy worker unless nobody took it for a while
            patience = self.ttl_s / RENEWALS_PER_TTL + 2 * self.tick_s
            pairs = [p for p in pairs if now - self._seen_claimable[p] > patience]
        random.shuffle(pairs)
        for task, role in pairs[:1]:
            self._claim_one(task, role)

    def _fair_share(self) -> int:
        pairs = {(str(r.get("task")), str(r.get("role") or "both")) for r in self._status_rows
                 if r.get("desired") == "running" and str(r.get("role") or "both") in self.roles}
        workers = self._call(self.store.workers) or []
        alive = [w for w in workers if w.get("alive") and set(w.get("roles") or []) & set(self.roles)]
        return max(1, math.ceil(len(pairs) / max(1, len(alive))))

    def _claim_one(self, task: str, role: str) -> None:
        sent = time.monotonic()
        lease = self._call(self.store.claim, task, role, self.name, self.ttl_s)
        if not lease:
            return
        a = Assignment(task, role, lease, LeaseClock(self.ttl_s, sent_at=sent))
        with self._lock:
            self.held[a.key] = a
        self._seen_claimable.pop(a.key, None)
        previous = getattr(lease, "previous_worker", None)
        if previous and previous != self.name:
            # the store gives the seconds since the old holder last renewed; its lease ran a ttl longer
            expired_s = lease_expired_for({"lease_age_s": getattr(lease, "previous_age_s", None)}, self.ttl_s)
            self.takeovers += 1
            self._call(self.store.record_takeover, task, role, previous, self.name, expired_s)
            self.say("INFO", f"took over from {previous} (epoch {a.epoch}; its lease had expired"
                     f" {expired_s:.1f} s before)", task, role,
                     fields={"event": "takeover", "from": previous, "epoch": a.epoch, "expired_s": expired_s})
        else:
            self.say("INFO", f"claimed (epoch {a.epoch})", task, role)
        self._start(a, time.monotonic())

    # reporting --------------------------------------------------------------------------------
    def _refresh_status(self) -> None:
        rows = self._call(self.store.fleet_status)
        if rows is None:
            return
        self._status_rows = list(rows)
        self._desired = {str(r.get("task")): str(r.get("desired")) for r in rows}

    def _report(self) -> None:
        """Report each running role's figures when they changed, and at least every
        `REPORT_IDLE_S` (an idle fleet writes next to nothing)."""
        with self._lock:
            held = list(self.held.values())
        now = time.monotonic()
        for a in held:
            runner = a.runner
            if runner is None or a.stopping == STOP_LOST or not a.clock.valid():
                continue
            c = runner.counters
            state = actual_state(runner.status, float(c.lag_seconds), a.role)
            applied = self._applied_before.get(a.key, 0) + int(c.changes)
            figures = (state, int(c.lag_bytes), round(float(c.lag_seconds), 1), applied)
            if figures == a.reported and now - a.reported_at < REPORT_IDLE_S:
                continue
            healthy = state in ("loading", "streaming", "catching_up")
            self._call(self.store.report, a.task, role=a.role, state=state, worker=self.name,
                              error="" if healthy else None,  # running again: an earlier error is history
                              lag_bytes=int(c.lag_bytes), lag_s=round(float(c.lag_seconds), 3),
                              changes_applied=applied)
            if self._store_ok:  # else: reported again once the store answers
                a.state, a.reported, a.reported_at = state, figures, now

    # the keeper thread ------------------------------------------------------------------------
    def _keep(self) -> None:
        """Heartbeat, then renew every held lease in one store transaction (`renew_many`), every
        ttl/3; a lease the store no longer gives this worker at its epoch is lost at once."""
        interval = self.ttl_s / RENEWALS_PER_TTL
        while not self._done.is_set():
            self._call(self.store.worker_heartbeat, self.name, self.ttl_s)
            with self._lock:
                held = [a for a in self.held.values() if not a.clock.lost]
            sent = time.monotonic()
            kept = self._call(self.store.renew_many, self.name, [a.lease for a in held]) if held else {}
            for a in held if kept is not None else ():
                if kept.get(a.key):
                    a.clock.renewed(sent)
                else:
                    a.clock.lose()
                    self.say("WARNING", f"lease of epoch {a.epoch} taken over by another worker", a.task, a.role)
            self._watch_slots(held)
            self._done.wait(interval)

    def _watch_slots(self, held: list[Assignment]) -> None:
        """Warn in the logs when a slot this worker reads from retains too much WAL
        (`ops.slotwatch`; the figure comes from the run's own slot status, no extra query)."""
        for a in held:
            runner = a.runner
            if runner is None or a.role == "consumer" or not a.clock.valid():
                continue
            retained = int(getattr(runner.counters, "retained_bytes", 0) or 0)
            if retained:
                self._call(watch_retained, self.store, a.task, retained, worker=self.name)

    # store calls and output -------------------------------------------------------------------
    def _store_lost(self, exc: BaseException) -> None:
        if self._store_ok:
            self._store_ok = False
            self.say("WARNING", f"state store unreachable ({mask(f'{type(exc).__name__}: {exc}')});"
                     " applying only while leases are provably valid, retrying", store=False)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call; a lost store is logged once per outage and gives None (the loop goes on,
        runners keep applying only while their lease clocks hold)."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any store failure: keep going, retry next time
            self._store_lost(exc)
            return None
        if not self._store_ok:
            self._store_ok = True
            self.say("INFO", "state store reachable again", store=False)
        return result

    def say(self, level: str, message: str, task: str | None = None, role: str | None = None, *,
            fields: dict[str, Any] | None = None, store: bool = True) -> None:
        """One line to the worker's output; a task's line also goes to the store's logs."""
        where = f" {task}" + (f"/{role}" if role and role != "both" else "") if task else ""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        print(f"{stamp} {level:<7} [{self.name}]{where}: {mask(message)}", file=self.out, flush=True)
        if store and task is not None and self._store_ok:
            try:
                self.store.log(task, None, level, mask(message), worker=self.name,
                               fields={"role": role, **(fields or {})})
            except Exception:  # noqa: BLE001, S110 - the output line is written already
                pass


def _one_shot(runner: RunnerLike) -> bool:
    """A full-load-only task: once it succeeded there is nothing left to run."""
    settings = getattr(getattr(runner, "task", None), "settings", None)
    return settings is not None and settings.task.replication_type == "full_load"
