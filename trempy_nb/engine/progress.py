"""Full-load progress per table: tqdm bars on a terminal or in a notebook, plain lines elsewhere,
and the counters' full-load rows either way."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from trempy_nb.crash import crash_point
from trempy_nb.engine.counters import Counters
from trempy_nb.pipeline.plan import TablePlan

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    """Full-load progress per table. On a terminal or in a notebook: one tqdm bar per table (a
    widget in notebooks, text elsewhere). Non-interactive (stderr not a terminal, outside a
    notebook: cron, CI, a pipe): a plain line per table every `TREMPY_PROGRESS_S` seconds (5),
    and one when it is done, never a carriage return."""

    def __init__(self, plans: dict[tuple[str, str], TablePlan], enabled: bool, counters: Counters) -> None:
        self.bars: dict[tuple[str, str], tqdm[Any]] = {}
        self.counters = counters
        self.lock = threading.Lock()
        self.lines: _ProgressLines | None = None
        for key, plan in plans.items():
            counters.full_load_total[".".join(key)] = plan.source.estimated_rows
        if enabled and not _interactive():
            self.lines = _ProgressLines({k: p.source.estimated_rows for k, p in plans.items()})
        elif enabled:
            from tqdm.auto import tqdm  # start-up speed: only interactive runs draw bars

            for i, (key, plan) in enumerate(plans.items()):
                total = plan.source.estimated_rows or None
                self.bars[key] = tqdm(total=total, desc=".".join(key), unit="rows", position=i,
                                      leave=True, mininterval=0.5, dynamic_ncols=True)

    def update(self, key: tuple[str, str], n: int) -> None:
        crash_point("full_load_middle")  # rows read and written, the table's transaction open
        with self.lock:
            self.counters.full_load_rows[".".join(key)] += n
            if self.lines is not None:
                self.lines.update(key, n)
            bar = self.bars.get(key)
            if bar is not None:
                if bar.total is not None and bar.n + n > bar.total:
                    bar.total = bar.n + n
                bar.update(n)

    def done(self, key: tuple[str, str]) -> None:
        if self.lines is not None:
            with self.lock:
                self.lines.done(key)
        bar = self.bars.get(key)
        if bar is not None:
            bar.total = bar.n
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _interactive() -> bool:
    """A terminal on stderr, or a notebook kernel (its bars are widgets)."""
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    return "ipykernel" in sys.modules


class _ProgressLines:
    """`schema.table: 420,000/1,000,000 rows (42%), 210,000 rows/s` on stderr, every few seconds."""

    def __init__(self, totals: dict[tuple[str, str], int], every_s: float | None = None) -> None:
        self.every_s = float(os.environ.get("TREMPY_PROGRESS_S", "5")) if every_s is None else every_s
        self.totals = dict(totals)
        self.rows: dict[tuple[str, str], int] = defaultdict(int)
        self.started: dict[tuple[str, str], float] = {}
        self.last: dict[tuple[str, str], float] = {}
        self.t0 = time.monotonic()

    def update(self, key: tuple[str, str], n: int) -> None:
        now = time.monotonic()
        self.started.setdefault(key, self.t0)
        self.rows[key] += n
        if now - self.last.get(key, self.t0) >= self.every_s:
            self.last[key] = now
            self._print(key, now)

    def done(self, key: tuple[str, str]) -> None:
        self.totals[key] = self.rows[key]
        self._print(key, time.monotonic(), " done")

    def _print(self, key: tuple[str, str], now: float, suffix: str = "") -> None:
        n, total = self.rows[key], self.totals.get(key) or 0
        secs = now - self.started.get(key, self.t0)
        of = f"/{total:,} rows ({min(100, 100 * n // total)}%)" if total >= n and total else " rows"
        rate = f", {n / secs:,.0f} rows/s" if secs > 0 else ""
        print(f"{'.'.join(key)}: {n:,}{of}{rate}{suffix}", file=sys.stderr, flush=True)
