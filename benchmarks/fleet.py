"""The fleet's cost and speed, on throwaway clusters of its own (numbers printed, nothing asserted).

    python -m benchmarks.fleet [--idle-tasks 20] [--idle-seconds 30] [--kills 20] [--ttl 15]
                               [--changes 20000] [--workers 1,2,3] [--parts idle,takeover,throughput]

idle        one `trempy-nb worker` holding `--idle-tasks` CDC tasks with nothing to replicate:
            its CPU (% of one core, from /proc utime+stime over `--idle-seconds`) and RSS.
            Targets: under 2 % of one core, under 600 MB.
takeover    two workers, one CDC task under a light write load; `--kills` times: kill -9 the
            task's owner, time until the task is streaming on the other worker (the lease ttl
            dominates: a dead worker's lease is free `--ttl` s after its last renewal, renewed
            every ttl/3), start a replacement. p50 / max; and how long after the old lease
            expired the new owner claimed it (the store's takeover records).
throughput  4 busy tasks (one table each): a backlog of `--changes` single-row updates per table
            is committed while no worker runs, then `N` workers start (N in `--workers`) and the
            time until every target holds every version is measured (worker start, claim,
            resume and apply included). changes/s for each N.

Source, target and state store are two clusters on this machine (store in the target's): all
the workers share its cores, so more workers add concurrency, not hardware (docs/fleet.md,
"Separate hosts").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from psycopg import sql

from trempy_nb.db import connect
from trempy_nb.embedded import Cluster, start_cluster
from trempy_nb.metadata import MetadataStore
from trempy_nb.store import LEASE_TTL_S

CLK_TCK = os.sysconf("SC_CLK_TCK")


def task_doc(name: str, table: str) -> dict[str, Any]:
    return {
        "task": {"task_name": name, "source": "${BENCH_SRC}", "target": "${BENCH_TGT}",
                 "replication_type": "full_load_and_cdc", "start_mode": "reload",
                 "cdc_settings": {"mode": "scd2"}},
        "tables": [{"schema_name": "public", "table_name": table}],
    }


class World:
    """Clusters, databases, the state store, and the worker processes started."""

    def __init__(self, base: Path) -> None:
        os.chmod(base, 0o755)  # the clusters may run as an unprivileged user
        self.base = base
        self.src_cluster: Cluster = start_cluster(base=base / "src")
        self.tgt_cluster: Cluster = start_cluster(base=base / "tgt")
        tag = uuid.uuid4().hex[:6]
        self.src = self.src_cluster.create_database(f"src_{tag}")
        self.tgt = self.tgt_cluster.create_database(f"tgt_{tag}")
        self.meta = self.tgt_cluster.create_database(f"meta_{tag}")
        self.store = MetadataStore(self.meta)
        self.procs: list[subprocess.Popen[bytes]] = []

    def worker(self, name: str, ttl: float) -> subprocess.Popen[bytes]:
        home = self.base / f"home_{name}"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "TREMPY_HOME": str(home), "TREMPY_METADATA_URL": self.meta,
               "BENCH_SRC": self.src, "BENCH_TGT": self.tgt, "PYTHONUNBUFFERED": "1"}
        log = open(self.base / f"worker_{name}.log", "wb")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen([sys.executable, "-m", "trempy_nb.cli", "worker", "--name", name,
                                 "--lease-ttl", f"{ttl:g}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def tables(self, names: list[str], rows: int) -> None:
        with connect(self.src, autocommit=True) as c:
            for t in names:
                c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v bigint NOT NULL)").format(sql.Identifier(t)))
                c.execute(sql.SQL("INSERT INTO {} SELECT g, 0 FROM generate_series(1, %s) g").format(sql.Identifier(t)),
                          (rows,))

    def submit(self, tasks: dict[str, str]) -> None:
        for name, table in tasks.items():
            self.store.submit(name, task_doc(name, table))

    def streaming(self, tasks: list[str]) -> dict[str, str] | None:
        rows = {r["task"]: r for r in self.store.fleet_status() if r["task"] in tasks}
        alive = {w["name"] for w in self.store.workers() if w["alive"]}
        if all(t in rows and rows[t]["state"] == "streaming" and rows[t]["worker"] in alive for t in tasks):
            return {t: str(rows[t]["worker"]) for t in tasks}
        return None

    def wait(self, what: str, pred: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.1)
        raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what} (logs under {self.base})")

    def versions(self, table: str) -> int:
        with connect(self.tgt, autocommit=True) as c:
            try:
                return int(c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0])
            except Exception:  # noqa: BLE001 - not created yet
                return 0

    def stop_workers(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for c in (self.src_cluster, self.tgt_cluster):
            c.destroy()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _moved(status: dict[str, str] | None, name: str, old: str) -> dict[str, str] | None:
    return status if status and status[name] != old else None


def idle(world: World, n: int, seconds: float) -> dict[str, Any]:
    tasks = {f"idle_{i}_{uuid.uuid4().hex[:4]}": f"idle_{i}" for i in range(n)}
    world.tables(list(tasks.values()), 10)
    world.submit(tasks)
    proc = world.worker("idle", 15)
    world.wait(f"{n} idle tasks streaming", lambda: world.streaming(list(tasks)), 60 + 10 * n)
    time.sleep(5)  # past the start-up
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        peak = max(peak, rss_bytes(proc.pid))
        time.sleep(1)
    cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
    for name in tasks:
        world.store.set_desired(name, "stopped")
    world.stop_workers()
    return {"idle_tasks": n, "cpu_percent_of_one_core": round(cpu, 2), "rss_mb": round(peak / 2**20, 1)}


def takeover(world: World, kills: int, ttl: float) -> dict[str, Any]:
    name, table = f"tk_{uuid.uuid4().hex[:4]}", "tk"
    world.tables([table], 100)
    world.submit({name: table})
    stop = threading.Event()

    def writes() -> None:
        with connect(world.src, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                c.execute("UPDATE tk SET v = v + 1 WHERE id = %s", (i % 100 + 1,))
                i += 1
                stop.wait(0.05)

    threading.Thread(target=writes, daemon=True).start()
    procs = {f"tk{i}": world.worker(f"tk{i}", ttl) for i in range(2)}
    times = []
    try:
        owner = world.wait("the task streaming", lambda: world.streaming([name]), 120)[name]
        for k in range(kills):
            victim = procs.pop(owner)
            victim.kill()
            victim.wait()
            t0 = time.monotonic()
            owner = world.wait("the takeover", lambda old=owner: _moved(world.streaming([name]), name, old),
                               ttl * 4 + 60)[name]
            times.append(time.monotonic() - t0)
            print(f"  kill {k + 1}/{kills}: streaming on {owner} after {times[-1]:.2f} s", flush=True)
            new = f"tk{k + 2}"
            procs[new] = world.worker(new, ttl)
    finally:
        stop.set()
        world.store.set_desired(name, "stopped")
        world.stop_workers()
    # the claim's delay after the old lease expired, as the new owner recorded it (store clock)
    late = [float(x) for x in world.store.takeovers(name)["seconds"].to_list() if x is not None] or [0.0]
    return {"kills": kills, "lease_ttl_s": ttl, "takeover_p50_s": round(statistics.median(times), 2),
            "takeover_max_s": round(max(times), 2), "claim_after_expiry_p50_s": round(statistics.median(late), 2),
            "claim_after_expiry_max_s": round(max(late), 2)}


def throughput(world: World, changes: int, counts: list[int]) -> list[dict[str, Any]]:
    out = []
    for n in counts:
        tag = uuid.uuid4().hex[:4]
        tasks = {f"tp{n}_{i}_{tag}": f"tp{n}_{i}_{tag}" for i in range(4)}
        rows = 1000
        world.tables(list(tasks.values()), rows)
        world.submit(tasks)
        world.worker(f"tp_load_{tag}", 15)
        world.wait("the 4 tasks streaming", lambda names=list(tasks): world.streaming(names), 180)
        world.stop_workers()  # drained: the backlog below waits in the slots
        with connect(world.src, autocommit=True) as c:
            for table in tasks.values():
                c.execute(sql.SQL("DO $$ BEGIN FOR k IN 1..{} LOOP UPDATE {} SET v = v + 1 WHERE id = k % {} + 1;"
                                  " COMMIT; END LOOP; END $$").format(sql.Literal(changes), sql.Identifier(table),
                                                                     sql.Literal(rows)))
        want = rows + changes
        t0 = time.monotonic()
        for i in range(n):
            world.worker(f"tp{n}_{i}_{tag}", 15)
        world.wait("caught up", lambda w=want, ts=list(tasks.values()): all(world.versions(t) >= w for t in ts), 600)
        took = time.monotonic() - t0
        out.append({"workers": n, "tasks": 4, "changes": 4 * changes, "seconds": round(took, 2),
                    "changes_per_s": round(4 * changes / took)})
        print(f"  {n} worker(s): {4 * changes:,} changes in {took:.1f} s = {4 * changes / took:,.0f}/s", flush=True)
        for name in tasks:
            world.store.set_desired(name, "stopped")
        world.stop_workers()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fleet")
    ap.add_argument("--parts", default="idle,takeover,throughput")
    ap.add_argument("--idle-tasks", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=30)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--ttl", type=float, default=LEASE_TTL_S, help="lease ttl of the takeover part (the default)")
    ap.add_argument("--changes", type=int, default=20_000, help="throughput: backlog per task")
    ap.add_argument("--workers", default="1,2,3", help="throughput: worker counts")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",")}
    base = Path(tempfile.mkdtemp(prefix="trempy_bench_fleet_"))
    world = World(base)
    results: dict[str, Any] = {}
    try:
        if "idle" in parts:
            results["idle"] = idle(world, args.idle_tasks, args.idle_seconds)
            print(f"idle: {results['idle']}", flush=True)
        if "takeover" in parts:
            results["takeover"] = takeover(world, args.kills, args.ttl)
            print(f"takeover: {results['takeover']}", flush=True)
        if "throughput" in parts:
            results["throughput"] = throughput(world, args.changes, [int(n) for n in args.workers.split(",")])
        print(json.dumps(results, indent=1))
    finally:
        world.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
