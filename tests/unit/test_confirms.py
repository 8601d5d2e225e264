"""Publisher confirms: the slot never advances past an unconfirmed message."""

from __future__ import annotations

import random

import pytest

from trempy_nb.transport.rabbitmq.confirms import ConfirmTracker


def _tracker(lsns: list[int | None]) -> ConfirmTracker:
    t = ConfirmTracker()
    for tag, lsn in enumerate(lsns, start=1):
        t.published(tag, lsn)
    return t


def test_in_order_acks_advance() -> None:
    t = _tracker([100, 200, 300])
    assert t.safe_lsn is None
    t.ack(1)
    assert t.safe_lsn == 100
    t.ack(2)
    t.ack(3)
    assert t.safe_lsn == 300
    assert t.outstanding == 0


def test_out_of_order_acks_never_pass_a_gap() -> None:
    t = _tracker([100, 200, 300, 400])
    t.ack(3)
    t.ack(4)
    assert t.safe_lsn is None  # tag 1 and 2 missing
    t.ack(2)
    assert t.safe_lsn is None  # tag 1 still missing
    t.ack(1)
    assert t.safe_lsn == 400


def test_multiple_ack_covers_earlier_tags() -> None:
    t = _tracker([100, 200, 300])
    t.ack(2, multiple=True)
    assert t.safe_lsn == 200
    t.ack(3)
    assert t.safe_lsn == 300


def test_split_batch_needs_every_part() -> None:
    # batch A in one message, batch B in three parts (only the last part carries its end LSN)
    t = _tracker([100, None, None, 200])
    t.ack(1)
    t.ack(4)
    t.ack(3)
    assert t.safe_lsn == 100  # part 2 of B unconfirmed
    t.ack(2)
    assert t.safe_lsn == 200


def test_nack_blocks_and_reports() -> None:
    t = _tracker([100, 200, 300])
    t.ack(1)
    t.nack(2)
    t.ack(3)
    assert t.failed
    assert t.nacked == [2]
    assert t.safe_lsn == 100  # never past the nacked message
    t.ack(2)  # a late ack does not undo the nack: the producer republishes anyway
    assert t.safe_lsn == 100


def test_multiple_nack_marks_unacked_only() -> None:
    t = _tracker([100, 200, 300])
    t.ack(1)
    t.nack(3, multiple=True)
    assert t.nacked == [2, 3]
    assert t.safe_lsn == 100


def test_tags_must_increase() -> None:
    t = _tracker([100])
    with pytest.raises(ValueError):
        t.published(1, 200)


def test_random_orders_match_a_model() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 30)
        lsns = [(i + 1) * 10 if rng.random() < 0.7 else None for i in range(n)]
        lsns[-1] = n * 10
        t = _tracker(lsns)
        order = list(range(1, n + 1))
        rng.shuffle(order)
        acked: set[int] = set()
        for tag in order:
            multiple = rng.random() < 0.2
            t.ack(tag, multiple=multiple)
            acked |= set(range(1, tag + 1)) if multiple else {tag}
            prefix = 0
            while prefix + 1 in acked:
                prefix += 1
            expected = max((lsn for lsn in lsns[:prefix] if lsn is not None), default=None)
            assert t.safe_lsn == expected
        assert t.safe_lsn == n * 10
