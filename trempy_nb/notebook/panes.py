"""The dashboard's store-backed panes: logs (search, level, table, live tail), slots, and the
lag/throughput plot over time. Each pane has an HTML and a text form and, in a widgets front
end, its controls; every query is bounded (a page of `limit` records, one slots query), so a
store with 100k log records answers as fast as an empty one."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from trempy_nb.connections import mask, resolve
from trempy_nb.notebook.render import one_line, sparkline_svg
from trempy_nb.ops import logsearch, timeseries
from trempy_nb.ops import slots as slotmod

LEVEL_OPTIONS = [("all", ""), ("info+", "INFO"), ("warning+", "WARNING"), ("error+", "ERROR")]
_LEVEL_COLORS = {"WARNING": "#9a6700", "ERROR": "#cf222e", "CRITICAL": "#cf222e"}


def _store() -> Any:
    from trempy_nb.metadata import MetadataStore  # the store opens lazily: a pane may never refresh

    return MetadataStore()


class LogPane:
    """A page of log records with filters; `tail()` appends what was written since (by id)."""

    def __init__(self, task: str | None = None, *, limit: int = 200, use_widgets: bool = False,
                 tables: list[str] | None = None, store: Callable[[], Any] = _store) -> None:
        self.task, self.limit, self._store_factory = task, limit, store
        self.level, self.grep, self.table, self.since = "", "", "", ""
        self.records: list[dict[str, Any]] = []
        self.error = ""
        self.live = False
        self.ui: Any = None
        self.w: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._s: Any = None
        if use_widgets:
            self._build(tables or [])

    @property
    def store(self) -> Any:
        if self._s is None:
            self._s = self._store_factory()
        return self._s

    def search(self) -> None:
        """Load the newest page matching the filters."""
        with self._lock:
            try:
                frame = logsearch.search(self.store, self.task, level=self.level or None, grep=self.grep or None,
                                         table=self.table or None, since=self.since or None, limit=self.limit)
                self.records, self.error = logsearch.records(frame), ""
            except Exception as exc:  # a bad filter says so in the pane
                self.records, self.error = [], one_line(exc)
        self._render()

    def tail(self) -> int:
        """Append records written since the last one shown (live tail); returns how many."""
        with self._lock:
            after = self.records[-1]["id"] if self.records else None
            try:
                frame = logsearch.search(self.store, self.task, level=self.level or None, grep=self.grep or None,
                                         table=self.table or None, after_id=after, limit=self.limit)
            except Exception as exc:
                self.error = one_line(exc)
                return 0
            new = logsearch.records(frame)
            self.records = (self.records + new)[-self.limit:]
        if new:
            self._render()
        return len(new)

    # renderings
    def text(self) -> str:
        head = f"logs ({len(self.records)} shown)" + (f" - {self.error}" if self.error else "")
        return mask("\n".join([head, *(logsearch.line(r) for r in self.records[-50:])]))

    def html(self) -> str:
        if self.error:
            return f"<div class='trempy-logs'><i>{html.escape(self.error)}</i></div>"
        if not self.records:
            return "<div class='trempy-logs'><i>no matching log records</i></div>"
        rows = []
        for r in reversed(self.records):  # newest on top
            color = _LEVEL_COLORS.get(str(r.get("level")), "#333")
            fields = r.get("fields")
            extra = html.escape(", ".join(f"{k}={v}" for k, v in fields.items())) if isinstance(fields, dict) else ""
            rows.append(
                "<tr>"
                f"<td style='white-space:nowrap;color:#666'>{html.escape(str(r.get('ts') or '')[:23].replace('T', ' '))}</td>"
                f"<td style='color:{color}'><b>{html.escape(str(r.get('level') or ''))}</b></td>"
                f"<td>{html.escape(r.get('task') or '')}</td><td>{html.escape(r.get('table') or '')}</td>"
                f"<td>{html.escape(str(r.get('message') or ''))}"
                f"{'<br><span style=color:#666;font-size:90%>' + extra + '</span>' if extra else ''}</td></tr>"
            )
        return mask(
            "<div class='trempy-logs' style='max-height:260px;overflow:auto'>"
            "<table style='border-collapse:collapse;font-size:90%'><thead><tr><th>time</th><th>level</th>"
            f"<th>task</th><th>table</th><th>message</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )

    # widgets
    def _build(self, tables: list[str]) -> None:
        import ipywidgets as W

        w = self.w
        w["grep"] = W.Text(placeholder="search messages", description="search", continuous_update=False)
        w["level"] = W.Dropdown(options=LEVEL_OPTIONS, value="", description="level", layout=W.Layout(width="180px"))
        w["table"] = W.Combobox(options=tables, placeholder="schema.table", description="table",
                                ensure_option=False, continuous_update=False)
        w["since"] = W.Text(placeholder="1h, 2024-05-01", description="since", continuous_update=False,
                            layout=W.Layout(width="200px"))
        w["live"] = W.ToggleButton(value=False, description="live tail", icon="play")
        w["out"] = W.HTML()
        for key in ("grep", "level", "table", "since"):
            w[key].observe(lambda _c: self._from_controls(), names="value")
        w["live"].observe(lambda c: setattr(self, "live", bool(c["new"])), names="value")
        self.ui = W.VBox([W.HBox([w["grep"], w["level"]]), W.HBox([w["table"], w["since"], w["live"]]), w["out"]])
        self.ui.add_class("trempy-log-pane")

    def _from_controls(self) -> None:
        w = self.w
        self.grep, self.level = w["grep"].value.strip(), w["level"].value
        self.table, self.since = w["table"].value.strip(), w["since"].value.strip()
        self.search()

    def _render(self) -> None:
        if self.ui is not None:
            self.w["out"].value = self.html()


class SlotsPane:
    """The slot cockpit of one source, refreshed on demand (one query; no WAL-rate sample wait)."""

    def __init__(self, source: str | None, *, use_widgets: bool = False, orphan_after: timedelta = slotmod.DEFAULT_ORPHAN_AFTER,
                 store: Callable[[], Any] = _store) -> None:
        self.source, self.orphan_after, self._store_factory = source, orphan_after, store
        self.cockpit: slotmod.Cockpit | None = None
        self.error = "" if source else "no source"
        self.ui: Any = None
        self.w: dict[str, Any] = {}
        if use_widgets:
            import ipywidgets as W

            self.w["refresh"] = W.Button(description="refresh slots", icon="refresh")
            self.w["refresh"].on_click(lambda _b: self.refresh())
            self.w["out"] = W.HTML()
            self.ui = W.VBox([self.w["refresh"], self.w["out"]])
            self.ui.add_class("trempy-slots-pane")

    def refresh(self) -> None:
        if not self.source:
            return
        try:
            self.cockpit = slotmod.cockpit(resolve(self.source), self._store_factory(),
                                           orphan_after=self.orphan_after, sample_s=0)
            self.error = ""
        except Exception as exc:
            self.cockpit, self.error = None, one_line(exc)
        if self.ui is not None:
            self.w["out"].value = self.html()

    def text(self) -> str:
        if self.cockpit is None:
            return f"slots: {self.error or 'not read yet'}"
        return mask(slotmod.cockpit_text(self.cockpit))

    def html(self) -> str:
        if self.cockpit is None:
            return f"<i>slots: {html.escape(self.error or 'not read yet')}</i>"
        rows = slotmod.rows_for_display(self.cockpit)
        cols = ("slot_name", "database", "active", "retained", "lag", "wal_status", "task", "owner", "heartbeat_age", "orphan")
        head = "".join(f"<th style='padding:2px 8px;text-align:left'>{c}</th>" for c in cols)
        body = "".join(
            "<tr" + (" style='color:#cf222e'" if r["orphan"] else "") + ">"
            + "".join(f"<td style='padding:2px 8px'>{html.escape(r[c])}</td>" for c in cols) + "</tr>"
            for r in rows
        )
        return mask(f"<div class='trempy-slots'><i>{html.escape(slotmod.summary_line(self.cockpit))}</i>"
                    f"<table style='border-collapse:collapse;font-size:90%'><thead><tr>{head}</tr></thead>"
                    f"<tbody>{body}</tbody></table></div>")


def history_plot(store: Any, task: str, since: timedelta = timedelta(hours=1)) -> str:
    """Throughput and lag of the task over time, from its stored batch summaries (one query)."""
    try:
        series = timeseries.batch_series(store, task, since=since)
        stamps = series["ts"].sort().to_list()
        span = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else 0.0
        every = "10s" if span < 900 else "1m"  # a short history still draws a line
        points = timeseries.per_minute(series, every)
    except Exception as exc:
        return f"<i>history: {html.escape(one_line(exc))}</i>"
    if points.height == 0:
        return "<i>no applied batches in the last hour</i>"
    rate = points["changes_per_s"].to_list()
    lag = points["lag_s"].fill_null(strategy="forward").fill_null(0.0).to_list()
    if len(rate) == 1:  # one bucket: a flat segment rather than nothing
        rate, lag = rate * 2, lag * 2
    window = max(60.0, span + timeseries.bucket_seconds(every))
    return sparkline_svg([rate, lag], labels=("changes/s", "lag (s)"), seconds=window)


def mini_spark(values: list[float], width: int = 120, height: int = 22, color: str = "#1f6feb") -> str:
    """A tiny inline SVG line (a fleet row's lag over time); empty series: a dash."""
    if len(values) < 2:
        return "-"
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    pts = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    return (f'<svg class="trempy-spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/></svg>')
