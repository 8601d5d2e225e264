"""Publisher-confirm bookkeeping (pure): how far may the slot advance?

Every published message is registered with its delivery tag (1, 2, 3... on a
channel in confirm mode) and, for the last message of a batch, the batch's
`end_lsn` (earlier parts of a split batch carry None). The broker acks or
nacks tags, singly or `multiple` (every tag up to and including it), and not
necessarily in order. `safe_lsn` is the highest end LSN whose message and all
earlier messages are acked: the slot may be confirmed up to there and no
further, so a confirm that arrives before an earlier one never moves the slot
past the gap.

A nack (or a lost channel) means the broker did not take the message: the
tracker reports it through `failed`, and the producer republishes everything
not yet safe (re-reading the slot from its confirmed position).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class ConfirmTracker:
    """Confirms of one channel; not thread-safe (the caller holds a lock)."""

    _pending: OrderedDict[int, int | None] = field(
        default_factory=OrderedDict
    )  # tag -> end_lsn (in order)
    _acked: set[int] = field(default_factory=set)
    _safe: int | None = None
    _last_tag: int = 0
    nacked: list[int] = field(default_factory=list)

    def published(self, tag: int, end_lsn: int | None) -> None:
        """Register a published message (tags must increase)."""
        if tag <= self._last_tag:
            raise ValueError(f"delivery tag {tag} is not after {self._last_tag}")
        self._last_tag = tag
        self._pending[tag] = end_lsn

    def ack(self, tag: int, multiple: bool = False) -> None:
        for t in self._tags(tag, multiple):
            self._acked.add(t)
        self._drain()

    def nack(self, tag: int, multiple: bool = False) -> None:
        for t in self._tags(tag, multiple):
            if t not in self._acked:
                self.nacked.append(t)

    def _tags(self, tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [tag] if tag in self._pending else []
        return [t for t in self._pending if t <= tag]

    def _drain(self) -> None:
        """Pop the acked prefix; its last batch end is the new safe LSN."""
        while self._pending:
            tag, lsn = next(iter(self._pending.items()))
            if tag not in self._acked or tag in self.nacked:
                break
            self._pending.popitem(last=False)
            self._acked.discard(tag)
            if lsn is not None:
                self._safe = lsn if self._safe is None else max(self._safe, lsn)

    @property
    def safe_lsn(self) -> int | None:
        """Highest end LSN with every message up to it confirmed (None: nothing yet)."""
        return self._safe

    @property
    def failed(self) -> bool:
        """Some message was nacked: the producer must republish from the safe position."""
        return bool(self.nacked)

    @property
    def outstanding(self) -> int:
        """Messages published but not yet part of the confirmed prefix."""
        return len(self._pending)

    @property
    def last_tag(self) -> int:
        return self._last_tag


__all__ = ["ConfirmTracker"]
