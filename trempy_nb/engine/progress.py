"""Full-load progress per table: tqdm bars (a widget in notebooks, text on a terminal), and the
counters' full-load rows either way."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from trempy_nb.crash import crash_point
from trempy_nb.engine.counters import Counters
from trempy_nb.pipeline.plan import TablePlan

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    """One progress bar per table during the full load (tqdm: a widget in notebooks, text elsewhere)."""

    def __init__(self, plans: dict[tuple[str, str], TablePlan], enabled: bool, counters: Counters) -> None:
        self.bars: dict[tuple[str, str], tqdm[Any]] = {}
        self.counters = counters
        self.lock = threading.Lock()
        for key, plan in plans.items():
            counters.full_load_total[".".join(key)] = plan.source.estimated_rows
        if enabled:
            from tqdm.auto import tqdm  # lazy: start-up speed (only runs that draw bars load it)

            for i, (key, plan) in enumerate(plans.items()):
                total = plan.source.estimated_rows or None
                self.bars[key] = tqdm(total=total, desc=".".join(key), unit="rows", position=i,
                                      leave=True, mininterval=0.5, dynamic_ncols=True)

    def update(self, key: tuple[str, str], n: int) -> None:
        crash_point("full_load_middle")  # rows read and written, the table's transaction open
        with self.lock:
            self.counters.full_load_rows[".".join(key)] += n
            bar = self.bars.get(key)
            if bar is not None:
                if bar.total is not None and bar.n + n > bar.total:
                    bar.total = bar.n + n
                bar.update(n)

    def done(self, key: tuple[str, str]) -> None:
        bar = self.bars.get(key)
        if bar is not None:
            bar.total = bar.n
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
