"""The tasks and runners of this Python session (a kernel), by task name."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from trempy_nb.store import ENV_VAR, MetadataStore
from trempy_nb.task import Task


@dataclass
class Session:
    tasks: dict[str, Task] = field(default_factory=dict)
    runners: dict[str, Any] = field(default_factory=dict)
    dashboards: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        """Stop every running runner (errors ignored) and forget everything."""
        for runner in list(self.runners.values()):
            if getattr(runner, "running", False):
                try:
                    runner.stop()
                except Exception:  # noqa: S110 - clearing is best effort
                    pass
        for dash in list(self.dashboards.values()):
            dash.close()
        self.tasks.clear()
        self.runners.clear()
        self.dashboards.clear()


SESSION = Session()


_STORES: dict[tuple[str, str], Any] = {}


def _store() -> Any:
    """The state store `%config Trempy.metadata_url` / $TREMPY_METADATA_URL / $TREMPY_HOME names,
    opened once per location (a PostgreSQL store keeps its small connection pool between cells)."""
    key = (os.environ.get(ENV_VAR, ""), os.environ.get("TREMPY_HOME", ""))
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = MetadataStore()
    return store


def put_task(task: Task, save: bool = True) -> Task:
    """Keep `task` in the session and (save=True) in $TREMPY_HOME's metadata store.

    The store keeps no literal password: a URI carrying one is saved as a
    connection and the stored settings name it instead.
    """
    SESSION.tasks[task.name] = task
    if save:
        _store().save_task(task.name, task.settings.to_dict())
    return task


def get_task(name: str) -> Task:
    """A task of this session, else one saved in $TREMPY_HOME (SettingsError if unknown)."""
    task = SESSION.tasks.get(name)
    if task is not None:
        return task
    from trempy_nb.errors import SettingsError

    try:
        doc = _store().load_task(name)
    except SettingsError:
        known = sorted(set(SESSION.tasks))
        raise SettingsError(
            f"unknown task {name!r}; define it with %%trempy task {name}"
            + (f" (session tasks: {', '.join(known)})" if known else "")
        ) from None
    task = Task.from_settings(doc)
    SESSION.tasks[name] = task
    return task
