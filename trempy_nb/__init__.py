"""trempy_nb: notebook-native PostgreSQL change data capture."""

from __future__ import annotations

__version__ = "0.1.0"

# The plain Python functions under the magics, imported on first use so that
# `import trempy_nb` stays light and registers nothing.
_LAZY = {
    "Task": ("trempy_nb.task", "Task"),
    "connect": ("trempy_nb.connections", "save_connection"),
    "save_connection": ("trempy_nb.connections", "save_connection"),
    "list_connections": ("trempy_nb.connections", "list_connections"),
    "resolve": ("trempy_nb.connections", "resolve"),
    "start_cluster": ("trempy_nb.embedded", "start_cluster"),
}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'trempy_nb' has no attribute {name!r}")


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%load_ext trempy_nb`: registers the %trempy magics (never at import)."""
    from trempy_nb.notebook import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    from trempy_nb.notebook import unload_ipython_extension as _unload

    _unload(ipython)
