"""The worker's pure rules: backoff with cap and jitter, failures in a row, the lease clock."""

from __future__ import annotations

import pytest

from trempy_nb.engine.reporting import actual_state
from trempy_nb.fleet.policy import (
    Backoff,
    Failures,
    LeaseClock,
    default_worker_name,
    lease_expired_for,
    lease_margin,
    parse_roles,
)


class FakeClock:
    """A hand-moved monotonic clock (time is the input here, not a mock of a real part)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(base_s=1, cap_s=10, jitter=0, max_failures=10)
    assert [b.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_backoff_jitter_stays_within_spread_and_cap() -> None:
    b = Backoff(base_s=2, cap_s=5, jitter=0.25, max_failures=10)
    assert b.delay(1, rand=lambda: 0.0) == pytest.approx(1.5)
    assert b.delay(1, rand=lambda: 1.0) == pytest.approx(2.5)
    assert b.delay(9, rand=lambda: 1.0) == 5  # never above the cap


@pytest.mark.parametrize("kw", [{"base_s": 0}, {"base_s": 5, "cap_s": 1}, {"jitter": 1.0}, {"max_failures": 0}])
def test_backoff_rejects_bad_numbers(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kw)  # type: ignore[arg-type]


def test_failures_in_a_row_then_failed_and_reset() -> None:
    b = Backoff(base_s=1, cap_s=4, jitter=0, max_failures=3)
    f = Failures()
    assert f.failed("boom", b, now=10) is False and f.retry_at == 11
    assert f.failed("boom", b, now=20) is False and f.retry_at == 22
    assert f.failed("boom again", b, now=30) is True
    assert f.last_error == "boom again"
    f.healthy()
    assert (f.count, f.last_error, f.retry_at) == (0, None, 0.0)


def test_lease_clock_valid_until_ttl_minus_margin_since_last_renewal_sent() -> None:
    clock = FakeClock()
    lc = LeaseClock(15, clock=clock)
    assert lc.margin_s == lease_margin(15) == 3
    assert lc.valid() and not lc.renew_due()
    clock.now += 5
    assert lc.renew_due()
    lc.renewed(sent_at=clock.now - 0.1)  # the renewal was sent a little before it succeeded
    clock.now += 11.8
    assert lc.valid()
    clock.now += 0.2  # 12 s since the renewal was sent = ttl - margin
    assert not lc.valid()
    lc.renewed(sent_at=clock.now)  # a late success revalidates: the store renewed it
    assert lc.valid()


def test_lease_clock_lost_for_good() -> None:
    clock = FakeClock()
    lc = LeaseClock(5, clock=clock)
    lc.lose()
    lc.renewed(sent_at=clock.now + 1)
    assert lc.lost and not lc.valid()


def test_lease_clock_never_moves_back() -> None:
    clock = FakeClock()
    lc = LeaseClock(5, clock=clock, sent_at=clock.now)
    lc.renewed(sent_at=clock.now - 3)  # an older renewal answering late
    assert lc.age() == 0


def test_lease_clock_rejects_a_margin_eating_the_ttl() -> None:
    with pytest.raises(ValueError):
        LeaseClock(1, margin_s=1)
    with pytest.raises(ValueError):
        LeaseClock(0)


def test_margin_bounds() -> None:
    assert lease_margin(1) == 0.5 and lease_margin(100) == 5 and lease_margin(5) == 1


def test_roles_and_names() -> None:
    assert parse_roles("consumer, producer,consumer") == ["consumer", "producer"]
    with pytest.raises(ValueError, match="both, producer, consumer"):
        parse_roles("both,leader")
    with pytest.raises(ValueError):
        parse_roles(" , ")
    assert default_worker_name("host1", 42) == "host1-42"


def test_actual_states() -> None:
    assert actual_state("full_load", 0) == "loading"
    assert actual_state("streaming", 1) == "streaming"
    assert actual_state("streaming", 120) == "catching_up"
    assert actual_state("starting", 0) == "pending"
    assert actual_state("running", 0) == "pending"  # preparing the slot
    assert actual_state("running", 0, role="consumer") == "streaming"  # a consumer has no slot
    assert actual_state("stopped", 0) == actual_state("succeeded", 0) == "stopped"
    assert actual_state("failed", 0) == "failed"


def test_lease_expired_for() -> None:
    assert lease_expired_for({"lease_expired_s": 2.5}, 15) == 2.5
    assert lease_expired_for({"heartbeat_age_s": 20}, 15) == 5
    assert lease_expired_for({"heartbeat_age_s": 3}, 15) == 0
    assert lease_expired_for({}, 15) == 0
