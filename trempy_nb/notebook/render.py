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


def sparkline_svg(
    series: Sequence[Sequence[float]],
    colors: Sequence[str] = ("#1f6feb", "#cf222e"),
    labels: Sequence[str] = ("changes/s", "lag s"),
    width: int = 320,
    height: int = 70,
) -> str:
    """A tiny inline SVG plot of one or more series (each scaled to its own max)."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="background:#fafafa;border:1px solid #ddd">'
    ]
    for i, values in enumerate(series):
        vals = [float(v) for v in values if v == v]  # drop NaN
        if len(vals) < 2:
            continue
        top = max(vals) or 1.0
        step = (width - 4) / (len(vals) - 1)
        pts = " ".join(
            f"{2 + j * step:.1f},{height - 14 - (v / top) * (height - 20):.1f}"
            for j, v in enumerate(vals)
        )
        color = colors[i % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        label = html.escape(f"{labels[i % len(labels)]} (max {top:,.2f})")
        parts.append(
            f'<text x="{4 + i * width // 2}" y="{height - 3}" font-size="10" fill="{color}">{label}</text>'
        )
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
        return f"<div><b>{head}</b>{frame_html(stats)}{extra}</div>"
