"""The connections form (`%trempy connections`): list, add, edit, test and delete saved connections.

A password is typed into a password field, sent to `connections.save_connection`
(stored encrypted, as for `%trempy connect`) and the field is emptied at once, so no
widget state, output or saved notebook holds it; the list shows connections masked.
Forms and builders of the session subscribe to changes, so a builder's source and
target choices follow what this form saves or deletes.
"""

from __future__ import annotations

import html
import weakref
from typing import Any

import ipywidgets as W
import polars as pl

from trempy_nb.connection_check import Checked, check_connection
from trempy_nb.connections import (
    ConnectionInfo,
    delete_connection,
    get_connection,
    has_literal_password,
    list_connections,
    mask,
    password_source,
    save_connection,
    with_password,
)
from trempy_nb.errors import SettingsError
from trempy_nb.notebook.render import one_line, table_html

NEW = ""  # the picker's value for "a new connection"

_SUBSCRIBERS: weakref.WeakSet[Any] = weakref.WeakSet()


def subscribe(listener: Any) -> None:
    """`listener.refresh_connections()` is called after every save or delete of a form."""
    _SUBSCRIBERS.add(listener)


def notify() -> None:
    for listener in list(_SUBSCRIBERS):
        try:
            listener.refresh_connections()
        except Exception:  # noqa: S112 - one closed builder must not stop the others
            continue


def connections_frame() -> pl.DataFrame:
    """Saved connections with how each keeps its password (never the password)."""
    frame = list_connections()
    kinds = [password_source(n) for n in frame["name"].to_list()]
    return frame.with_columns(pl.Series("password", kinds, pl.String))


class ConnectionsForm:
    """List (masked), add, edit, test (latency, server version), delete with confirmation."""

    def __init__(self, test_before_save: bool = True) -> None:
        style = {"description_width": "110px"}
        wide = W.Layout(width="520px")
        self.w_list = W.HTML()
        self.w_pick = W.Dropdown(description="connection", style=style)
        self.w_name = W.Text(description="name", placeholder="hr", style=style)
        self.w_uri = W.Text(
            description="URI",
            placeholder="postgresql://user@host:5432/dbname (the password goes below)",
            style=style,
            layout=wide,
        )
        self.w_password = W.Password(
            description="password", placeholder="typed here, stored encrypted", style=style
        )
        self.w_test_first = W.Checkbox(
            value=test_before_save, description="test before saving", indent=False
        )
        self.b_save = W.Button(description="Add", icon="plus", button_style="success")
        self.b_test = W.Button(description="Test", icon="plug", button_style="info")
        self.b_delete = W.Button(description="Delete", icon="trash", button_style="danger")
        self.b_confirm = W.Button(description="Yes, delete", button_style="danger")
        self.b_cancel = W.Button(description="Cancel")
        self.w_confirm = W.HBox([W.HTML(), self.b_confirm, self.b_cancel])
        self.w_confirm.layout.display = "none"
        self.w_status = W.HTML()
        self.b_save.on_click(lambda _b: self._guard(self.save))
        self.b_test.on_click(lambda _b: self._guard(self.test))
        self.b_delete.on_click(lambda _b: self._guard(self.delete))
        self.b_confirm.on_click(lambda _b: self._guard(self.confirm_delete))
        self.b_cancel.on_click(lambda _b: self.cancel_delete())
        self.w_pick.observe(lambda _c: self._on_pick(), names="value")
        self.ui = W.VBox(
            [
                W.HTML("<b>trempy connections</b>"),
                self.w_list,
                self.w_pick,
                self.w_name,
                self.w_uri,
                W.HBox([self.w_password, self.w_test_first]),
                W.HBox([self.b_save, self.b_test, self.b_delete]),
                self.w_confirm,
                self.w_status,
            ],
            layout=W.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.ui.add_class("trempy-connections")
        subscribe(self)
        self.refresh()

    # ------------------------------------------------------------------ state
    @property
    def editing(self) -> str | None:
        """The saved connection being edited, or None for a new one."""
        return self.w_pick.value or None

    def refresh(self, select: str | None = None) -> None:
        frame = connections_frame()
        names = frame["name"].to_list()
        self.w_list.value = table_html(frame, max_rows=200)
        current = select if select is not None else self.w_pick.value
        self.w_pick.options = [("(new connection)", NEW), *[(n, n) for n in names]]
        self.w_pick.value = current if current in names else NEW
        self._on_pick()

    def refresh_connections(self) -> None:
        self.refresh()

    def _on_pick(self) -> None:
        self.cancel_delete()
        name = self.editing
        self.w_password.value = ""
        if name is None:
            self.w_name.value, self.w_uri.value = "", ""
            self.w_password.placeholder = "typed here, stored encrypted"
            self.b_save.description, self.b_save.icon = "Add", "plus"
            self.b_delete.disabled = True
            return
        info = get_connection(name)
        self.w_name.value, self.w_uri.value = info.name, info.uri
        self.w_password.placeholder = (
            "(unchanged: leave empty to keep it)" if info.has_password else "(none saved)"
        )
        self.b_save.description, self.b_save.icon = "Save", "save"
        self.b_delete.disabled = False

    def _say(self, message: str, level: str = "ok") -> None:
        color = {"ok": "#1a7f37", "error": "#cf222e", "info": "#1f6feb"}[level]
        self.w_status.value = f"<span style='color:{color}'>{html.escape(mask(message))}</span>"

    def _guard(self, action: Any) -> None:
        """Buttons: a failure is one masked line in the form, never a traceback."""
        try:
            action()
        except Exception as exc:
            self._say(one_line(exc), "error")
        finally:
            self.w_password.value = ""  # never left in the widget state

    # ------------------------------------------------------------------ actions
    def _fields(self) -> tuple[str, str, str]:
        name = self.w_name.value.strip()
        uri = self.w_uri.value.strip()
        password = self.w_password.value
        if has_literal_password(uri):
            self.w_uri.value = mask(uri)
            raise SettingsError(
                "type the password in the password field, not in the URI (or write it as ${VAR})"
            )
        if not uri:
            raise SettingsError("URI: give postgresql://user@host:5432/dbname (or mysql://user@host:3306/dbname)")
        return name, uri, password

    def _target(self) -> str:
        """What to test: the typed fields, or the saved connection when they are unchanged."""
        _name, uri, password = self._fields()
        if password:
            return with_password(uri, password)
        if self.editing is not None and uri == get_connection(self.editing).uri:
            return self.editing
        return uri

    def test(self) -> Checked:
        """Connect once: latency in ms and the server and its version, shown in the form."""
        target = self._target()
        checked = check_connection(target, keep_password_of=self.editing)
        self._say(f"connected in {checked.ms:,.1f} ms, {checked.server}")
        return checked

    def save(self) -> ConnectionInfo:
        """Add or update (rename too) a connection; the password field empties either way.

        Tested first (unless unticked): nothing is saved when the connection fails."""
        name, uri, password = self._fields()
        if not name:
            raise SettingsError("name: give the connection a name")
        full = with_password(uri, password) if password else uri
        keep = self.editing if not password else None
        tested = ""
        if self.w_test_first.value:
            checked = check_connection(full, keep_password_of=keep)
            tested = f" (tested: {checked.ms:,.1f} ms, {checked.server})"
        info = save_connection(name, full, test=False, keep_password_of=keep)
        if self.editing is not None and self.editing != name:
            delete_connection(self.editing)
        self.refresh(select=name)
        notify()
        self._say(f"saved connection {info}{tested}")
        return info

    def delete(self) -> None:
        """Ask first: the confirmation row appears."""
        if self.editing is None:
            raise SettingsError("choose a saved connection to delete")
        label = self.w_confirm.children[0]
        label.value = f"delete connection <b>{html.escape(self.editing)}</b>?"
        self.w_confirm.layout.display = "flex"

    def confirm_delete(self) -> None:
        name = self.editing
        if name is None:
            return
        delete_connection(name)
        self.refresh(select=NEW)
        notify()
        self._say(f"deleted connection {name}")

    def cancel_delete(self) -> None:
        self.w_confirm.layout.display = "none"

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        names = ", ".join(list_connections()["name"].to_list()) or "none"
        return f"ConnectionsForm(saved: {names})"

    def _repr_html_(self) -> str:
        return f"<div><b>trempy connections</b>{table_html(connections_frame(), 200)}</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        view = self.ui._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle
