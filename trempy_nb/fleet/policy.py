"""The worker's pure rules (no I/O): restart backoff, failures in a row, lease timing.

Kept apart from the process so each rule is tested alone and the numbers live in one place.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: how many lease renewals fit in one ttl (renew every ttl / RENEWALS_PER_TTL)
RENEWALS_PER_TTL = 3


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter between restarts of a failed task; after
    `max_failures` failures in a row the task is marked failed instead of restarted."""

    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.2
    max_failures: int = 5

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s (got {self.base_s}, {self.cap_s})")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter is a fraction in [0, 1) (got {self.jitter})")
        if self.max_failures < 1:
            raise ValueError(f"max_failures must be at least 1 (got {self.max_failures})")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the next start after `failures` (>= 1) failures in a row:
        base * 2^(failures-1), capped, spread by +-jitter (never above the cap), so workers
        that failed together do not retry together."""
        raw = min(self.cap_s, self.base_s * 2.0 ** max(0, failures - 1))
        spread = raw * (1.0 + self.jitter * (2.0 * rand() - 1.0))
        return max(0.0, min(self.cap_s, spread))

    def exhausted(self, failures: int) -> bool:
        return failures >= self.max_failures


def lease_margin(ttl_s: float) -> float:
    """Safety margin kept off the ttl by the local validity check: clock rate differences and
    the time a commit takes after its check (a fifth of the ttl, at least 0.5 s, at most 5 s)."""
    return min(5.0, max(0.5, ttl_s / 5.0))


class LeaseClock:
    """The worker's local proof that a lease is still its own.

    The store measures a lease's expiry on its own clock from when it processed the last renewal;
    the worker counts, on its monotonic clock, from when it *sent* that renewal (earlier), and
    keeps a margin off the ttl. So while `valid()` holds the store cannot yet have handed the
    lease to anyone else, whether or not the store can be reached right now.
    """

    def __init__(self, ttl_s: float, *, margin_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sent_at: float | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl must be positive (got {ttl_s})")
        self.ttl_s = ttl_s
        self.margin_s = lease_margin(ttl_s) if margin_s is None else margin_s
        if self.margin_s >= ttl_s:
            raise ValueError(f"lease margin {self.margin_s} s leaves nothing of the ttl {ttl_s} s")
        self._clock = clock
        self._lock = threading.Lock()
        self._renewed_at = clock() if sent_at is None else sent_at
        self._lost = False

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` (this clock) succeeded."""
        with self._lock:
            if not self._lost:
                self._renewed_at = max(self._renewed_at, sent_at)

    def lose(self) -> None:
        """The store said the lease is someone else's: never valid again."""
        with self._lock:
            self._lost = True

    @property
    def lost(self) -> bool:
        return self._lost

    def age(self) -> float:
        """Seconds since the last successful renewal was sent."""
        return self._clock() - self._renewed_at

    def valid(self) -> bool:
        """True while the lease is provably ours (the fence's `valid`)."""
        with self._lock:
            return not self._lost and self._clock() - self._renewed_at < self.ttl_s - self.margin_s

    def renew_due(self) -> bool:
        return self.age() >= self.ttl_s / RENEWALS_PER_TTL


@dataclass
class Failures:
    """Failures in a row of one task on this worker; a run that streamed a while resets it."""

    count: int = 0
    last_error: str | None = None
    retry_at: float = 0.0

    def failed(self, error: str, backoff: Backoff, now: float,
               rand: Callable[[], float] = random.random) -> bool:
        """Record a failure; True when the task should be marked failed (no more restarts)."""
        self.count += 1
        self.last_error = error
        if backoff.exhausted(self.count):
            return True
        self.retry_at = now + backoff.delay(self.count, rand)
        return False

    def healthy(self) -> None:
        self.count = 0
        self.last_error = None
        self.retry_at = 0.0


#: a run that has been up this long without failing resets the failures in a row
HEALTHY_AFTER_S = 60.0


def default_worker_name(host: str, pid: int) -> str:
    return f"{host}-{pid}"


def parse_roles(text: str) -> list[str]:
    """`--roles both,producer,consumer` -> the list, checked (clear error on a bad name)."""
    known = ("both", "producer", "consumer")
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in known]
    if bad or not roles:
        raise ValueError(f"--roles takes a comma-separated list of {', '.join(known)} (got {text!r})")
    return list(dict.fromkeys(roles))


def lease_expired_for(row: dict[str, Any], ttl_s: float) -> float:
    """Seconds since the previous owner's lease expired, from a `fleet_status` row: the store's own
    figure when it gives one, else from the previous owner's heartbeat age minus the ttl."""
    for key in ("lease_expired_s", "expired_s"):
        value = row.get(key)
        if value is not None:
            return max(0.0, float(value))
    age = row.get("lease_age_s", row.get("heartbeat_age_s"))
    return max(0.0, float(age) - ttl_s) if age is not None else 0.0
