"""The fleet: workers that own tasks through leases in the state store (docs/fleet.md).

`worker.Worker` is the long-lived process behind `trempy-nb worker`; `policy` holds its pure rules
(backoff, lease timing); `spawn` starts a local worker for detached runs.
"""

from trempy_nb.fleet.policy import Backoff, LeaseClock
from trempy_nb.fleet.spawn import Placement, place, spawn_worker

__all__ = ["Backoff", "LeaseClock", "Placement", "place", "spawn_worker"]
