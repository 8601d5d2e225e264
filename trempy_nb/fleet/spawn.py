"""Detached runs: store a task desired-running and make sure some worker will run it.

When no live worker is registered in the state store, a local `trempy-nb worker` process is
started in a session of its own (`start_new_session=True`): it outlives the notebook kernel or
the script that asked, writes to `$TREMPY_HOME/workers/<name>.log`, and stops on SIGTERM
(draining its tasks) like any worker.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trempy_nb.connections import home
from trempy_nb.errors import TrempyError
from trempy_nb.redact import mask

#: how long to wait for a spawned worker to register in the store
REGISTER_TIMEOUT_S = 30.0

_SPAWNED: list[subprocess.Popen[bytes]] = []  # kept so their exit status is collected


@dataclass(frozen=True)
class SpawnedWorker:
    name: str
    pid: int
    log: Path


@dataclass(frozen=True)
class Placement:
    """Who will run a submitted task: live workers, or the local worker just started."""

    task: str
    workers: list[str]
    spawned: SpawnedWorker | None = None

    @property
    def message(self) -> str:
        if self.spawned is not None:
            s = self.spawned
            return (f"task {self.task} submitted (desired running). No worker was alive: started local"
                    f" worker {s.name} (pid {s.pid}), which outlives this kernel; log {s.log}."
                    f" Stop it with `kill -TERM {s.pid}` (it drains first).")
        names = ", ".join(self.workers[:5]) + (" ..." if len(self.workers) > 5 else "")
        return f"task {self.task} submitted (desired running); live worker(s) will claim it: {names}"


def live_workers(store: Any) -> list[str]:
    return [str(w["name"]) for w in store.workers() if w.get("alive")]


def workers_dir() -> Path:
    path = home() / "workers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def spawn_worker(store: Any = None, *, name: str | None = None, metadata_url: str | None = None,
                 extra_args: list[str] | None = None,
                 register_timeout: float = REGISTER_TIMEOUT_S) -> SpawnedWorker:
    """Start `python -m trempy_nb.cli worker` detached from this process; with `store`, wait until
    it registered (a worker that exits first raises with its log's last line)."""
    name = name or f"{socket.gethostname()}-local-{secrets.token_hex(3)}"
    log = workers_dir() / f"{name}.log"
    cmd = [sys.executable, "-m", "trempy_nb.cli", "worker", "--name", name, *(extra_args or [])]
    env = dict(os.environ)
    if metadata_url:  # through the environment: a password never shows in `ps`
        env["TREMPY_METADATA_URL"] = metadata_url
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(home()), env=env)
    _SPAWNED.append(proc)
    spawned = SpawnedWorker(name, proc.pid, log)
    if store is None:
        return spawned
    deadline = time.monotonic() + register_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise TrempyError(f"the local worker {name} exited (rc={proc.returncode}) before registering:"
                              f" {mask(tail[0])} (log {log})")
        if name in live_workers(store):
            return spawned
        time.sleep(0.2)
    raise TrempyError(f"the local worker {name} (pid {proc.pid}) did not register within"
                      f" {register_timeout:.0f} s; see its log {log}")


def place(store: Any, task: str, *, spawn: bool = True) -> Placement:
    """After a submit: the live workers, or (none alive and `spawn`) a local worker started now."""
    alive = live_workers(store)
    if alive or not spawn:
        return Placement(task, alive)
    return Placement(task, [], spawn_worker(store))
