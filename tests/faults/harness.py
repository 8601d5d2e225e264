"""Fault harness: its own PostgreSQL clusters, runners as killable OS processes, bounded waits.

Faults are injected only into what the harness started: the runner subprocesses it spawned
(kill -9 by pid), the clusters it created with `trempy_nb.embedded.start_cluster` (pg_ctl,
pg_terminate_backend of its own sessions), and a RabbitMQ vhost it created itself.
Every wait has a time limit; a runner's output goes to a log file that the secret scan reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.faults.report import RESULTS
from trempy_nb.changes import lsn_to_int
from trempy_nb.embedded import Cluster, start_cluster

REPO = Path(__file__).resolve().parents[2]
OPTIONS = "-c TimeZone=UTC -c synchronous_commit=on -c DateStyle=ISO,YMD"

# Every password the suite uses (clusters, roles, broker users): the secret scan looks for them.
SECRETS: set[str] = set()
# Places the secret scan reads at the end: runner logs, metadata stores, settings files, ...
SCAN_PATHS: list[Path] = []
# Texts the tests produced in-process: exception messages, reprs, stats frames.
SCAN_TEXTS: list[tuple[str, str]] = []

_SESSION_DIR: Path | None = None


def session_dir() -> Path:
    global _SESSION_DIR
    if _SESSION_DIR is None:
        _SESSION_DIR = Path(tempfile.mkdtemp(prefix="trempy_faults_"))
        os.chmod(_SESSION_DIR, 0o755)  # the clusters run as an unprivileged user
    return _SESSION_DIR


def cleanup_session_dir() -> None:
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `pred` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            got = pred()
            if got:
                return got
        except (psycopg.Error, OSError) as exc:  # the thing we wait for may be restarting
            last_exc = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def connect(uri: str, autocommit: bool = True, **kw: Any) -> psycopg.Connection:
    return psycopg.connect(uri, autocommit=autocommit, options=OPTIONS, connect_timeout=5, **kw)


def q(uri: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect(uri) as c:
        cur = c.execute(query, params)
        return cur.fetchall() if cur.description else []


# -- clusters ------------------------------------------------------------------------------------


def new_cluster(**conf: str) -> Cluster:
    base = session_dir() / f"pg_{uuid.uuid4().hex[:6]}"
    cluster = start_cluster(base=base, conf={"track_commit_timestamp": "on", **conf})
    SECRETS.add(cluster.password)
    return cluster


@dataclass
class PgPair:
    """The suite's own source and target clusters (separate, so each can be crashed alone)."""

    src: Cluster
    tgt: Cluster

    def destroy(self) -> None:
        for c in (self.src, self.tgt):
            with contextlib.suppress(Exception):
                c.destroy()


def ensure_up(cluster: Cluster) -> None:
    """After a crash test: make sure the cluster runs again."""
    res = cluster.pg_ctl("status", check=False)
    if res.returncode != 0:
        cluster.start()
    wait_until(lambda: q(cluster.uri(), "SELECT 1"), 60, "cluster back up")


# -- runner processes ----------------------------------------------------------------------------


class RunnerProc:
    """`python -m trempy_nb.cli run SETTINGS ...` as a separate process group (killable)."""

    def __init__(
        self,
        env: FaultEnv,
        args: list[str],
        extra_env: dict[str, str] | None = None,
        label: str = "runner",
    ) -> None:
        self.env = env
        self.args = args
        self.log_path = env.dir / f"{label}_{uuid.uuid4().hex[:6]}.log"
        SCAN_PATHS.append(self.log_path)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait/kill
        penv = {**os.environ, **env.process_env(), **(extra_env or {})}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trempy_nb.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=penv,
            cwd=str(REPO),
            start_new_session=True,
        )
        self.peak_rss = 0
        self._rss_thread = threading.Thread(target=self._watch_rss, daemon=True)
        self._rss_thread.start()
        env.procs.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _watch_rss(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
            time.sleep(0.1)
        RESULTS.rss(self.peak_rss)

    def kill9(self, kind: str = "kill -9 runner") -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            RESULTS.fault(kind)
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            rc = self.proc.wait(timeout=30)
        self._log.close()
        return rc

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self._log.close()
            raise AssertionError(
                f"runner {self.args} did not finish in {timeout:.0f}s; log tail:\n{self.log()[-3000:]}"
            ) from None
        self._log.close()
        return rc

    def log(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
        return self.log_path.read_text(errors="replace")


# -- one test's world ----------------------------------------------------------------------------


class FaultEnv:
    """Fresh source/target databases in the suite's clusters, a task name, a TREMPY_HOME, logs."""

    def __init__(self, pair: PgPair, label: str) -> None:
        self.pair = pair
        self.id = uuid.uuid4().hex[:8]
        self.task = f"f{label[:20]}_{self.id}".lower()
        self.dir = session_dir() / self.task
        self.dir.mkdir(parents=True)
        self.home = self.dir / "home"
        SCAN_PATHS.append(self.home)
        self.src = pair.src.create_database(f"src_{self.id}")
        self.tgt = pair.tgt.create_database(f"tgt_{self.id}")
        self.procs: list[RunnerProc] = []
        self.doc: dict[str, Any] = {}
        self.settings_path = self.dir / "task.json"
        SCAN_PATHS.append(self.settings_path)
        self.extra_env: dict[str, str] = {}

    def process_env(self) -> dict[str, str]:
        return {
            "TREMPY_HOME": str(self.home),
            "FAULT_SRC": self.src,
            "FAULT_TGT": self.tgt,
            "TREMPY_BATCH_CHANGES": "500",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    # settings ---------------------------------------------------------------------------
    def settings(
        self,
        *,
        tables: list[tuple[str, str]],
        mode: str = "upsert",
        rtype: str = "full_load_and_cdc",
        filters: list[dict[str, Any]] | None = None,
        interval: float = 0.2,
        transport: str = "local",
        **extra: Any,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "task": {
                "task_name": self.task,
                "source": "${FAULT_SRC}",
                "target": "${FAULT_TGT}",
                "replication_type": rtype,
                "start_mode": "reload",
                "transport": transport,
                "interval_seconds": interval,
                "cdc_settings": {"mode": mode},
            },
            "tables": [{"schema_name": s, "table_name": t} for s, t in tables],
            "error_handling": {"max_retries": 3},
        }
        if filters:
            doc["filters"] = filters
        for k, v in extra.items():
            doc[k] = v
        self.doc = doc
        self.settings_path.write_text(json.dumps(doc, indent=1))
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.settings_path.write_text(json.dumps(doc, indent=1))

    # runners ----------------------------------------------------------------------------
    def start_runner(
        self,
        start_mode: str = "continue",
        *,
        until_caught_up: bool = False,
        extra_env: dict[str, str] | None = None,
        role: str | None = None,
    ) -> RunnerProc:
        args = ["run", str(self.settings_path), "-q", "--start-mode", start_mode]
        if until_caught_up:
            args.append("--until-caught-up")
        if role:
            args += ["--role", role]
        return RunnerProc(self, args, extra_env, label=role or "runner")

    def catch_up(
        self,
        timeout: float = 120,
        start_mode: str = "continue",
        extra_env: dict[str, str] | None = None,
    ) -> str:
        """Run until every change committed before now is applied; asserts a clean exit."""
        r = self.start_runner(start_mode, until_caught_up=True, extra_env=extra_env)
        rc = r.wait(timeout)
        out = r.log()
        assert rc == 0, f"catch-up run failed (rc={rc}):\n{out[-4000:]}"
        return out

    # observation ------------------------------------------------------------------------
    @property
    def slot(self) -> str:
        return f"trempy_{self.task}"

    def slot_row(self) -> tuple[Any, ...] | None:
        rows = q(
            self.src,
            "SELECT confirmed_flush_lsn::text, restart_lsn::text, active, wal_status,"
            " (pg_current_wal_lsn() - restart_lsn)::bigint, safe_wal_size"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        )
        return rows[0] if rows else None

    def confirmed(self) -> int:
        row = self.slot_row()
        return lsn_to_int(row[0]) if row and row[0] else 0

    def checkpoint(self) -> tuple[int, int] | None:
        """(checkpoint lsn, slot_lsn) on the target, or None before the first one."""
        try:
            rows = q(
                self.tgt,
                "SELECT lsn, slot_lsn FROM trempy.checkpoints WHERE task = %s",
                (self.task,),
            )
        except psycopg.errors.UndefinedTable:
            return None
        return (int(rows[0][0]), int(rows[0][1] or 0)) if rows else None

    def flush_lsn(self) -> int:
        return lsn_to_int(q(self.src, "SELECT pg_current_wal_flush_lsn()::text")[0][0])

    def wait_streaming(self, timeout: float = 60) -> None:
        """The full load is done (the task has a checkpoint)."""
        proc = self.procs[-1] if self.procs else None

        def done() -> bool:
            if proc is not None and not proc.alive() and self.checkpoint() is None:
                raise AssertionError(
                    f"runner exited rc={proc.proc.returncode} before its full load"
                    f" finished:\n{proc.log()[-3000:]}"
                )
            return self.checkpoint() is not None

        wait_until(done, timeout, f"task {self.task} to finish its full load")

    def wait_confirmed_past(
        self, lsn: int, timeout: float = 60, proc: RunnerProc | None = None
    ) -> float:
        """Seconds until the slot's confirmed position passes `lsn` (work before it is applied)."""
        t0 = time.monotonic()

        def ok() -> bool:
            if proc is not None and not proc.alive():
                raise AssertionError(
                    f"runner exited rc={proc.proc.returncode}:\n{proc.log()[-3000:]}"
                )
            return self.confirmed() >= lsn

        wait_until(ok, timeout, f"slot {self.slot} to pass {lsn}", interval=0.05)
        return time.monotonic() - t0

    def stop_all(self) -> None:
        for p in self.procs:
            if p.alive():
                p.kill9(kind="cleanup kill")
                RESULTS.faults["cleanup kill"] -= 1

    def drop(self) -> None:
        self.stop_all()
        with contextlib.suppress(Exception):
            from trempy_nb.capture.slot import drop_task_objects

            with connect(self.src) as c:
                drop_task_objects(c, self.task)


@contextlib.contextmanager
def fault_env(pair: PgPair, label: str) -> Iterator[FaultEnv]:
    env = FaultEnv(pair, label)
    try:
        yield env
    finally:
        env.drop()


# -- the slot-vs-checkpoint sampler -------------------------------------------------------------


@dataclass
class Sampler:
    """Samples, while faults run, that the slot never stands past what the target recorded.

    The slot is advanced to the END of a commit record (a little past the commit LSN kept as the
    checkpoint), and the runner records that position in trempy.checkpoints.slot_lsn before each
    advance: so `confirmed_flush_lsn <= slot_lsn` must hold whenever the target has a checkpoint.
    The slot is read first: a later read of the target can only see a larger slot_lsn.
    Also records the peak retained WAL of the slot.
    """

    env: FaultEnv
    interval: float = 0.2
    idle_db: bool = False
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    peak_retained: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fault-sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        RESULTS.invariant_samples += self.samples
        RESULTS.invariant_violations += len(self.violations)
        RESULTS.retained(self.peak_retained, idle_db=self.idle_db)

    def sample(self) -> None:
        row = self.env.slot_row()
        if row is None or row[0] is None:
            return
        confirmed = lsn_to_int(row[0])
        if row[4] is not None:
            self.peak_retained = max(self.peak_retained, int(row[4]))
        cp = self.env.checkpoint()
        if cp is None:
            return
        self.samples += 1
        lsn, slot_lsn = cp
        if confirmed > max(lsn, slot_lsn):
            self.violations.append(
                f"slot confirmed {confirmed} > target checkpoint {lsn} / slot_lsn {slot_lsn}"
            )

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psycopg.Error, OSError):
                self.sample()
            self._stop.wait(self.interval)

    def assert_ok(self) -> None:
        assert not self.violations, f"slot passed the target's checkpoint: {self.violations[:5]}"
