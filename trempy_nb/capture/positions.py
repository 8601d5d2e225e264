"""Which source positions a reader has handed out, and where a confirm may move the slot.

Pure bookkeeping (all LSNs are ints, see `changes.lsn_to_int`), kept apart so
the rule that makes capture at-least-once is in one readable place:

- a transaction is identified by its *commit* LSN (start of the commit record:
  `ChangeBatch.end_lsn`, the `_trempy_lsn` meta column) but consumed through
  its *end* LSN: decoding replays every commit whose record starts at or after
  the slot's confirmed position, so the slot must be advanced to the end LSN
  to skip it;
- a non-transactional message (a heartbeat) is identified and consumed by the
  end of its record;
- the slot moves only over units the consumer confirmed, plus the no-ops
  (heartbeats, transactions with no published change) right behind them: a
  no-op never holds the slot back, and never lets it pass unconfirmed data.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Consumed", "Ledger"]


@dataclass
class Consumed:
    """A unit (transaction or non-transactional message) the reader passed over, not yet confirmed."""

    position: int  # commit LSN of a transaction, or the LSN of a non-transactional message
    advance_to: int  # where the slot must be advanced to skip it
    rows: int  # messages it occupies (counts toward a peek's upto_nchanges)
    returned: bool  # handed out in a batch (needs confirm) vs a no-op (heartbeat, empty txn)


class Ledger:
    """Units taken from the slot in order, and the consumed-through position.

    `through`: commits starting before it and messages ending at or before it
    were already returned (or passed over as no-ops) by this reader; a peek,
    which starts again at the slot's confirmed position, skips them.
    """

    def __init__(self, start_after_lsn: int | None = None) -> None:
        self.through = (start_after_lsn + 1) if start_after_lsn is not None else 0
        self._units: deque[Consumed] = deque()

    def note(self, units: list[Consumed]) -> None:
        """Units a read passed over, in stream order."""
        self._units.extend(units)
        if units:
            self.through = max(self.through, units[-1].advance_to)

    def confirm(self, lsn: int) -> int:
        """The batch whose last commit LSN is `lsn` is durable: where the slot may go now."""
        target = None
        while self._units and self._units[0].position <= lsn:
            target = self._units.popleft().advance_to
        if target is None:
            # not something this reader returned (e.g. a checkpoint from before a restart):
            # commit_lsn + 1 lies inside that commit record, which is enough to skip it
            target = lsn + 1
        while self._units and not self._units[0].returned:
            target = self._units.popleft().advance_to
        self.through = max(self.through, target)
        return target

    def skip_noops(self) -> int | None:
        """Pass the no-ops at the front (nothing unconfirmed before them): where the slot may go."""
        target = None
        while self._units and not self._units[0].returned:
            target = self._units.popleft().advance_to
        return target

    @property
    def pending(self) -> int:
        """Returned transactions not yet confirmed."""
        return sum(1 for u in self._units if u.returned)

    @property
    def rows(self) -> int:
        """Messages of the units held: a peek must fetch these again before anything new."""
        return sum(u.rows for u in self._units)
