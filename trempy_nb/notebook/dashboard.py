"""The live dashboard of a runner: widgets refreshed from a thread, HTML/text everywhere else.

The refresh thread only reads the runner's public state (`status`,
`counters`, `error`) and the metadata store's frames, and only sets widget
values: it never prints, so nothing depends on which cell is "current"
(ipykernel 6 and 7 route thread output differently). Without a widgets
front end, the same figures render as HTML and text.
"""

from __future__ import annotations

import html
import threading
import time
from datetime import datetime
from typing import Any

import polars as pl

from trempy_nb.connections import mask
from trempy_nb.notebook.panes import LogPane, SlotsPane
from trempy_nb.notebook.render import Shown, frame_text, one_line, sparkline_svg, table_html
from trempy_nb.notebook.tablespane import TablesPane

_DONE = ("succeeded", "failed", "stopped")


def widgets_available() -> bool:
    """True in an IPython kernel with ipywidgets importable (a front end may render them)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


class Dashboard(Shown):
    """Status, full-load progress, per table/operation counts, throughput, lag, errors, stop."""

    def __init__(
        self,
        runner: Any,
        interval: float = 0.5,
        use_widgets: bool | None = None,
        store_interval: float = 2.0,
        max_points: int = 120,
    ) -> None:
        self.runner = runner
        self.interval = max(0.1, float(interval))
        self.store_interval = store_interval
        self.max_points = max_points
        self.points: list[tuple[float, float, float]] = []  # (time, rows+changes per s, lag s)
        self._last: tuple[float, int] | None = None
        self._errors = pl.DataFrame()
        self._dead = pl.DataFrame()
        self._store_at = 0.0
        #: per-table lifecycle state and last diff (`%trempy add-table`, `resync`, `pause-table`, `diff`)
        listed = getattr(getattr(runner.task, "settings", None), "tables", [])
        self.tables = TablesPane(self.name, [".".join(t.key) for t in listed])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stop_message = ""
        self.history_points = 200  # stops of the time slider
        self.history_rows = 10  # rows shown at one stop
        self._history_loaded = False
        self.ui: Any = None
        self.w: dict[str, Any] = {}
        if use_widgets is None:
            use_widgets = widgets_available()
        settings = getattr(runner.task, "settings", None)
        tables = [f"{t.schema_name}.{t.table_name}" for t in settings.tables] if settings is not None else []
        self.log_pane = LogPane(self.name, use_widgets=use_widgets, tables=tables)
        self.log_pane.live = True  # a run's dashboard tails its log until the toggle says otherwise
        self.slots_pane = SlotsPane(settings.task.source if settings is not None else None, use_widgets=use_widgets)
        self._slots_read = False
        if use_widgets:
            self._build()
            self.log_pane.w["live"].value = True
        self.refresh(force_store=True)

    # ------------------------------------------------------------------ figures
    @property
    def name(self) -> str:
        return str(self.runner.task.name)

    def _sample(self) -> None:
        c = self.runner.counters
        now = time.time()
        total = sum(c.full_load_rows.values()) + int(c.changes)
        if self._last is not None and now > self._last[0]:
            rate = (total - self._last[1]) / (now - self._last[0])
            self.points.append((now, max(rate, 0.0), float(c.lag_seconds)))
            del self.points[: -self.max_points]
        self._last = (now, total)

    def _load_store(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._store_at < self.store_interval:
            return
        self._store_at = now
        self.tables.refresh()
        run_id = getattr(self.runner, "run_id", None)
        try:
            errs = self.runner.task.errors()
            if run_id and "run_id" in errs.columns:
                errs = errs.filter(pl.col("run_id") == run_id)
            self._errors = errs.drop([c for c in ("task", "run_id") if c in errs.columns])
        except Exception as exc:  # the dashboard must not die with the store
            self._errors = pl.DataFrame({"error": [one_line(exc)]})
        try:
            method = getattr(self.runner.task, "dead_letters", None)
            if callable(method):
                self._dead = method()
            else:
                from trempy_nb.metadata import MetadataStore

                self._dead = MetadataStore().dead_letters(task=self.name)
        except Exception as exc:
            self._dead = pl.DataFrame({"error": [one_line(exc)]})
        if not self.log_pane.records:
            self.log_pane.search()
        elif self.log_pane.live:
            self.log_pane.tail()
        if not self._slots_read:  # once; the pane's button reads again
            self._slots_read = True
            self.slots_pane.refresh()

    def status_line(self) -> str:
        r = self.runner
        elapsed = time.time() - r.started_at if getattr(r, "started_at", 0) else 0.0
        text = f"task {self.name}: {r.status} ({elapsed:.1f} s)"
        if r.error is not None:
            text += f" - {one_line(r.error)}"
        if self.stop_message:
            text += f" - {self.stop_message}"
        return mask(text)

    def progress(self) -> list[tuple[str, int, int]]:
        c = self.runner.counters
        tables = list(c.full_load_total) + [
            t for t in c.full_load_rows if t not in c.full_load_total
        ]
        return [
            (t, int(c.full_load_rows.get(t, 0)), int(c.full_load_total.get(t, 0))) for t in tables
        ]

    def figures(self) -> list[tuple[str, str]]:
        c = self.runner.counters
        rate = self.points[-1][1] if self.points else 0.0
        return [
            ("throughput", f"{rate:,.0f} rows/s"),
            ("changes applied", f"{int(c.changes):,} in {int(c.batches):,} batches"),
            ("lag", f"{c.lag_seconds:,.2f} s ({int(c.lag_bytes):,} bytes)"),
            ("slot", f"{c.wal_status or '-'}, {int(c.retained_bytes):,} bytes retained"),
        ]

    def counts(self) -> pl.DataFrame:
        return self.runner.counters.frame()

    # ------------------------------------------------------------------ renderings
    def text(self) -> str:
        lines = [self.status_line()]
        for table, done, total in self.progress():
            lines.append(f"  full load {table}: {done:,} / ~{max(total, done):,} rows")
        lines += [f"  {k}: {v}" for k, v in self.figures()]
        counts = self.counts()
        if counts.height:
            lines.append(frame_text(counts))
        if self._errors.height:
            lines.append(f"errors ({self._errors.height}):")
            lines.append(frame_text(self._errors, 5))
        if self._dead.height:
            lines.append(f"dead letters ({self._dead.height}):")
            lines.append(frame_text(self._dead, 5))
        lines.append(self.tables.text())
        lines.append(self.log_pane.text())
        lines.append(self.slots_pane.text())
        return mask("\n".join(lines))

    def _progress_html(self) -> str:
        rows = []
        for table, done, total in self.progress():
            top = max(total, done, 1)
            rows.append(
                f"<div>{html.escape(table)} <progress value='{done}' max='{top}'></progress>"
                f" {done:,} / ~{top:,}</div>"
            )
        return "".join(rows)

    def _figures_html(self) -> str:
        cells = "".join(
            f"<td style='padding-right:1.5em'><b>{html.escape(k)}</b><br>{html.escape(v)}</td>"
            for k, v in self.figures()
        )
        return f"<table><tr>{cells}</tr></table>"

    def _plot_html(self) -> str:
        window = self.points[-1][0] - self.points[0][0] if len(self.points) > 1 else None
        return sparkline_svg(
            [[p[1] for p in self.points], [p[2] for p in self.points]],
            labels=("rows/s", "lag (s)"),
            seconds=window,
        )

    def _errors_html(self) -> str:
        out = ""
        if self._errors.height:
            out += f"<b>errors ({self._errors.height})</b>{table_html(self._errors, 5)}"
        else:
            out += "<i>no errors</i>"
        if self._dead.height:
            out += f"<br><b>dead letters ({self._dead.height})</b>{table_html(self._dead, 5)}"
        else:
            out += " · <i>no dead letters</i>"
        return mask(out)

    def html(self) -> str:
        color = {"failed": "#cf222e", "succeeded": "#1a7f37"}.get(self.runner.status, "#1f6feb")
        return mask(
            f"<div class='trempy-dashboard'><div style='color:{color}'><b>"
            f"{html.escape(self.status_line())}</b></div>{self._progress_html()}{self._figures_html()}"
            f"{table_html(self.counts())}{self._plot_html()}<div>{self._errors_html()}</div>"
            f"{self.tables.html()}"
            f"<details><summary>logs</summary>{self.log_pane.html()}</details>"
            f"<details><summary>slots</summary>{self.slots_pane.html()}</details></div>"
        )

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        import ipywidgets as W

        w = self.w
        w["status"] = W.HTML()
        w["progress"] = W.VBox()
        w["bars"] = {}
        w["figures"] = W.HTML()
        w["counts"] = W.HTML()
        w["plot"] = W.HTML()
        w["errors"] = W.HTML()
        w["stop"] = W.Button(
            description="Stop",
            button_style="danger",
            icon="stop",
            tooltip="stop after the current batch",
        )
        w["stop"].on_click(lambda _b: self.request_stop())
        parts = [
            W.HBox([w["status"], w["stop"]]),
            w["progress"],
            w["figures"],
            w["counts"],
            w["plot"],
            w["errors"],
        ]
        tabs = W.Tab(children=[self.log_pane.ui, self.slots_pane.ui])
        tabs.set_title(0, "logs")
        tabs.set_title(1, "slots")
        tabs.add_class("trempy-panes")
        parts.append(tabs)
        if self.scd2:
            parts.append(self._build_history(W))
        self.ui = W.VBox(
            parts,
            layout=W.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.ui.add_class("trempy-dashboard")

    def _update_widgets(self) -> None:
        import ipywidgets as W

        w = self.w
        w["status"].value = f"<b>{html.escape(self.status_line())}</b>"
        bars: dict[str, Any] = w["bars"]
        for table, done, total in self.progress():
            if table not in bars:
                bars[table] = (
                    W.IntProgress(min=0, max=1, layout=W.Layout(width="240px")),
                    W.Label(),
                )
                w["progress"].children = [
                    W.HBox([W.Label(t, layout=W.Layout(width="220px")), *bars[t]]) for t in bars
                ]
            bar, label = bars[table]
            bar.max = max(total, done, 1)
            bar.value = done
            bar.bar_style = "success" if total and done >= total else ""
            label.value = f"{done:,} / ~{max(total, done):,} rows"
        w["figures"].value = self._figures_html()
        w["counts"].value = table_html(self.counts())
        w["plot"].value = self._plot_html()
        w["errors"].value = self._errors_html()
        self._update_stop()

    def _update_stop(self) -> None:
        """Stop while the runner runs; afterwards a grey, disabled button saying how it ended."""
        stop = self.w["stop"]
        if self.runner.running or self.runner.status in ("created", "starting"):
            return
        stop.disabled = True
        stop.button_style = ""
        stop.icon = "check" if self.runner.status == "succeeded" else "stop"
        stop.description = "finished" if self.runner.status == "succeeded" else self.runner.status
        stop.tooltip = f"the task {self.runner.status}"

    # ------------------------------------------------------------------ history pane (SCD2)
    @property
    def scd2(self) -> bool:
        settings = getattr(self.runner.task, "settings", None)
        return settings is not None and settings.task.cdc_settings.mode == "scd2"

    def _build_history(self, W: Any) -> Any:
        w = self.w
        tables = [f"{t.schema_name}.{t.table_name}" for t in self.runner.task.settings.tables]
        w["h_table"] = W.Dropdown(description="table", options=tables, value=tables[0])
        w["h_reload"] = W.Button(description="reload times", icon="refresh")
        w["h_time"] = W.SelectionSlider(
            description="as of",
            options=[("(no history yet)", "")],
            disabled=True,
            continuous_update=False,
            readout=True,
            layout=W.Layout(width="640px"),
        )
        w["h_rows"] = W.HTML("<i>the table's history appears here once versions exist</i>")
        w["h_table"].observe(lambda _c: self.load_history(), names="value")
        w["h_reload"].on_click(lambda _b: self.load_history())
        w["h_time"].observe(lambda _c: self.show_as_of(), names="value")
        box = W.VBox(
            [
                W.HTML("<b>history</b>"),
                W.HBox([w["h_table"], w["h_reload"]]),
                w["h_time"],
                w["h_rows"],
            ]
        )
        box.add_class("trempy-history")
        return box

    def load_history(self) -> None:
        """Put the instants at which the table changed on the time slider (latest last)."""
        if "h_time" not in self.w:
            return
        w = self.w
        try:
            instants = self.runner.task.history_instants(
                w["h_table"].value, limit=self.history_points
            )
        except Exception as exc:  # not created yet, target away: say so in the pane
            w["h_rows"].value = f"<i>{html.escape(one_line(exc))}</i>"
            return
        if not instants:
            return
        options = [(t.strftime("%m-%d %H:%M:%S.%f")[:-3], t) for t in instants]  # readout fits
        w["h_time"].options = options
        w["h_time"].value = instants[-1]
        w["h_time"].disabled = False
        self.show_as_of()

    def show_as_of(self) -> None:
        """The table as it was at the slider's instant, bounded to `history_rows` rows."""
        w = self.w
        ts = w["h_time"].value
        if not isinstance(ts, datetime):
            return
        try:
            frame = self.runner.task.as_of(ts, w["h_table"].value, limit=self.history_rows)
        except Exception as exc:
            w["h_rows"].value = f"<i>{html.escape(one_line(exc))}</i>"
            return
        first = f"first {self.history_rows} " if frame.height >= self.history_rows else ""
        caption = f"{first}rows of {w['h_table'].value} current at {ts.isoformat(sep=' ')}"
        rows = table_html(frame, self.history_rows)
        w["h_rows"].value = mask(
            f"<i>{html.escape(caption)}</i>"
            f"<div style='max-height:240px;max-width:100%;overflow:auto'>{rows}</div>"
        )

    # ------------------------------------------------------------------ lifecycle
    def refresh(self, force_store: bool = False) -> None:
        with self._lock:
            self._sample()
            self._load_store(force_store or not self.runner.running)
            if self.ui is not None:
                self._update_widgets()
        done = not self.runner.running and self.runner.status not in ("created", "starting")
        if self.ui is not None and done and not self._history_loaded:
            self._history_loaded = True
            self.load_history()

    def start(self) -> Dashboard:
        """Refresh from a background thread until the runner ends (then one last time)."""
        if self.ui is None or self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._loop, name=f"trempy-dash-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            running = self.runner.running or self.runner.status in ("created", "starting")
            try:
                self.refresh(force_store=not running)
            except Exception:  # noqa: S110 - a refresh failing once must not end the dashboard
                pass
            if not running:
                break
            self._stop.wait(self.interval)

    def request_stop(self) -> None:
        """What the Stop button does: stop the runner in a thread (the kernel stays free)."""

        def work() -> None:
            try:
                self.runner.stop()
                self.stop_message = "stopped by user"
            except Exception as exc:
                self.stop_message = f"stop: {one_line(exc)}"
            self.refresh(force_store=True)

        if self.ui is not None:
            self.w["stop"].disabled = True
        threading.Thread(target=work, name=f"trempy-stop-{self.name}", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
