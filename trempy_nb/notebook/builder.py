"""The widget task builder: a form whose state is exactly one settings document.

`TaskBuilder(settings).settings == parse_settings(settings).to_dict()` (the form
and the document round-trip). Choices come from the settings model's Literal
lists and the live catalog (operators limited to the column's type). Buttons
call the public API only: Task.preview, the session's define_task, Runner.
No widget ever holds a password: a source/target written with one is saved
as a connection first and the form shows that connection's name.

Over 800 lines on purpose: the form is one settings document, and its widgets,
their two-way binding to that document and the buttons change together; split
across modules, one field's widget and its binding would live apart.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

import ipywidgets as W

from trempy_nb import catalog
from trempy_nb.connections import has_literal_password, list_connections, mask, protect, resolve
from trempy_nb.db import connect as db_connect
from trempy_nb.notebook.connections_form import subscribe as follow_connections
from trempy_nb.notebook.render import Note, Titled, one_line
from trempy_nb.pgtypes import type_category
from trempy_nb.pipeline.filters import allowed_filter_types
from trempy_nb.settings import (
    CDC_MODES,
    COLUMN_VALUE_OPERATIONS,
    CREATE_COLUMN_OPERATIONS,
    FILTER_TYPES,
    LITERAL_TYPES,
    PRIORITY_RANGES,
    RANGE_FILTERS,
    REPLICATION_TYPES,
    SET_FILTERS,
    START_MODES,
    TRANSFORMATION_TYPES,
    TRANSPORTS,
    TaskSettings,
    parse_settings,
)

_NO_PW = "(choose)"
_NO_GROUP = "(none: AND)"


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text_of(v) for v in value)
    return str(value)


def _typed(text: str, category: str) -> Any:
    """Form text -> a settings scalar fitting the column category (text stays text)."""
    t = text.strip()
    if category == "integer" and re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    if category in ("numeric", "float"):
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        try:
            f = float(t)
        except ValueError:
            return t
        return f if repr(f) == t else t  # keep exact decimals as text
    if category == "boolean" and t.lower() in ("true", "false"):
        return t.lower() == "true"
    return text


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _show(widget: W.Widget, visible: bool) -> None:
    widget.layout.display = "" if visible else "none"


class _Row:
    """Common parts of a filter or transformation row."""

    def __init__(self, builder: TaskBuilder) -> None:
        self.b = builder
        self.orig: dict[str, Any] = {}
        self.remove = W.Button(description="remove", icon="trash", layout=W.Layout(width="90px"))
        self.remove.on_click(lambda _b: self.b._remove_row(self))

    def _value(self, key: str, widget: W.Widget, convert: Any) -> Any:
        """The original typed value while the text is unchanged, else the converted text."""
        if key in self.orig and _text_of(self.orig[key]) == widget.value:
            return self.orig[key]
        return convert(widget.value)

    def watch(self, *widgets: W.Widget) -> None:
        for w in widgets:
            w.observe(lambda _c: self.b._changed(), names="value")


class FilterRow(_Row):
    def __init__(self, builder: TaskBuilder, spec: dict[str, Any] | None = None) -> None:
        super().__init__(builder)
        self.table = W.Dropdown(description="table", layout=W.Layout(width="260px"))
        self.column = W.Dropdown(description="column", layout=W.Layout(width="240px"))
        self.op = W.Dropdown(description="operator", layout=W.Layout(width="260px"))
        self.value = W.Text(description="value", layout=W.Layout(width="170px"))
        self.lower = W.Text(description="lower", layout=W.Layout(width="170px"))
        self.upper = W.Text(description="upper", layout=W.Layout(width="170px"))
        self.values = W.Text(
            description="values", placeholder="a, b, c", layout=W.Layout(width="240px")
        )
        self.group = W.Dropdown(
            description="OR group",
            layout=W.Layout(width="230px"),
            tooltip="filters of one table in the same OR group are combined with OR",
        )
        self.ui = W.HBox(
            [
                self.table,
                self.column,
                self.op,
                self.value,
                self.lower,
                self.upper,
                self.values,
                self.group,
                self.remove,
            ],
            layout=W.Layout(flex_flow="row wrap"),
        )
        with builder._quiet():
            self.table.options = builder._table_options()
            if spec:
                self.orig = {k: spec[k] for k in ("value", "lower", "upper", "values") if k in spec}
                key = f"{spec['schema_name']}.{spec['table_name']}"
                if key not in self.table.options:
                    self.table.options = [*self.table.options, key]
                self.table.value = key
            elif self.table.options:
                self.table.value = self.table.options[0]
            self._fill_columns(spec.get("column_name") if spec else None)
            self._fill_ops(spec.get("filter_type") if spec else None)
            for k in ("value", "lower", "upper", "values"):
                getattr(self, k).value = _text_of(self.orig.get(k))
            self.fill_groups((spec or {}).get("or_group") or "")
        self.table.observe(lambda _c: self._on_table(), names="value")
        self.column.observe(lambda _c: self._on_column(), names="value")
        self.op.observe(lambda _c: self._on_op(), names="value")
        self.watch(self.value, self.lower, self.upper, self.values, self.group)
        self._on_op(notify=False)

    def category(self) -> str:
        info = self.b._describe(self.table.value)
        col = info.column(self.column.value) if info and self.column.value else None
        return type_category(col.pg_type) if col else "other"

    def _fill_columns(self, wanted: str | None = None) -> None:
        info = self.b._describe(self.table.value)
        opts = [(f"{c.name} ({c.pg_type})", c.name) for c in info.columns] if info else []
        if wanted and wanted not in [v for _, v in opts]:
            opts.append((wanted, wanted))
        self.column.options = opts
        if wanted:
            self.column.value = wanted
        elif opts:
            self.column.value = opts[0][1]

    def _fill_ops(self, wanted: str | None = None) -> None:
        info = self.b._describe(self.table.value)
        ops = list(allowed_filter_types(self.category()) if info else FILTER_TYPES)
        if wanted and wanted not in ops:
            ops.append(wanted)
        current = wanted or (self.op.value if self.op.value in ops else None)
        self.op.options = ops
        if current:
            self.op.value = current
        elif ops:
            self.op.value = ops[0]

    def fill_groups(self, wanted: str | None = None) -> None:
        """The builder's OR groups as choices; keeps the current one unless told otherwise."""
        current = (self.group.value or "") if wanted is None else wanted
        names = [*self.b.groups, *([current] if current and current not in self.b.groups else [])]
        self.group.options = [(_NO_GROUP, ""), *((n, n) for n in names)]
        self.group.value = current

    def _on_table(self) -> None:
        with self.b._quiet():
            self._fill_columns()
            self._fill_ops()
        self._on_op()

    def _on_column(self) -> None:
        with self.b._quiet():
            self._fill_ops()
        self._on_op()

    def _on_op(self, notify: bool = True) -> None:
        op = self.op.value or ""
        ranged = op in RANGE_FILTERS or op == "date_between"
        _show(
            self.value,
            not ranged and op not in SET_FILTERS and op not in ("is_null", "is_not_null"),
        )
        _show(self.lower, ranged)
        _show(self.upper, ranged)
        _show(self.values, op in SET_FILTERS)
        if notify:
            self.b._changed()

    def to_dict(self) -> dict[str, Any]:
        schema, _, table = (self.table.value or ".").partition(".")
        out: dict[str, Any] = {
            "schema_name": schema,
            "table_name": table,
            "column_name": self.column.value or "",
            "filter_type": self.op.value or "",
        }
        cat = self.category()
        op = self.op.value or ""
        conv = lambda text: _typed(text, cat)  # noqa: E731
        if op in SET_FILTERS:
            out["values"] = self._value(
                "values", self.values, lambda t: [_typed(x, cat) for x in _split(t)]
            )
        elif op in RANGE_FILTERS or op == "date_between":
            out["lower"] = self._value("lower", self.lower, conv)
            out["upper"] = self._value("upper", self.upper, conv)
        elif op not in ("is_null", "is_not_null"):
            out["value"] = self._value("value", self.value, conv)
        if self.group.value:
            out["or_group"] = self.group.value
        return out


_CONTRACT_FIELDS = {
    "modify_schema_name": ["target_schema_name"],
    "modify_table_name": ["target_table_name"],
    "modify_column_name": ["column_name", "new_column_name"],
    "add_primary_key": ["column_names"],
    "remove_primary_key": ["column_names"],
    "modify_column_value": ["column_name", "operation", "format"],
    "create_column": ["new_column_name", "operation"],
}
_CREATE_FIELDS = {
    "concat": ["depends_on", "separator"],
    "date_diff_years": ["depends_on"],
    "math_expression": ["expression"],
    "literal": ["value", "type"],
    "datetime_now": [],
}
_LIST_FIELDS = ("column_names", "depends_on")


class TransformationRow(_Row):
    def __init__(self, builder: TaskBuilder, spec: dict[str, Any] | None = None) -> None:
        super().__init__(builder)
        self.table = W.Dropdown(description="table", layout=W.Layout(width="260px"))
        self.kind = W.Dropdown(
            description="type", options=list(TRANSFORMATION_TYPES), layout=W.Layout(width="280px")
        )
        self.priority = W.Dropdown(description="priority", layout=W.Layout(width="150px"))
        self.fields: dict[str, W.Widget] = {
            name: W.Text(
                description=name.replace("_", " "),
                layout=W.Layout(width="260px"),
                style={"description_width": "initial"},
            )
            for name in (
                "target_schema_name",
                "target_table_name",
                "column_name",
                "new_column_name",
                "column_names",
                "format",
                "depends_on",
                "separator",
                "expression",
                "value",
            )
        }
        self.fields["operation"] = W.Dropdown(
            description="operation", layout=W.Layout(width="240px")
        )
        self.fields["type"] = W.Dropdown(
            description="value type", options=list(LITERAL_TYPES), layout=W.Layout(width="220px")
        )
        self.ui = W.VBox(
            [
                W.HBox([self.table, self.kind, self.priority, self.remove]),
                W.HBox(list(self.fields.values()), layout=W.Layout(flex_flow="row wrap")),
            ],
            layout=W.Layout(border="1px solid #eee", margin="2px 0", padding="2px"),
        )
        with builder._quiet():
            self.table.options = builder._table_options()
            kind = (spec or {}).get("transformation_type", "modify_column_value")
            contract = dict((spec or {}).get("contract", {}))
            if spec:
                key = f"{spec['schema_name']}.{spec['table_name']}"
                if key not in self.table.options:
                    self.table.options = [*self.table.options, key]
                self.table.value = key
            elif self.table.options:
                self.table.value = self.table.options[0]
            self.kind.value = kind
            self._fill_ops(contract.get("operation"))
            self._fill_priorities((spec or {}).get("priority"))
            self.orig = {k: v for k, v in contract.items() if k not in ("operation", "type")}
            for name, w in self.fields.items():
                if name == "operation":
                    continue
                if name == "type":
                    w.value = contract.get("type", "text")
                else:
                    w.value = _text_of(contract.get(name))
        self.kind.observe(lambda _c: self._on_kind(), names="value")
        self.fields["operation"].observe(lambda _c: self._layout(), names="value")
        self.watch(
            self.table, self.priority, *[w for n, w in self.fields.items() if n != "operation"]
        )
        self._layout(notify=False)

    def _fill_ops(self, wanted: str | None = None) -> None:
        kind = self.kind.value
        ops = list(
            COLUMN_VALUE_OPERATIONS
            if kind == "modify_column_value"
            else CREATE_COLUMN_OPERATIONS
            if kind == "create_column"
            else []
        )
        if wanted and wanted not in ops:
            ops.append(wanted)
        w = self.fields["operation"]
        w.options = ops
        w.value = wanted if wanted else (ops[0] if ops else None)

    def _fill_priorities(self, wanted: int | None = None) -> None:
        lo, hi = PRIORITY_RANGES.get(self.kind.value, (0, 4))
        opts = list(range(lo, hi + 1))
        if wanted is not None and wanted not in opts:
            opts.append(wanted)
        self.priority.options = opts
        self.priority.value = wanted if wanted is not None else opts[0]

    def _on_kind(self) -> None:
        with self.b._quiet():
            self._fill_ops()
            self._fill_priorities()
        self._layout()

    def visible_fields(self) -> list[str]:
        names = list(_CONTRACT_FIELDS.get(self.kind.value, []))
        op = self.fields["operation"].value
        if self.kind.value == "modify_column_value" and op != "format_date":
            names.remove("format")
        if self.kind.value == "create_column":
            names += _CREATE_FIELDS.get(op or "", [])
        return names

    def _layout(self, notify: bool = True) -> None:
        visible = set(self.visible_fields())
        for name, w in self.fields.items():
            _show(w, name in visible)
        if notify:
            self.b._changed()

    def to_dict(self) -> dict[str, Any]:
        schema, _, table = (self.table.value or ".").partition(".")
        contract: dict[str, Any] = {}
        lit_type = self.fields["type"].value
        for name in self.visible_fields():
            w = self.fields[name]
            if name in ("operation", "type"):
                contract[name] = w.value
            elif name in _LIST_FIELDS:
                contract[name] = self._value(name, w, _split)
            elif name == "separator":
                contract[name] = self._value(name, w, lambda t: t)
            elif name == "value":
                cat = {"integer": "integer", "numeric": "numeric", "boolean": "boolean"}.get(
                    lit_type, "text"
                )
                contract[name] = self._value(name, w, lambda t, c=cat: _typed(t, c))
            else:
                contract[name] = self._value(name, w, lambda t: t.strip())
        return {
            "schema_name": schema,
            "table_name": table,
            "priority": self.priority.value,
            "transformation_type": self.kind.value,
            "contract": contract,
        }


def filter_logic_html(filters: list[dict[str, Any]]) -> str:
    """What the filters keep, per table, in words: `(a OR b) AND c` (groups ORed inside, ANDed
    with each other and with the ungrouped filters), so a misplaced filter shows at a glance."""
    tables: dict[str, list[list[str]]] = {}
    slots: dict[tuple[str, str], list[str]] = {}
    for f in filters:
        table = f"{f.get('schema_name')}.{f.get('table_name')}"
        inputs = [f.get(k) for k in ("value", "lower", "upper", "values") if f.get(k) is not None]
        text = " ".join([str(f.get("column_name") or "?"), str(f.get("filter_type") or "?"), *map(_text_of, inputs)])
        terms = tables.setdefault(table, [])
        group = f.get("or_group")
        if group and (table, group) in slots:
            slots[(table, group)].append(text)
            continue
        terms.append([text])
        if group:
            slots[(table, group)] = terms[-1]
    lines = []
    for table, terms in tables.items():
        parts = [t[0] if len(t) == 1 else "(" + " OR ".join(t) + ")" for t in terms]
        lines.append(f"<code>{html.escape(table)}</code> keeps rows where {html.escape(' AND '.join(parts))}")
    return "<br>".join(lines)


class TaskBuilder:
    """Build or edit a task in a form; Preview, Save and Run call the public API."""

    def __init__(
        self,
        settings: dict[str, Any] | str | Path | TaskSettings | None = None,
        *,
        name: str | None = None,
        source: str | None = None,
        target: str | None = None,
        magics: Any = None,
        preview_limit: int | None = None,
        settings_dir: str | Path | None = None,
        live_validation: bool = True,
    ) -> None:
        self.magics = magics
        self.preview_limit = preview_limit or getattr(magics, "preview_limit", 20)
        self._explicit_dir = str(settings_dir or getattr(magics, "settings_dir", "") or "")
        self.settings_dir = Path(self._explicit_dir or os.getcwd())
        self._proposed_path = ""
        self.live_validation = live_validation
        self._suspend = 0
        self._tables_cache: dict[str, list[tuple[str, str, int]]] = {}
        self._describe_cache: dict[tuple[str, str], Any] = {}
        self._live_cache: tuple[str, list[str]] | None = None
        self.messages: list[str] = []
        self.catalog_error = ""
        self.valid = False
        self.runner: Any = None
        self.dashboard: Any = None
        self.filter_rows: list[FilterRow] = []
        self.transformation_rows: list[TransformationRow] = []
        self.groups: list[str] = []  # OR group names offered to filter rows (used or not yet)
        self._build()
        follow_connections(self)  # source/target choices follow the connections form
        if isinstance(settings, TaskSettings):
            settings = settings.to_dict()
        doc = (
            parse_settings(settings).to_dict()
            if settings is not None and not isinstance(settings, dict)
            else settings
        )
        if doc is None:
            doc = {
                "task": {
                    "task_name": name or "new_task",
                    "source": source or "",
                    "target": target or "",
                },
                "tables": [],
            }
        self.load(doc)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        conns = list_connections()["name"].to_list()
        style = {"description_width": "140px"}
        self.w_name = W.Text(description="task name", layout=W.Layout(width="420px"), style=style)
        self.w_desc = W.Text(description="description", layout=W.Layout(width="420px"), style=style)
        self.w_source = W.Dropdown(description="source", options=[_NO_PW, *conns], style=style)
        self.w_target = W.Dropdown(description="target", options=[_NO_PW, *conns], style=style)
        self.w_schema = W.Dropdown(description="schema", options=["(all)"], style=style)
        self.w_tables = W.SelectMultiple(
            description="tables", layout=W.Layout(width="420px", height="120px"), style=style
        )
        self.w_rtype = W.Dropdown(
            description="replication", options=list(REPLICATION_TYPES), style=style
        )
        self.w_start = W.Dropdown(description="start mode", options=list(START_MODES), style=style)
        self.w_transport = W.Dropdown(
            description="transport", options=list(TRANSPORTS), style=style
        )
        self.w_interval = W.BoundedFloatText(
            description="interval (s)", min=0.01, max=3600, step=0.1, style=style
        )
        self.w_mode = W.Dropdown(description="target mode", options=list(CDC_MODES), style=style)
        self.w_scd = {
            k: W.Text(description=f"SCD2 {k}", style=style)
            for k in ("start_date", "end_date", "current")
        }
        self.w_fl = {
            k: W.Checkbox(description=k.replace("_", " "), indent=False)
            for k in (
                "create_table_if_not_exists",
                "recreate_table_if_exists",
                "truncate_before_insert",
            )
        }
        self.w_eh = {
            k: W.Checkbox(description=k.replace("_", " "), indent=False)
            for k in (
                "stop_if_insert_error",
                "stop_if_update_error",
                "stop_if_delete_error",
                "stop_if_upsert_error",
                "stop_if_scd2_error",
            )
        }
        self.w_retries = W.BoundedIntText(description="max retries", min=0, max=100, style=style)
        self.filters_box = W.VBox()
        self.transformations_box = W.VBox()
        self.b_add_filter = W.Button(description="Add filter", icon="plus")
        self.b_add_transformation = W.Button(description="Add transformation", icon="plus")
        self.b_add_filter.on_click(lambda _b: self.add_filter())
        self.w_group_name = W.Text(
            placeholder="new OR group name (optional)", layout=W.Layout(width="260px")
        )
        self.b_add_group = W.Button(description="Add OR group", icon="code-fork")
        self.b_add_group.on_click(lambda _b: self._guard(lambda: self.add_group(self.w_group_name.value)))
        self.w_logic = W.HTML()
        self.b_add_transformation.on_click(lambda _b: self.add_transformation())
        self.w_messages = W.HTML()
        self.w_preview_table = W.Dropdown(description="preview", layout=W.Layout(width="300px"))
        self.w_limit = W.BoundedIntText(
            value=int(self.preview_limit),
            min=1,
            max=10_000,
            description="rows",
            layout=W.Layout(width="150px"),
        )
        self.w_path = W.Text(
            description="file", placeholder="./<task_name>.json", layout=W.Layout(width="300px")
        )
        self.b_validate = W.Button(description="Validate", icon="check")
        self.b_preview = W.Button(description="Preview", icon="eye", button_style="info")
        self.b_save = W.Button(description="Save", icon="save", button_style="success")
        self.b_run = W.Button(description="Run", icon="play", button_style="warning")
        self.b_validate.on_click(lambda _b: self._guard(self.validate))
        self.b_preview.on_click(lambda _b: self._guard(self.preview))
        self.b_save.on_click(lambda _b: self._guard(self.save))
        self.b_run.on_click(lambda _b: self._guard(self.run))
        self.out = W.Output(layout=W.Layout(border="1px solid #eee", min_height="30px"))

        for w in (
            self.w_name,
            self.w_desc,
            self.w_target,
            self.w_rtype,
            self.w_start,
            self.w_transport,
            self.w_interval,
            self.w_retries,
            *self.w_scd.values(),
            *self.w_fl.values(),
            *self.w_eh.values(),
        ):
            w.observe(lambda _c: self._changed(), names="value")
        self.w_mode.observe(lambda _c: self._on_mode(), names="value")
        self.w_name.observe(lambda _c: self._propose_path(), names="value")
        self.w_source.observe(lambda _c: self._on_source(), names="value")
        self.w_schema.observe(lambda _c: self._on_schema(), names="value")
        self.w_tables.observe(lambda _c: self._on_tables(), names="value")

        general = W.VBox(
            [
                self.w_name,
                self.w_desc,
                W.HBox([self.w_source, self.w_target]),
                W.HBox([self.w_schema]),
                self.w_tables,
            ]
        )
        run_box = W.VBox(
            [
                W.HBox([self.w_rtype, self.w_start]),
                W.HBox([self.w_transport, self.w_interval]),
                W.HBox([self.w_mode]),
                W.HBox(list(self.w_scd.values())),
                W.HTML("<b>full load</b>"),
                W.HBox(list(self.w_fl.values())),
                W.HTML("<b>error handling</b>"),
                W.HBox(list(self.w_eh.values())[:3]),
                W.HBox([*list(self.w_eh.values())[3:], self.w_retries]),
            ]
        )
        self.tabs = W.Tab(
            children=[
                general,
                run_box,
                W.VBox(
                    [
                        self.filters_box,
                        W.HBox([self.b_add_filter, self.w_group_name, self.b_add_group]),
                        self.w_logic,
                    ]
                ),
                W.VBox([self.transformations_box, self.b_add_transformation]),
            ]
        )
        for i, title in enumerate(("task", "mode", "filters", "transformations")):
            self.tabs.set_title(i, title)
        actions = W.HBox(
            [
                self.b_validate,
                self.w_preview_table,
                self.w_limit,
                self.b_preview,
                self.w_path,
                self.b_save,
                self.b_run,
            ],
            layout=W.Layout(flex_flow="row wrap"),
        )
        self.ui = W.VBox(
            [W.HTML("<b>trempy task builder</b>"), self.tabs, self.w_messages, actions, self.out]
        )
        self.ui.add_class("trempy-builder")

    # ------------------------------------------------------------------ suspend observers
    class _QuietCtx:
        def __init__(self, b: TaskBuilder) -> None:
            self.b = b

        def __enter__(self) -> None:
            self.b._suspend += 1

        def __exit__(self, *exc: object) -> None:
            self.b._suspend -= 1

    def _quiet(self) -> TaskBuilder._QuietCtx:
        return TaskBuilder._QuietCtx(self)

    # ------------------------------------------------------------------ catalog
    def _source_ref(self) -> str | None:
        value = self.w_source.value
        return None if value in (None, _NO_PW, "") else value

    def _all_tables(self) -> list[tuple[str, str, int]]:
        ref = self._source_ref()
        if ref is None:
            return []
        if ref not in self._tables_cache:
            try:
                with db_connect(resolve(ref)) as conn:
                    self._tables_cache[ref] = catalog.list_tables(conn, None)
            except Exception as exc:
                self._tables_cache[ref] = []
                self.catalog_error = one_line(exc)
        return self._tables_cache[ref]

    def _describe(self, qualified: str | None) -> Any:
        ref = self._source_ref()
        if not qualified or ref is None or "." not in qualified:
            return None
        key = (ref, qualified)
        if key not in self._describe_cache:
            schema, _, table = qualified.partition(".")
            try:
                with db_connect(resolve(ref)) as conn:
                    self._describe_cache[key] = catalog.describe_table(conn, schema, table)
            except Exception:
                self._describe_cache[key] = None
        return self._describe_cache[key]

    def _table_options(self) -> list[str]:
        return list(self.w_tables.value)

    def _refresh_table_lists(self) -> None:
        tables = [f"{s}.{t}" for s, t, _ in self._all_tables()]
        schemas = sorted({q.split(".", 1)[0] for q in tables})
        with self._quiet():
            current_schema = self.w_schema.value
            self.w_schema.options = ["(all)", *schemas]
            self.w_schema.value = (
                current_schema if current_schema in self.w_schema.options else "(all)"
            )
            self._apply_schema_filter(tables)

    def _apply_schema_filter(self, tables: list[str] | None = None) -> None:
        tables = tables if tables is not None else [f"{s}.{t}" for s, t, _ in self._all_tables()]
        schema = self.w_schema.value
        shown = [q for q in tables if schema in (None, "(all)") or q.startswith(schema + ".")]
        selected = list(self.w_tables.value)
        options = shown + [q for q in selected if q not in shown]
        with self._quiet():
            self.w_tables.options = options
            self.w_tables.value = tuple(q for q in selected if q in options)

    def _on_source(self) -> None:
        if self._suspend:
            return
        self._refresh_table_lists()
        self._on_tables()

    def _on_schema(self) -> None:
        if self._suspend:
            return
        self._apply_schema_filter()

    def _on_tables(self) -> None:
        if self._suspend:
            return
        options = self._table_options()
        for row in [*self.filter_rows, *self.transformation_rows]:
            with self._quiet():
                current = row.table.value
                row.table.options = options + (
                    [current] if current and current not in options else []
                )
                row.table.value = current
        with self._quiet():
            self._set_preview_options(options)
        self._changed()

    def _on_mode(self) -> None:
        for w in self.w_scd.values():
            w.disabled = self.w_mode.value != "scd2"
        self._changed()

    def _set_preview_options(self, options: list[str]) -> None:
        """The preview's table choice follows the chosen tables, the first preselected."""
        current = self.w_preview_table.value
        self.w_preview_table.options = options
        if options:
            self.w_preview_table.value = current if current in options else options[0]

    def _propose_path(self) -> None:
        """Save proposes `./<task_name>.json` (beside the notebook: the kernel's working
        folder) or `<settings_dir>/<task_name>.json`, until the user types a path."""
        name = self.w_name.value.strip() or "task"
        proposal = (
            os.path.join(self._explicit_dir, f"{name}.json")
            if self._explicit_dir
            else f"./{name}.json"
        )
        if self.w_path.value.strip() in ("", self._proposed_path):
            self.w_path.value = proposal
        self._proposed_path = proposal

    def refresh_connections(self) -> None:
        """Source and target choices after a connections form saved or deleted one."""
        names = list_connections()["name"].to_list()
        for dropdown in (self.w_source, self.w_target):
            current = dropdown.value
            extra = [
                o
                for o in dropdown.options
                if isinstance(o, tuple) and o[1] == current and current not in names
            ]
            with self._quiet():
                dropdown.options = [_NO_PW, *names, *extra]
                known = [o[1] if isinstance(o, tuple) else o for o in dropdown.options]
                dropdown.value = current if current in known else _NO_PW
        self._changed()

    # ------------------------------------------------------------------ rows
    def add_filter(self, spec: dict[str, Any] | None = None) -> FilterRow:
        row = FilterRow(self, spec)
        self.filter_rows.append(row)
        self.filters_box.children = [r.ui for r in self.filter_rows]
        self._changed()
        return row

    def add_group(self, name: str | None = None) -> str:
        """Offer a new OR group to every filter row (`group_1`, `group_2`... when unnamed);
        it enters the document once a filter is moved into it (`move_filter`)."""
        name = (name or "").strip()
        if not name:
            taken = set(self.groups) | {r.group.value for r in self.filter_rows}
            name = next(f"group_{i}" for i in range(1, len(taken) + 2) if f"group_{i}" not in taken)
        if name in self.groups:
            raise ValueError(f"OR group {name!r} already exists")
        self.groups.append(name)
        with self._quiet():
            for row in self.filter_rows:
                row.fill_groups()
            self.w_group_name.value = ""
        self._changed()
        return name

    def move_filter(self, row: FilterRow | int, group: str | None) -> None:
        """Put a filter (row or its index) into an OR group, or back among the ANDed ones (None)."""
        target = self.filter_rows[row] if isinstance(row, int) else row
        if group and group not in self.groups:
            self.add_group(group)
        target.group.value = group or ""

    def add_transformation(self, spec: dict[str, Any] | None = None) -> TransformationRow:
        row = TransformationRow(self, spec)
        self.transformation_rows.append(row)
        self.transformations_box.children = [r.ui for r in self.transformation_rows]
        self._changed()
        return row

    def _remove_row(self, row: _Row) -> None:
        if row in self.filter_rows:
            self.filter_rows.remove(row)
            self.filters_box.children = [r.ui for r in self.filter_rows]
        if row in self.transformation_rows:
            self.transformation_rows.remove(row)
            self.transformations_box.children = [r.ui for r in self.transformation_rows]
        self._changed()

    # ------------------------------------------------------------------ form <-> document
    def _connection_value(self, dropdown: W.Dropdown, ref: str, task_name: str, role: str) -> None:
        if not ref:
            dropdown.value = _NO_PW
            return
        if has_literal_password(ref):
            ref = protect(ref, f"{task_name}-{role}")  # saved encrypted; the form holds the name
        values = [o[1] if isinstance(o, tuple) else o for o in dropdown.options]
        if ref not in values:
            dropdown.options = [
                *[(str(o), o) if not isinstance(o, tuple) else o for o in dropdown.options],
                (mask(ref), ref),
            ]
        dropdown.value = ref

    def load(self, doc: dict[str, Any]) -> None:
        """Fill the form from a settings document (replaces everything)."""
        task = doc.get("task", {})
        with self._quiet():
            name = task.get("task_name", "")
            self.w_name.value = name
            self.w_desc.value = task.get("description", "")
            self._connection_value(self.w_source, task.get("source", ""), name or "task", "source")
            self._connection_value(self.w_target, task.get("target", ""), name or "task", "target")
            self.w_rtype.value = task.get("replication_type", "full_load")
            self.w_start.value = task.get("start_mode", "reload")
            self.w_transport.value = task.get("transport", "local")
            self.w_interval.value = float(task.get("interval_seconds", 1.0))
            cdc = task.get("cdc_settings", {})
            self.w_mode.value = cdc.get("mode", "upsert")
            scd = {
                "start_date": "scd_start_date",
                "end_date": "scd_end_date",
                "current": "scd_current",
                **cdc.get("scd2_settings", {}),
            }
            for k, w in self.w_scd.items():
                w.value = scd[k]
                w.disabled = self.w_mode.value != "scd2"
            fl = {
                "create_table_if_not_exists": True,
                "recreate_table_if_exists": False,
                "truncate_before_insert": True,
                **task.get("full_load_settings", {}),
            }
            for k, w in self.w_fl.items():
                w.value = bool(fl[k])
            eh = {
                "stop_if_insert_error": True,
                "stop_if_update_error": True,
                "stop_if_delete_error": False,
                "stop_if_upsert_error": True,
                "stop_if_scd2_error": True,
                "max_retries": 3,
                **doc.get("error_handling", {}),
            }
            for k, w in self.w_eh.items():
                w.value = bool(eh[k])
            self.w_retries.value = int(eh["max_retries"])
            selected = [f"{t['schema_name']}.{t['table_name']}" for t in doc.get("tables", [])]
            self.w_tables.options = selected
            self.w_tables.value = tuple(selected)
            self._refresh_table_lists()
            self._set_preview_options(selected)
            self.w_path.value = ""
            self._proposed_path = ""
            self._propose_path()
            self.filter_rows, self.transformation_rows = [], []
            self.filters_box.children, self.transformations_box.children = [], []
            self.groups = list(dict.fromkeys(f["or_group"] for f in doc.get("filters", []) if f.get("or_group")))
        for f in doc.get("filters", []):
            with self._quiet():
                row = FilterRow(self, f)
            self.filter_rows.append(row)
        for t in doc.get("transformations", []):
            with self._quiet():
                row2 = TransformationRow(self, t)
            self.transformation_rows.append(row2)
        self.filters_box.children = [r.ui for r in self.filter_rows]
        self.transformations_box.children = [r.ui for r in self.transformation_rows]
        self._changed()

    def document(self) -> dict[str, Any]:
        """The settings document the form holds (not validated)."""
        source = self._source_ref() or ""
        target = self.w_target.value if self.w_target.value not in (None, _NO_PW) else ""
        return {
            "task": {
                "task_name": self.w_name.value.strip(),
                "description": self.w_desc.value,
                "source": source,
                "target": target,
                "replication_type": self.w_rtype.value,
                "start_mode": self.w_start.value,
                "transport": self.w_transport.value,
                "interval_seconds": float(self.w_interval.value),
                "full_load_settings": {k: bool(w.value) for k, w in self.w_fl.items()},
                "cdc_settings": {
                    "mode": self.w_mode.value,
                    "scd2_settings": {k: w.value.strip() for k, w in self.w_scd.items()},
                },
            },
            "error_handling": {
                **{k: bool(w.value) for k, w in self.w_eh.items()},
                "max_retries": int(self.w_retries.value),
            },
            "tables": [
                {"schema_name": q.split(".", 1)[0], "table_name": q.split(".", 1)[1]}
                for q in self.w_tables.value
            ],
            "filters": [r.to_dict() for r in self.filter_rows],
            "transformations": [r.to_dict() for r in self.transformation_rows],
        }

    @property
    def settings(self) -> dict[str, Any]:
        """The validated settings document (SettingsError naming the field if invalid)."""
        return parse_settings(self.document()).to_dict()

    # ------------------------------------------------------------------ validation
    def _changed(self) -> None:
        if self._suspend:
            return
        self.w_logic.value = filter_logic_html(self.document()["filters"])
        self.check()

    def check(self, live: bool | None = None) -> list[str]:
        """Validate the form (document, then against the live source); show and return problems."""
        live = self.live_validation if live is None else live
        doc = self.document()
        problems: list[str] = []
        try:
            settings = parse_settings(doc)
        except Exception as exc:
            problems = [p.strip() for p in str(exc).split("; ") if p.strip()]
            settings = None
        if settings is not None and live and self._source_ref():
            key = json.dumps(doc, sort_keys=True, default=str)
            if self._live_cache and self._live_cache[0] == key:
                problems = list(self._live_cache[1])
            else:
                from trempy_nb.task import Task

                try:
                    Task.from_settings(settings).validate()
                except Exception as exc:
                    problems = [p.strip() for p in re.split(r"; |\n", str(exc)) if p.strip()]
                self._live_cache = (key, list(problems))
        self.valid = not problems
        if problems:
            self.show_messages(problems, "error")
        else:
            self.show_messages(
                [
                    f"task {doc['task']['task_name']} is valid"
                    + (" (checked against the source)" if live and self._source_ref() else "")
                ],
                "ok",
            )
        return problems

    def show_messages(self, lines: list[str], level: str = "info") -> None:
        self.messages = [mask(x) for x in lines]
        notes = "".join(Note(x, level)._repr_html_() for x in self.messages)
        self.w_messages.value = notes

    def _guard(self, action: Any) -> None:
        """Button handlers: a failure becomes a message, never a traceback in the log."""
        try:
            action()
        except Exception as exc:
            self.show_messages([one_line(exc)], "error")
            self._output(Note(one_line(exc), "error"))

    def _output(self, obj: Any, clear: bool = True) -> None:
        if clear:
            self.out.outputs = ()
        self.out.append_display_data(obj)

    # ------------------------------------------------------------------ actions
    def task(self) -> Any:
        from trempy_nb.task import Task

        return Task.from_settings(self.settings)

    def validate(self) -> list[str]:
        problems = self.check(live=True)
        if problems:
            raise ValueError("; ".join(problems))
        return problems

    def preview(self) -> Any:
        """Render the transformed rows of the chosen table in the output area; return the frame."""
        task = self.task().validate()
        table = self.w_preview_table.value or None
        frame = task.preview(table, limit=int(self.w_limit.value))
        total = task.estimated_rows(table)
        caption = (
            f"showing {frame.height:,} of ~{total:,} rows of {table or task.settings.tables[0].schema_name + '.' + task.settings.tables[0].table_name}"
            f" (limit {int(self.w_limit.value)})"
        )
        self._output(Titled(caption, frame, max_rows=int(self.w_limit.value)))
        return frame

    def save(self, path: str | Path | None = None) -> Path:
        """Keep the task in the session and $TREMPY_HOME, and write its settings file."""
        from trempy_nb.notebook.commands import define_task

        settings = self.settings
        save = bool(getattr(self.magics, "save_tasks", True))
        task = define_task(settings, validate=True, save=save)
        target = Path(path or self.w_path.value.strip() or self.settings_dir / f"{task.name}.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        self._output(Note(f"saved task {task.name} to {target} and the session", "ok"))
        return target

    def run(self, until_caught_up: bool = False) -> Any:
        """Save to the session, start the background runner, show its dashboard here."""
        from trempy_nb.notebook.commands import SESSION, define_task
        from trempy_nb.notebook.commands.runs import start
        from trempy_nb.notebook.dashboard import Dashboard

        task = define_task(
            self.settings, validate=True, save=bool(getattr(self.magics, "save_tasks", True))
        )
        self.runner = start(task.name, until_caught_up=until_caught_up)
        interval = float(getattr(self.magics, "dashboard_interval", 0.5))
        self.dashboard = Dashboard(self.runner, interval=interval, use_widgets=True).start()
        old = SESSION.dashboards.pop(task.name, None)
        if old is not None:
            old.close()
        SESSION.dashboards[task.name] = self.dashboard
        self._output(self.dashboard)
        return self.runner

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        doc = self.document()
        tables = ", ".join(f"{t['schema_name']}.{t['table_name']}" for t in doc["tables"]) or "none"
        state = "valid" if self.valid else "invalid: " + "; ".join(self.messages)
        return mask(
            f"TaskBuilder({doc['task']['task_name']!r}, tables: {tables}, {len(doc['filters'])} filter(s),"
            f" {len(doc['transformations'])} transformation(s); {state})"
        )

    def _repr_html_(self) -> str:
        return f"<div><b>trempy task builder</b> <code>{html.escape(repr(self))}</code></div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        view = self.ui._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle
