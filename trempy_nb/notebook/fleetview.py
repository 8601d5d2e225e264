"""`%trempy dashboard`: the fleet view (one row per task of the store: desired and actual
state, owner, lag, a lag sparkline; click a row to open the task) and a task's store-backed
panel (state, throughput and lag over time, its logs, its source's slots).

Both read the store only, so they show tasks run by workers anywhere. Each refresh is a fixed
number of bounded queries whatever the fleet's size: fleet_status, one page of batch
summaries for every sparkline at once, the latest runs.
"""

from __future__ import annotations

import html
import threading
from datetime import timedelta
from typing import Any

import polars as pl

from trempy_nb.connections import mask
from trempy_nb.notebook.dashboard import widgets_available
from trempy_nb.notebook.panes import LogPane, SlotsPane, history_plot, mini_spark
from trempy_nb.notebook.render import Shown, one_line
from trempy_nb.notebook.tablespane import TablesPane
from trempy_nb.ops import timeseries

COLUMNS = ("task", "desired", "state", "owner", "lag_s", "lag_bytes", "changes", "error")
_STATE_COLORS = {"failed": "#cf222e", "streaming": "#1a7f37", "catching_up": "#9a6700", "loading": "#1f6feb"}


def _store() -> Any:
    from trempy_nb.metadata import MetadataStore  # opened when the view refreshes

    return MetadataStore()


class FleetView(Shown):
    """Every task of the store, one row each; `open(name)` shows that task's panel."""

    def __init__(self, use_widgets: bool | None = None, *, interval: float = 2.0, spark_window: timedelta = timedelta(minutes=30),
                 spark_limit: int = 20_000) -> None:
        self.interval, self.spark_window, self.spark_limit = interval, spark_window, spark_limit
        self.store = _store()
        self.rows: list[dict[str, Any]] = []
        self.sparks: dict[str, list[float]] = {}
        self.error = ""
        self.opened: TaskPanel | None = None
        self.ui: Any = None
        self.w: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if use_widgets is None:
            use_widgets = widgets_available()
        self.refresh()
        if use_widgets:
            self._build()
            self._start()

    def refresh(self) -> None:
        try:
            self.rows = fleet_rows(self.store)
            series = timeseries.batch_series(self.store, None, since=self.spark_window, limit=self.spark_limit)
            points = timeseries.per_minute(series)
            self.sparks = {
                task: group["lag_s"].fill_null(strategy="forward").fill_null(0.0).to_list()
                for (task,), group in points.group_by("task", maintain_order=True)
            }
            self.error = ""
        except Exception as exc:  # the view must not die with the store
            self.error = one_line(exc)

    def open(self, name: str) -> TaskPanel:
        """The panel of one task (what clicking its row does)."""
        if self.opened is not None:
            self.opened.close()
        self.opened = TaskPanel(name, use_widgets=self.ui is not None, store=self.store)
        if self.ui is not None:
            self.w["detail"].children = [self.opened.ui]
        return self.opened

    # renderings
    def text(self) -> str:
        if not self.rows:
            return f"fleet: no tasks in the store{' - ' + self.error if self.error else ''}"
        frame = pl.DataFrame(self.rows, schema={c: (pl.Float64 if c == "lag_s" else pl.Int64 if c in ("lag_bytes", "changes") else pl.String) for c in COLUMNS}, orient="row")
        with pl.Config(tbl_rows=100, tbl_cols=10, fmt_str_lengths=40):
            return mask(f"fleet: {len(self.rows)} task(s)\n{frame}")

    def html(self) -> str:
        if not self.rows:
            return f"<i>no tasks in the store{' - ' + html.escape(self.error) if self.error else ''}</i>"
        head = "".join(f"<th style='padding:2px 8px;text-align:left'>{c}</th>" for c in (*COLUMNS[:-1], "lag (30 min)", "error"))
        body = []
        for r in self.rows:
            color = _STATE_COLORS.get(str(r["state"]), "#333")
            cells = [html.escape(str(r["task"])), html.escape(str(r["desired"] or "-")),
                     f"<span style='color:{color}'>{html.escape(str(r['state'] or '-'))}</span>",
                     html.escape(str(r["owner"] or "-")), _num(r["lag_s"], ".1f"), _num(r["lag_bytes"], ",d"),
                     _num(r["changes"], ",d"), mini_spark(self.sparks.get(r["task"], [])),
                     html.escape(one_line(r["error"])[:80] if r["error"] else "")]
            body.append(f"<tr data-task='{html.escape(str(r['task']))}'>"
                        + "".join(f"<td style='padding:2px 8px'>{c}</td>" for c in cells) + "</tr>")
        return mask(f"<div class='trempy-fleet'><b>fleet: {len(self.rows)} task(s)</b>"
                    f"<table style='border-collapse:collapse;font-size:90%'><thead><tr>{head}</tr></thead>"
                    f"<tbody>{''.join(body)}</tbody></table></div>")

    # widgets: a table of rows, each with an "open" button; the opened task's panel below
    def _build(self) -> None:
        import ipywidgets as W

        self.w["table"] = W.VBox()
        self.w["detail"] = W.VBox()
        self.w["status"] = W.HTML()
        self.ui = W.VBox([self.w["status"], self.w["table"], self.w["detail"]],
                         layout=W.Layout(border="1px solid #ddd", padding="6px"))
        self.ui.add_class("trempy-fleet-view")
        self._update_widgets()

    def _update_widgets(self) -> None:
        import ipywidgets as W

        self.w["status"].value = f"<b>fleet: {len(self.rows)} task(s)</b>" + (
            f" <i>{html.escape(self.error)}</i>" if self.error else "")
        buttons = self.w.setdefault("buttons", {})
        lines = []
        for r in self.rows:
            name = str(r["task"])
            if name not in buttons:
                b = W.Button(description=name, tooltip=f"open {name}", layout=W.Layout(width="180px"))
                b.add_class("trempy-fleet-open")
                b.on_click(lambda _b, n=name: self.open(n))
                buttons[name] = (b, W.HTML())
            button, cells = buttons[name]
            color = _STATE_COLORS.get(str(r["state"]), "#333")
            cells.value = mask(
                f"<span style='display:inline-block;width:90px'>{html.escape(str(r['desired'] or '-'))}</span>"
                f"<span style='display:inline-block;width:100px;color:{color}'>{html.escape(str(r['state'] or '-'))}</span>"
                f"<span style='display:inline-block;width:120px'>{html.escape(str(r['owner'] or '-'))}</span>"
                f"<span style='display:inline-block;width:90px'>lag {_num(r['lag_s'], '.1f')} s</span>"
                f"{mini_spark(self.sparks.get(name, []))}")
            lines.append(W.HBox([button, cells]))
        self.w["table"].children = lines

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="trempy-fleet", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
                self._update_widgets()
                if self.opened is not None:
                    self.opened.refresh()
            except Exception:  # noqa: S110 - one failed refresh must not end the view
                pass

    def close(self) -> None:
        self._stop.set()
        if self.opened is not None:
            self.opened.close()


def fleet_rows(store: Any) -> list[dict[str, Any]]:
    """One row per task: the fleet's state where a worker reports it, else the latest run's."""
    rows: dict[str, dict[str, Any]] = {}
    for f in store.fleet_status():
        name = f["task"]
        row = rows.get(name)
        if row is None or f.get("role") in ("both", "consumer"):  # a split task: the applying side
            rows[name] = {"task": name, "desired": f.get("desired"), "state": f.get("state"), "owner": f.get("worker"),
                          "lag_s": f.get("lag_s"), "lag_bytes": f.get("lag_bytes"),
                          "changes": f.get("changes_applied"), "error": f.get("error")}
    runs = store.runs()
    if runs.height:
        latest = runs.sort("started_at", descending=True).unique("task", keep="first")
        for r in latest.iter_rows(named=True):
            row = rows.get(r["task"])
            if row is None:
                rows[r["task"]] = {"task": r["task"], "desired": None, "state": r["status"], "owner": None,
                                   "lag_s": None, "lag_bytes": None, "changes": None, "error": r["error"]}
            elif row["state"] in (None, "stopped", "pending") and not row["owner"] and r["status"] == "running":
                row["state"] = "running (here)"
    return [rows[k] for k in sorted(rows)]


def _num(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return format(int(value) if fmt.endswith("d") else float(value), fmt)
    except (TypeError, ValueError):
        return html.escape(str(value))


class TaskPanel(Shown):
    """One task from the store: its state, per-table lifecycle state and last diff, throughput and lag
    over time, logs and slots."""

    def __init__(self, name: str, use_widgets: bool | None = None, *, store: Any = None) -> None:
        self.name = name
        self.store = store if store is not None else _store()
        if use_widgets is None:
            use_widgets = widgets_available()
        source, tables = self._settings()
        self.logs = LogPane(name, use_widgets=use_widgets, tables=tables, store=lambda: self.store)
        self.slots = SlotsPane(source, use_widgets=use_widgets, store=lambda: self.store)
        self.tables = TablesPane(name, tables, store=lambda: self.store)
        self.state: dict[str, Any] = {}
        self.plot = ""
        self.ui: Any = None
        self.w: dict[str, Any] = {}
        if use_widgets:
            import ipywidgets as W

            self.w["head"] = W.HTML()
            self.w["plot"] = W.HTML()
            self.w["tables"] = W.HTML()
            tabs = W.Tab(children=[self.logs.ui, self.slots.ui])
            tabs.set_title(0, "logs")
            tabs.set_title(1, "slots")
            self.ui = W.VBox([self.w["head"], self.w["tables"], self.w["plot"], tabs],
                             layout=W.Layout(border="1px solid #ddd", padding="6px"))
            self.ui.add_class("trempy-task-panel")
        self.logs.search()
        self.slots.refresh()
        self.refresh()

    def _settings(self) -> tuple[str | None, list[str]]:
        try:
            doc = self.store.load_task(self.name)
        except Exception:  # run but never saved: no source known
            return None, []
        holder = doc.get("task", doc)
        tables = [f"{t.get('schema_name')}.{t.get('table_name')}" for t in doc.get("tables", []) if isinstance(t, dict)]
        return (holder.get("source") if isinstance(holder, dict) else None), tables

    def refresh(self) -> None:
        rows = [r for r in fleet_rows(self.store) if r["task"] == self.name]
        self.state = rows[0] if rows else {"task": self.name, "state": "unknown"}
        self.plot = history_plot(self.store, self.name)
        self.tables.refresh()
        if self.logs.live:
            self.logs.tail()
        if self.ui is not None:
            self.w["head"].value = self._head_html()
            self.w["plot"].value = self.plot
            self.w["tables"].value = self.tables.html()

    def _head_html(self) -> str:
        s = self.state
        return mask(f"<b>task {html.escape(self.name)}</b>: {html.escape(str(s.get('state')))}"
                    f" (desired {html.escape(str(s.get('desired') or '-'))}, owner {html.escape(str(s.get('owner') or '-'))},"
                    f" lag {_num(s.get('lag_s'), '.1f')} s)")

    def text(self) -> str:
        return mask("\n".join([f"task {self.name}: {self.state.get('state')}", self.tables.text(), self.logs.text(),
                               self.slots.text()]))

    def html(self) -> str:
        return (f"<div class='trempy-task-panel'>{self._head_html()}{self.tables.html()}{self.plot}{self.logs.html()}"
                f"{self.slots.html()}</div>")

    def close(self) -> None:
        pass
