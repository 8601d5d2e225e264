"""The dashboard's per-table pane: each table's lifecycle state (streaming, loading, resyncing, paused)
and its last diff result, from the state store (`reports.table_lifecycle`); one small query per refresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from trempy_nb import reports
from trempy_nb.connections import mask
from trempy_nb.notebook.render import frame_text, one_line, table_html

_COLORS = {"paused": "#9a6700", "loading": "#1f6feb", "resyncing": "#1f6feb"}


def _store() -> Any:
    from trempy_nb.metadata import MetadataStore  # opened on first refresh

    return MetadataStore()


class TablesPane:
    """Per-table lifecycle state and last diff of one task."""

    def __init__(self, task: str, tables: list[str], store: Callable[[], Any] = _store) -> None:
        self.task, self.tables, self._store_factory = task, list(tables), store
        self.frame = pl.DataFrame(schema=reports.LIFECYCLE_SCHEMA)
        self.error = ""

    def refresh(self) -> TablesPane:
        try:
            self.frame, self.error = reports.table_lifecycle(self._store_factory(), self.task, self.tables), ""
        except Exception as exc:  # the dashboard must not die with the store
            self.error = one_line(exc)
        return self

    def text(self) -> str:
        if self.error:
            return mask(f"tables: {self.error}")
        return mask("tables:\n" + frame_text(self.frame)) if self.frame.height else "tables: none"

    def html(self) -> str:
        if self.error:
            return mask(f"<div><b>tables</b>: {self.error}</div>")
        held = [r["table"] for r in self.frame.iter_rows(named=True) if r["state"] != "streaming"]
        note = "".join(f" <span style='color:{_COLORS.get(s, '#1f6feb')}'>{t}: {s}</span>"
                       for t, s in zip(self.frame["table"], self.frame["state"], strict=True) if t in held)
        return mask(f"<div class='trempy-tables'><b>tables</b>{note}{table_html(self.frame)}</div>")
