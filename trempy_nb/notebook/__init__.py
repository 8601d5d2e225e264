"""The notebook surface: `%trempy` magics, the widget task builder, the live dashboard.

`%load_ext trempy_nb` calls `load_ipython_extension` (registration happens
there, never at import). Every verb has a plain function in
`trempy_nb.notebook.commands`, so scripts and tests need no IPython.
"""

from __future__ import annotations

from typing import Any

from trempy_nb.notebook.commands import (  # noqa: F401 - the plain-Python surface
    as_of,
    changes,
    columns,
    connect,
    connections,
    dead_letters,
    define_task,
    delete_connection,
    drop,
    errors,
    get_task,
    history,
    list_tasks,
    load_task,
    preview,
    preview_changes,
    replay_dead_letters,
    run,
    show_task,
    stats,
    status,
    stop,
    tables,
    validate,
)


def load_ipython_extension(ipython: Any) -> None:
    from trempy_nb.notebook.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from trempy_nb.notebook.magics import unload

    unload(ipython)


def builder(settings: Any = None, **kwargs: Any) -> Any:
    """The widget task builder (see `trempy_nb.notebook.builder.TaskBuilder`)."""
    from trempy_nb.notebook.builder import TaskBuilder

    return TaskBuilder(settings, **kwargs)


def connections_form(**kwargs: Any) -> Any:
    """The connections form (see `trempy_nb.notebook.connections_form.ConnectionsForm`)."""
    from trempy_nb.notebook.connections_form import ConnectionsForm

    return ConnectionsForm(**kwargs)


def dashboard(runner: Any, **kwargs: Any) -> Any:
    """A live dashboard for a runner (see `trempy_nb.notebook.dashboard.Dashboard`)."""
    from trempy_nb.notebook.dashboard import Dashboard

    return Dashboard(runner, **kwargs).start()
