"""trempy_nb: notebook-native PostgreSQL change data capture."""

from __future__ import annotations

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%load_ext trempy_nb`: registers the %trempy magics (never at import)."""
    from trempy_nb.notebook import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    from trempy_nb.notebook import unload_ipython_extension as _unload

    _unload(ipython)
