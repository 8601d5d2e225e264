"""Small display objects: every one has an HTML form and a readable text form.

Nothing here talks to a database; the objects only format what the public API
returned. All text goes through `connections.mask`, so a password that slipped
into a message is hidden in both forms.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from trempy_nb.connections import mask

_COLORS = {"info": "#1f6feb", "ok": "#1a7f37", "warning": "#9a6700", "error": "#cf222e"}
_ICONS = {"info": "i", "ok": "✓", "warning": "!", "error": "✗"}


def esc(value: Any) -> str:
    return html.escape(mask(value), quote=True)


class Note:
    """A one-line message (info, ok, warning, error)."""

    def __init__(self, message: str, level: str = "info") -> None:
        self.message = mask(message)
        self.level = level if level in _COLORS else "info"

    def __repr__(self) -> str:
        return f"{_ICONS[self.level]} {self.message}"

    def _repr_html_(self) -> str:
        color = _COLORS[self.level]
        return (
            f'<div class="trempy-note trempy-{self.level}" style="color:{color};'
            f'font-family:var(--jp-ui-font-family,sans-serif)">'
            f"<b>{_ICONS[self.level]}</b> {esc(self.message)}</div>"
        )


class KeyValues:
    """A titled list of (key, value) pairs."""

    def __init__(self, title: str, rows: Iterable[tuple[str, Any]]) -> None:
        self.title = mask(title)
        self.rows = [(str(k), mask(v)) for k, v in rows]

    def __repr__(self) -> str:
        width = max((len(k) for k, _ in self.rows), default=0)
        lines = [self.title] + [f"  {k.ljust(width)}  {v}" for k, v in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f'<tr><th style="text-align:left;padding-right:1em">{html.escape(k)}</th>'
            f'<td style="text-align:left">{html.escape(v)}</td></tr>'
            for k, v in self.rows
        )
        return f"<div><b>{html.escape(self.title)}</b><table>{body}</table></div>"


def masked_settings(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a settings document whose source/target are masked."""
    out = json.loads(json.dumps(doc, default=str))
    task = out.get("task") if isinstance(out.get("task"), dict) else None
    if task is not None:
        for key in ("source", "target"):
            if isinstance(task.get(key), str):
                task[key] = mask(task[key])
    return out


class TaskView:
    """A task's settings document, source and target masked."""

    def __init__(self, doc: dict[str, Any], status: str = "") -> None:
        self.doc = masked_settings(doc)
        self.status = status

    @property
    def name(self) -> str:
        return str(self.doc.get("task", {}).get("task_name", "?"))

    def summary(self) -> str:
        t = self.doc.get("task", {})
        tables = ", ".join(
            f"{r['schema_name']}.{r['table_name']}" for r in self.doc.get("tables", [])
        )
        return (
            f"task {self.name}: {t.get('replication_type')} {t.get('source')} -> {t.get('target')}"
            f" ({t.get('cdc_settings', {}).get('mode')}), tables {tables};"
            f" {len(self.doc.get('filters', []))} filter(s),"
            f" {len(self.doc.get('transformations', []))} transformation(s)"
            + (f"; {self.status}" if self.status else "")
        )

    def __repr__(self) -> str:
        return self.summary() + "\n" + json.dumps(self.doc, indent=2, ensure_ascii=False)

    def _repr_html_(self) -> str:
        text = html.escape(json.dumps(self.doc, indent=2, ensure_ascii=False))
        return (
            f"<div><b>{html.escape(self.summary())}</b>"
            f'<details><summary>settings</summary><pre style="font-size:90%">{text}</pre></details></div>'
        )


def frame_html(df: pl.DataFrame, max_rows: int = 20) -> str:
    """A Polars frame as HTML (bounded); an empty frame says so."""
    if df.width == 0:
        return "<i>(empty)</i>"
    with pl.Config(tbl_rows=max_rows, tbl_cols=30, fmt_str_lengths=60):
        return df._repr_html_()


def _cell(value: Any, dtype: pl.DataType) -> tuple[str, bool]:
    """(text, is_number) of one value: numbers with thousands separators, None blank."""
    if value is None:
        return "", dtype.is_numeric()
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        if value != value:  # NaN
            return "NaN", True
        return (f"{value:,.0f}" if value.is_integer() else f"{value:,.3f}".rstrip("0")), True
    if dtype.is_numeric():  # Decimal
        return f"{value:,}", True
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value), False
    return str(value), False


def table_html(df: pl.DataFrame, max_rows: int = 20, css_class: str = "trempy-table") -> str:
    """A frame as a plain HTML table for people: column headers, numbers right-aligned with
    thousands separators, text as is (no dtype row, no quotes); bounded to `max_rows`."""
    if df.width == 0 or df.height == 0:
        return "<i>(none)</i>"
    shown = df.head(max_rows)
    th = "padding:2px 10px;border-bottom:1px solid #bbb;white-space:nowrap"
    head = "".join(
        f'<th style="{th};text-align:{"right" if dt.is_numeric() else "left"}">{esc(name)}</th>'
        for name, dt in shown.schema.items()
    )
    body = []
    for row in shown.iter_rows():
        cells = []
        for value, dt in zip(row, shown.dtypes, strict=True):
            text, number = _cell(value, dt)
            align = "right" if number else "left"
            cells.append(
                f'<td style="padding:2px 10px;text-align:{align};white-space:nowrap">{esc(text)}</td>'
            )
        body.append(f"<tr>{''.join(cells)}</tr>")
    more = (
        f'<div style="color:#666;font-size:90%">first {max_rows:,} of {df.height:,} rows</div>'
        if df.height > max_rows
        else ""
    )
    return (
        f'<table class="{css_class}" style="border-collapse:collapse;'
        f'font-variant-numeric:tabular-nums"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{more}"
    )


def frame_text(df: pl.DataFrame, max_rows: int = 20) -> str:
    if df.width == 0:
        return "(empty)"
    with pl.Config(tbl_rows=max_rows, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=160):
        return str(df)


class Titled:
    """A frame with a caption ("showing 20 of ~1,234 rows ...")."""

    def __init__(self, caption: str, frame: pl.DataFrame, max_rows: int = 20) -> None:
        self.caption = mask(caption)
        self.frame = frame
        self.max_rows = max_rows

    def __repr__(self) -> str:
        return f"{self.caption}\n{frame_text(self.frame, self.max_rows)}"

    def _repr_html_(self) -> str:
        return (
            f"<div><i>{html.escape(self.caption)}</i>{frame_html(self.frame, self.max_rows)}</div>"
        )


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def sparkline_svg(
    series: Sequence[Sequence[float]],
    colors: Sequence[str] = ("#1f6feb", "#cf222e"),
    labels: Sequence[str] = ("changes/s", "lag s"),
    width: int = 360,
    height: int = 110,
    seconds: float | None = None,
) -> str:
    """A small inline SVG plot of one or more series over the same time window.

    Each series is scaled to its own maximum, so each has its own y axis: the first on the
    left, the second on the right, both labelled with their unit and their range; the x
    axis is time, labelled with the window it covers (`seconds`) and ending at "now".
    """
    left, right, top, bottom = 52, 52, 8, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="trempy-plot" '
        f'style="background:#fafafa;border:1px solid #ddd;font-family:sans-serif">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
    ]
    window = f"last {_span(seconds)}" if seconds else "time"
    parts.append(
        f'<text x="{left}" y="{height - 4}" font-size="10" fill="#555">'
        f"{html.escape('-' + _span(seconds) if seconds else '')}</text>"
        f'<text x="{left + plot_w}" y="{height - 4}" font-size="10" fill="#555" text-anchor="end">now</text>'
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" font-size="10" fill="#555" '
        f'text-anchor="middle">time ({html.escape(window)})</text>'
    )
    for i, values in enumerate(series[:2]):
        vals = [float(v) for v in values if v == v]  # drop NaN
        color = colors[i % len(colors)]
        peak = max(vals, default=0.0) or 1.0
        x_axis = left - 4 if i == 0 else left + plot_w + 4
        anchor = "end" if i == 0 else "start"
        label = html.escape(labels[i % len(labels)])
        parts.append(
            f'<text x="{x_axis}" y="{top + 8}" font-size="10" fill="{color}" text-anchor="{anchor}">'
            f"{peak:,.4g}</text>"
            f'<text x="{x_axis}" y="{top + plot_h}" font-size="10" fill="{color}" text-anchor="{anchor}">0</text>'
            f'<text x="{x_axis}" y="{top + plot_h / 2 + 4:.0f}" font-size="10" fill="{color}" '
            f'text-anchor="{anchor}">{label}</text>'
        )
        if len(vals) < 2:
            continue
        step = plot_w / (len(vals) - 1)
        pts = " ".join(
            f"{left + j * step:.1f},{top + plot_h - (v / peak) * plot_h:.1f}"
            for j, v in enumerate(vals)
        )
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    parts.append("</svg>")
    return "".join(parts)


def one_line(exc: BaseException | str) -> str:
    """A short, masked, single-line message for an exception."""
    if isinstance(exc, BaseException):
        text = str(exc) or type(exc).__name__
        from trempy_nb.errors import TrempyError

        if not isinstance(exc, TrempyError):
            text = f"{type(exc).__name__}: {text}"
    else:
        text = exc
    lines = [ln.strip() for ln in mask(text).splitlines() if ln.strip()]
    return "; ".join(lines) or "error"


class RunView:
    """A finished run (RunResult): its summary line and per-table stats."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def __repr__(self) -> str:
        return mask(str(self.result))

    def _repr_html_(self) -> str:
        lines = mask(str(self.result)).splitlines()
        head = html.escape(lines[0]) if lines else ""
        stats = self.result.stats if hasattr(self.result, "stats") else pl.DataFrame()
        extra = "".join(
            f"<div>{html.escape(ln.strip())}</div>"
            for ln in lines[1:]
            if ln.startswith("  changes")
        )
        return f"<div><b>{head}</b>{table_html(stats)}{extra}</div>"


class Shown:
    """What Jupyter, a plain repr and a saved notebook show of a view: its text, its HTML, and (live)
    its widgets; the text stays for plain outputs."""

    ui: Any = None

    def text(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": self.text(), "text/html": self.html()}
        if self.ui is not None:
            bundle.update({k: v for k, v in (self.ui._repr_mimebundle_(include=include, exclude=exclude) or {}).items()
                           if k != "text/plain"})
        return bundle
