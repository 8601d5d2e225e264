"""The fleet's test world: worker processes (each with its own $TREMPY_HOME, where the machine
allows in its own network namespace), source and target clusters that the namespaces reach
through veth pairs, a PostgreSQL state store, an SCD2 write load with an exact ledger.

Network namespaces (`ip netns`, veth pairs; needs root and the `ip` tool) make a cut link a real
network partition: `Link.cut()` sets the host side of the worker's veth down, so its TCP
connections to the store, the source and the target hang instead of failing. Where namespaces
cannot be made, workers run in the host's namespace and kill -9 / SIGSTOP stand in
(`NETNS` says which; the tests say so in their docstrings).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
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
from psycopg import sql

from trempy_nb.embedded import Cluster, start_cluster

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def netns_unavailable() -> str | None:
    """None when network namespaces and veth pairs can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "no `ip` tool"
    probe = f"trfp{secrets.token_hex(2)}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns add failed: {getattr(exc, 'stderr', exc)}"
    return None


@dataclass
class Link:
    """One worker's network namespace and its veth pair: host side HOST_IP, namespace side NS_IP."""

    index: int
    tag: str = field(default_factory=lambda: secrets.token_hex(2))

    @property
    def ns(self) -> str:
        return f"trf{self.tag}{self.index}"

    @property
    def host_if(self) -> str:
        return f"trh{self.tag}{self.index}"

    @property
    def ns_if(self) -> str:
        return f"trn{self.tag}{self.index}"

    @property
    def host_ip(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    @property
    def ns_ip(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    def create(self) -> Link:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        for cmd in (("addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if), ("link", "set", self.ns_if, "up"),
                    ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.ns, "ip", *cmd)
        return self

    def cut(self) -> None:
        """A network partition: the worker's packets go nowhere (its connections hang)."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.ns, check=False)


def start_reachable_cluster(base: Path, links: list[Link]) -> Cluster:
    """A throwaway cluster listening on loopback and on each link's host address."""
    addrs = ",".join(["127.0.0.1", *(link.host_ip for link in links)])
    cluster = start_cluster(base=base, conf={"listen_addresses": f"'{addrs}'", "track_commit_timestamp": "on",
                                             "max_connections": "300"})
    if links:
        with open(cluster.datadir / "pg_hba.conf", "a") as fh:
            fh.write(f"host all all {SUBNET}.0.0/16 scram-sha-256\n")
            fh.write(f"host replication all {SUBNET}.0.0/16 scram-sha-256\n")
        cluster.pg_ctl("reload")
    return cluster


def via(uri: str, host: str) -> str:
    """The same URI through another host address."""
    return uri.replace("@127.0.0.1:", f"@{host}:")


class WorkerProc:
    """`python -m trempy_nb.cli worker` as its own process (group), in a namespace when given."""

    def __init__(self, fleet: Fleet, name: str, *, link: Link | None = None, ttl: float = 5.0,
                 roles: str | None = None, extra_args: list[str] | None = None) -> None:
        self.name, self.link, self.fleet = name, link, fleet
        home = fleet.dir / f"home_{name}"
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = fleet.dir / f"worker_{name}.log"
        host = link.host_ip if link else "127.0.0.1"
        env = {**os.environ, "TREMPY_HOME": str(home), "PYTHONUNBUFFERED": "1",
               "TREMPY_METADATA_URL": via(fleet.store_url, host), "TREMPY_BATCH_CHANGES": "500",
               **{k: via(v, host) for k, v in fleet.uris.items()}}
        cmd = [sys.executable, "-m", "trempy_nb.cli", "worker", "--name", name, "--lease-ttl", f"{ttl:g}",
               *(["--roles", roles] if roles else []), *(extra_args or [])]
        if link is not None:
            cmd = ["ip", "netns", "exec", link.ns, *cmd]  # ip execs the command: same pid
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                     start_new_session=True)
        self.stopped = False
        fleet.workers.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)

    def sigstop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def terminate(self, timeout: float = 90) -> int:
        if self.stopped:
            self.sigcont()
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"worker {self.name} did not drain in {timeout:.0f} s:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def finish(self) -> None:
        if self.stopped:
            with contextlib.suppress(OSError):
                self.sigcont()
        if self.alive():
            self.kill9()
        with contextlib.suppress(OSError):
            self._log.close()


class Fleet:
    """Workers of one test; `uris` are the environment names the task settings use."""

    def __init__(self, directory: Path, store_url: str, uris: dict[str, str]) -> None:
        self.dir, self.store_url, self.uris = directory, store_url, uris
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers: list[WorkerProc] = []

    def store(self) -> Any:
        from trempy_nb.metadata import MetadataStore

        return MetadataStore(self.store_url)

    def by_name(self, name: str) -> WorkerProc:
        return next(w for w in self.workers if w.name == name)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()[-2500:]}" for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.finish()


def wait_for(pred: Callable[[], Any], timeout: float, what: str, on_timeout: Callable[[], str] | None = None,
             interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = pred()
            if got:
                return got
        except (psycopg.Error, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 f"{f' (last error {last})' if last else ''}\n{extra}")
        time.sleep(interval)


def owners(store: Any, tasks: list[str], role: str = "both") -> dict[str, dict[str, Any]]:
    """task -> its fleet_status row for `role`."""
    out: dict[str, dict[str, Any]] = {}
    for row in store.fleet_status():
        if row.get("task") in tasks and str(row.get("role") or "both") == role:
            out[str(row["task"])] = row
    return out


def all_streaming(store: Any, tasks: list[str], alive: set[str], role: str = "both",
                  not_on: set[str] = frozenset()) -> dict[str, str] | None:  # type: ignore[assignment]
    """{task: worker} when every task is streaming on a live worker (not one of `not_on`)."""
    rows = owners(store, tasks, role)
    got = {}
    for t in tasks:
        r = rows.get(t)
        if r is None or r.get("state") != "streaming" or r.get("worker") not in alive or r.get("worker") in not_on:
            return None
        got[t] = str(r["worker"])
    return got


# -- an SCD2 write load with an exact ledger ---------------------------------------------------------


class UpdateLoad:
    """Tables t0..tN-1 (id, v) seeded with `rows` keys; a thread commits one `v = v + 1` per
    transaction on a random key. `committed[(table, id)]` counts the committed updates: an SCD2
    target must then hold exactly 1 + that many versions per key."""

    def __init__(self, uri: str, tables: list[str], rows: int = 40) -> None:
        self.uri, self.tables, self.rows = uri, tables, rows
        self.committed: dict[tuple[str, int], int] = {(t, i): 0 for t in tables for i in range(1, rows + 1)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        with psycopg.connect(uri, autocommit=True) as c:
            for t in tables:
                c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v bigint NOT NULL)").format(sql.Identifier(t)))
                c.execute(sql.SQL("INSERT INTO {} SELECT g, 0 FROM generate_series(1, %s) g").format(sql.Identifier(t)),
                          (rows,))

    def start(self, rate: float = 40.0) -> UpdateLoad:
        def loop() -> None:
            rnd = random.Random(7)
            with psycopg.connect(self.uri, autocommit=True) as c:
                while not self._stop.is_set():
                    t, k = rnd.choice(self.tables), rnd.randint(1, self.rows)
                    try:
                        cur = c.execute(sql.SQL("UPDATE {} SET v = v + 1 WHERE id = %s").format(sql.Identifier(t)), (k,))
                        if cur.rowcount == 1:
                            self.committed[(t, k)] += 1
                    except psycopg.Error as exc:  # the source is not faulted here: record, stop
                        self.errors.append(str(exc))
                        return
                    self._stop.wait(1.0 / rate)

        self._thread = threading.Thread(target=loop, daemon=True, name="fleet-load")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    @property
    def total(self) -> int:
        return sum(self.committed.values())

    def versions(self, tgt: str, table: str) -> dict[int, tuple[int, int]]:
        """id -> (versions, current versions) on the SCD2 target."""
        with psycopg.connect(tgt, autocommit=True) as c:
            rows = c.execute(sql.SQL("SELECT id, count(*), count(*) FILTER (WHERE scd_current) FROM {}"
                                     " GROUP BY id").format(sql.Identifier(table))).fetchall()
        return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def diff(self, tgt: str) -> tuple[int, int, list[str]]:
        """(lost versions, extra versions, examples) of the target against the ledger."""
        lost = extra = 0
        examples: list[str] = []
        for t in self.tables:
            try:
                got = self.versions(tgt, t)
            except psycopg.errors.UndefinedTable:
                got = {}
            for i in range(1, self.rows + 1):
                want = 1 + self.committed[(t, i)]
                have, current = got.get(i, (0, 0))
                if have != want or current != 1:
                    lost += max(0, want - have)
                    extra += max(0, have - want)
                    if len(examples) < 5:
                        examples.append(f"{t} id {i}: {have} versions ({current} current), want {want}")
        return lost, extra, examples


def scd2_task(name: str, table: str, *, transport: str = "local") -> dict[str, Any]:
    return {
        "task": {
            "task_name": name, "source": "${FLEET_SRC}", "target": "${FLEET_TGT}",
            "replication_type": "full_load_and_cdc", "start_mode": "reload", "transport": transport,
            "interval_seconds": 0.2, "cdc_settings": {"mode": "scd2"},
        },
        "tables": [{"schema_name": "public", "table_name": table}],
        "error_handling": {"max_retries": 3},
    }


@contextlib.contextmanager
def fleet_world(tmp: Path, n_links: int, use_netns: bool) -> Iterator[tuple[Fleet, list[Link], Cluster, Cluster]]:
    """Links (when `use_netns`), a source and a target cluster reachable through them, a state store
    database on the target cluster, fresh source/target databases."""
    links: list[Link] = []
    clusters: list[Cluster] = []
    fleet: Fleet | None = None
    pg_dir = Path(tempfile.mkdtemp(prefix="trempy_fleet_"))
    os.chmod(pg_dir, 0o755)  # the clusters run as an unprivileged user
    try:
        for i in range(n_links if use_netns else 0):
            links.append(Link(i + 1).create())
        src = start_reachable_cluster(pg_dir / "src", links)
        clusters.append(src)
        tgt = start_reachable_cluster(pg_dir / "tgt", links)
        clusters.append(tgt)
        tag = uuid.uuid4().hex[:6]
        uris = {"FLEET_SRC": src.create_database(f"src_{tag}"), "FLEET_TGT": tgt.create_database(f"tgt_{tag}")}
        fleet = Fleet(tmp / "fleet", tgt.create_database(f"meta_{tag}"), uris)
        yield fleet, links, src, tgt
    finally:
        if fleet is not None:
            fleet.close()
        for c in clusters:
            with contextlib.suppress(Exception):
                with psycopg.connect(c.uri(), autocommit=True) as conn:
                    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
            c.destroy()
        for link in links:
            link.destroy()
        shutil.rmtree(pg_dir, ignore_errors=True)
