"""The fleet with real parts: three `trempy-nb worker` processes (separate $TREMPY_HOMEs), a
PostgreSQL state store, source and target clusters, SCD2 tasks under a steady write load.

Where the machine allows (root, `ip netns`), each worker runs in its own network namespace and
reaches the clusters through a veth pair (tests/fleet_harness.py): the same code path as workers
on separate hosts. Failures are injected with kill -9 (a dead worker) and SIGSTOP longer than the
lease ttl (a frozen worker that wakes up as a zombie); the fault suite (tests/faults/
test_c21_fleet_*.py) adds a real network partition (the worker's link cut). Without namespaces
the workers share the host's network and kill -9 / SIGSTOP stand in.

Leases use a 5 s ttl here (15 s by default). Sizes are small (4 tables x 40 keys, ~40
updates/s) so the file runs in a few minutes; nothing asserts timings.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.broker import require_broker
from tests.fleet_harness import (
    Fleet,
    UpdateLoad,
    WorkerProc,
    all_streaming,
    fleet_world,
    netns_unavailable,
    owners,
    scd2_task,
    wait_for,
)

TTL = 5.0
NETNS_WHY = netns_unavailable()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Fleet, list[Any]]]:
    with fleet_world(tmp_path, 3, NETNS_WHY is None) as (fleet, links, _src, _tgt):
        yield fleet, links


def _start(fleet: Fleet, links: list[Any], n: int, **kw: Any) -> list[WorkerProc]:
    return [WorkerProc(fleet, f"w{i + 1}_{uuid.uuid4().hex[:4]}", link=links[i] if links else None, ttl=TTL, **kw)
            for i in range(n)]


def _alive(workers: list[WorkerProc], exclude: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    return {w.name for w in workers if w.alive() and not w.stopped and w.name not in exclude}


def _registered(store: Any, workers: list[WorkerProc], fleet: Fleet) -> None:
    names = {w.name for w in workers}
    wait_for(lambda: names <= {w["name"] for w in store.workers() if w["alive"]}, 60, "every worker registered",
             fleet.logs)


def _caught_up(fleet: Fleet, load: UpdateLoad, timeout: float = 90) -> None:
    tgt = fleet.uris["FLEET_TGT"]

    def exact() -> bool:
        lost, extra, _ = load.diff(tgt)
        return lost == 0 and extra == 0

    try:
        wait_for(exact, timeout, "every key to hold 1 + its committed updates versions")
    except AssertionError:
        lost, extra, examples = load.diff(tgt)
        raise AssertionError(f"lost {lost}, duplicated {extra}: {examples}\n{fleet.logs()}") from None


def test_kill_and_freeze_owners_all_tasks_taken_over_exactly_once(world: tuple[Fleet, list[Any]]) -> None:
    fleet, links = world
    tasks = [f"fleet_{i}_{uuid.uuid4().hex[:6]}" for i in range(4)]
    tables = [f"t{i}" for i in range(4)]
    load = UpdateLoad(fleet.uris["FLEET_SRC"], tables)
    store = fleet.store()
    workers = _start(fleet, links, 3)
    _registered(store, workers, fleet)  # then the tasks: each worker takes its fair share
    for task, table in zip(tasks, tables, strict=True):
        store.submit(task, scd2_task(task, table))
    first = wait_for(lambda: all_streaming(store, tasks, _alive(workers)), 120, "four tasks streaming",
                     fleet.logs)
    assert len(set(first.values())) >= 2  # spread over the workers, not all on one
    load.start(rate=40)
    time.sleep(2)

    dead_task = tasks[0]
    dead = fleet.by_name(first[dead_task])
    frozen_task = next(t for t in tasks[1:] if first[t] != dead.name)
    frozen = fleet.by_name(first[frozen_task])
    dead.kill9()
    frozen.sigstop()
    t0 = time.monotonic()
    moved = wait_for(lambda: all_streaming(store, tasks, _alive(workers), not_on={dead.name, frozen.name}),
                     TTL * 6 + 30, "every task streaming on the remaining worker(s)", fleet.logs)
    took = time.monotonic() - t0
    assert moved[dead_task] != dead.name and moved[frozen_task] != frozen.name
    time.sleep(max(0.0, TTL + 2 - took))  # frozen for longer than the lease ttl in any case
    frozen.sigcont()  # the zombie wakes up: its lease is gone, the fence refuses its writes
    time.sleep(3)
    load.stop()
    assert not load.errors
    _caught_up(fleet, load)
    final = wait_for(lambda: all_streaming(store, tasks, _alive(workers, {dead.name})), 60,
                     "every task still owned and streaming", fleet.logs)
    assert set(final) == set(tasks)
    takeovers = store.takeovers()
    moved_tasks = set(takeovers["task"].to_list()) if takeovers.height else set()
    assert {dead_task, frozen_task} <= moved_tasks, takeovers
    # the zombie stopped its copies: nothing of it runs any more, whatever it was doing
    assert "lease of epoch" in frozen.log() or "fenced" in frozen.log()
    assert load.total > 0


def test_sigterm_drains_and_hands_over_without_error(world: tuple[Fleet, list[Any]]) -> None:
    fleet, links = world
    tasks = [f"drain_{i}_{uuid.uuid4().hex[:6]}" for i in range(2)]
    tables = ["d0", "d1"]
    load = UpdateLoad(fleet.uris["FLEET_SRC"], tables)
    store = fleet.store()
    workers = _start(fleet, links, 2)
    _registered(store, workers, fleet)
    for task, table in zip(tasks, tables, strict=True):
        store.submit(task, scd2_task(task, table))
    first = wait_for(lambda: all_streaming(store, tasks, _alive(workers)), 120, "two tasks streaming", fleet.logs)
    load.start(rate=30)
    time.sleep(2)
    leaving = fleet.by_name(first[tasks[0]])
    failed_before = _failed_runs(store, tasks)
    rc = leaving.terminate()
    assert rc == 0, leaving.log()[-3000:]
    after = wait_for(lambda: all_streaming(store, tasks, _alive(workers)), TTL * 4 + 30,
                     "the drained tasks streaming elsewhere", fleet.logs)
    assert leaving.name not in after.values()
    load.stop()
    _caught_up(fleet, load)
    assert _failed_runs(store, tasks) == failed_before
    for row in owners(store, tasks).values():
        assert not row["error"], row
    log = leaving.log()
    assert " ERROR " not in log and "released" in log, log[-3000:]


def test_rabbitmq_consumer_killed_standby_takes_over(world: tuple[Fleet, list[Any]]) -> None:
    """Producer and consumer on different workers (`--roles`); the broker is on loopback only, so
    these workers run in the host's namespace."""
    require_broker()
    fleet, _links = world
    task = f"fleet_rmq_{uuid.uuid4().hex[:6]}"
    load = UpdateLoad(fleet.uris["FLEET_SRC"], ["r0"])
    store = fleet.store()
    store.submit(task, scd2_task(task, "r0", transport="rabbitmq"))
    producer = WorkerProc(fleet, f"prod_{uuid.uuid4().hex[:4]}", ttl=TTL, roles="producer")
    c1 = WorkerProc(fleet, f"cons1_{uuid.uuid4().hex[:4]}", ttl=TTL, roles="consumer")
    try:
        consumers = [c1]
        wait_for(lambda: all_streaming(store, [task], {producer.name}, role="producer"), 120, "producer streaming",
                 fleet.logs)
        wait_for(lambda: all_streaming(store, [task], {c1.name}, role="consumer"), 60, "consumer consuming",
                 fleet.logs)
        c2 = WorkerProc(fleet, f"cons2_{uuid.uuid4().hex[:4]}", ttl=TTL, roles="consumer")  # the standby
        consumers.append(c2)
        load.start(rate=30)
        time.sleep(3)
        c1.kill9()
        wait_for(lambda: all_streaming(store, [task], {c2.name}, role="consumer"), TTL * 4 + 30,
                 "the standby consuming", fleet.logs)
        time.sleep(2)
        load.stop()
        _caught_up(fleet, load)
        assert (store.takeovers(task)["to_worker"].to_list() or [None])[-1] == c2.name
    finally:
        fleet.close()
        _drop_topology(task)


def _failed_runs(store: Any, tasks: list[str]) -> int:
    n = 0
    for t in tasks:
        runs = store.runs(t)
        if runs.height:
            n += runs.filter(runs["status"] == "failed").height
    return n


def _drop_topology(task: str) -> None:
    try:
        from trempy_nb.transport.rabbitmq import delete_topology

        delete_topology(task)
    except Exception:  # noqa: BLE001, S110 - cleanup only
        pass
