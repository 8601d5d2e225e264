"""Case 21: the fleet under worker faults: kill -9, SIGSTOP past the lease ttl, and (where network
namespaces can be made: root and `ip netns`) a real network partition, the worker's veth link cut
so its connections to the store, the source and the target hang. Without namespaces the workers
share the host's network and the partition round is a second SIGSTOP (the test says so in its
notes line).

Three workers (each its own $TREMPY_HOME and namespace), a PostgreSQL state store, four SCD2 tasks
under a steady update load. Each round faults the owner of one task, measures the takeover (fault
-> every task streaming on the other workers), then heals (a new worker replaces a killed one; a
frozen or cut-off one comes back as a zombie whose late writes the target's fence refuses). At the
end a worker is drained with SIGTERM (exit 0, its tasks streaming elsewhere, no error), and every
key must hold exactly 1 + its committed updates versions: lost 0, duplicated 0.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from tests.faults.harness import SCAN_PATHS, SECRETS
from tests.faults.report import RESULTS
from tests.fleet_harness import (
    UpdateLoad,
    WorkerProc,
    all_streaming,
    fleet_world,
    netns_unavailable,
    scd2_task,
    wait_for,
)

TTL = 5.0


def test_c21_fleet_kill_freeze_partition(tmp_path: Path, long_run: bool) -> None:
    why = netns_unavailable()
    with fleet_world(tmp_path, 3, why is None) as (fleet, links, src, tgt):
        SECRETS.update({src.password, tgt.password})
        if why is not None:
            RESULTS.notes.append(f"c21: no network namespaces here ({why}): partition rounds used SIGSTOP")
        tasks = [f"c21_{i}_{uuid.uuid4().hex[:6]}" for i in range(4)]
        tables = [f"c{i}" for i in range(4)]
        load = UpdateLoad(fleet.uris["FLEET_SRC"], tables)
        store = fleet.store()
        slots: dict[str, WorkerProc] = {}  # link index (or name) -> its current worker

        def spawn(i: int) -> WorkerProc:
            w = WorkerProc(fleet, f"c21w{i}_{uuid.uuid4().hex[:4]}", link=links[i] if links else None, ttl=TTL)
            SCAN_PATHS.append(w.log_path)
            slots[str(i)] = w
            return w

        for i in range(3):
            spawn(i)
        names = {w.name for w in slots.values()}
        wait_for(lambda: names <= {w["name"] for w in store.workers() if w["alive"]}, 60, "three workers registered",
                 fleet.logs)
        for task, table in zip(tasks, tables, strict=True):  # after: each worker takes its fair share
            store.submit(task, scd2_task(task, table))

        def live(exclude: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
            return {w.name for w in slots.values() if w.alive() and not w.stopped and w.name not in exclude}

        wait_for(lambda: all_streaming(store, tasks, live()), 120, "four tasks streaming", fleet.logs)
        load.start(rate=40)
        time.sleep(2)
        kinds = ["kill", "stop", "cut"] * (3 if long_run else 1)
        for n, kind in enumerate(kinds):
            owners = wait_for(lambda: all_streaming(store, tasks, live()), 90, "all tasks streaming", fleet.logs)
            victim_task = tasks[n % len(tasks)]
            slot = next(k for k, w in slots.items() if w.name == owners[victim_task])
            victim = slots[slot]
            moved = [t for t, w in owners.items() if w == victim.name]
            t0 = time.monotonic()
            if kind == "kill":
                victim.kill9()
            elif kind == "cut" and links:
                links[int(slot)].cut()
            else:
                victim.sigstop()
            RESULTS.fault(f"fleet worker {kind if kind != 'cut' or links else 'stop'}")
            wait_for(lambda v=victim.name: all_streaming(store, tasks, live({v}), not_on={v}),
                     TTL * 6 + 30, f"round {n} ({kind}): tasks streaming elsewhere", fleet.logs)
            took = time.monotonic() - t0
            for _ in moved:
                RESULTS.takeover(took)
            time.sleep(max(0.0, t0 + TTL + 1 - time.monotonic()))  # past the lease ttl in any case
            if kind == "kill":
                spawn(int(slot))
            elif kind == "cut" and links:
                links[int(slot)].heal()
            else:
                victim.sigcont()
            time.sleep(3)
        # a drain: SIGTERM the owner of a task; it hands over with no error, exit 0
        owners = wait_for(lambda: all_streaming(store, tasks, live()), 90, "all tasks streaming", fleet.logs)
        leaving = next(w for w in slots.values() if w.name == owners[tasks[0]])
        assert leaving.terminate() == 0, leaving.log()[-3000:]
        RESULTS.fault("fleet worker SIGTERM drain")
        wait_for(lambda: all_streaming(store, tasks, live({leaving.name}), not_on={leaving.name}), TTL * 4 + 30,
                 "the drained tasks streaming elsewhere", fleet.logs)
        assert " ERROR " not in leaving.log(), leaving.log()[-3000:]
        load.stop()
        assert not load.errors
        tgt_uri = fleet.uris["FLEET_TGT"]

        def exact() -> bool:
            lost, extra, _ = load.diff(tgt_uri)
            return lost == 0 and extra == 0

        try:
            wait_for(exact, 120, "every key at 1 + its committed updates versions")
        finally:
            lost, extra, examples = load.diff(tgt_uri)
            RESULTS.outcome(lost=lost, duplicated=extra)
            RESULTS.ledger(load.total, 0, 0, load.total)
            RESULTS.refused(sum(w.log().count("fenced:") for w in fleet.workers))
        assert (lost, extra) == (0, 0), examples
        wait_for(lambda: all_streaming(store, tasks, live()), 90, "every task owned and streaming at the end",
                 fleet.logs)
