"""The fencing token as data: which target row it guards and what a fenced copy says."""

from __future__ import annotations

import dataclasses

import pytest

from trempy_nb.errors import Fenced, TerminalError
from trempy_nb.writer.fence import Fence, fence_key, lost_message


def test_one_row_per_lease() -> None:
    assert fence_key("orders") == "orders"
    assert fence_key("orders", "both") == "orders"
    assert fence_key("orders", "producer") == "orders:producer"
    assert fence_key("orders", "consumer") == "orders:consumer"


def test_messages_name_the_task_and_the_newer_epoch() -> None:
    assert lost_message("orders", 7, 6) == "task orders: lease lost to epoch 7; this copy (epoch 6) stops"
    assert lost_message("orders:consumer", 3, 2).startswith("task orders (consumer): lease lost to epoch 3")
    assert "expired" in lost_message("orders", None, 4)


def test_a_fence_is_a_frozen_value_valid_by_default() -> None:
    f = Fence(3)
    assert f.valid() and f.key == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.epoch = 4  # type: ignore[misc]
    assert issubclass(Fenced, TerminalError) and not Fenced("x").transient
