"""Plain functions under every `%trempy` verb: scripts and tests call these without IPython.

Each one calls the public Python API (Task, Runner, connections, catalog,
metadata) and returns a Polars frame or a display object from `render`.
"""

from trempy_nb.notebook.commands.connections import (
    columns,
    connect,
    connections,
    delete_connection,
    tables,
)
from trempy_nb.notebook.commands.lifecycle import (
    add_table,
    pause_table,
    resume_table,
    resync,
    table_states,
)
from trempy_nb.notebook.commands.ops import follow_logs, logs, slot_cockpit, slots
from trempy_nb.notebook.commands.runs import (
    dead_letters,
    errors,
    replay_dead_letters,
    run,
    runs,
    stats,
    status,
    stop,
)
from trempy_nb.notebook.commands.session import SESSION, Session, get_task, put_task
from trempy_nb.notebook.commands.tasks import (
    as_of,
    changes,
    define_task,
    diff,
    drop,
    history,
    list_tasks,
    load_task,
    preview,
    preview_changes,
    show_task,
    validate,
)

__all__ = [
    "add_table",
    "pause_table",
    "resume_table",
    "resync",
    "table_states",
    "diff",
    "SESSION",
    "Session",
    "as_of",
    "changes",
    "columns",
    "connect",
    "connections",
    "dead_letters",
    "define_task",
    "delete_connection",
    "drop",
    "errors",
    "get_task",
    "history",
    "list_tasks",
    "load_task",
    "logs",
    "follow_logs",
    "slot_cockpit",
    "slots",
    "preview",
    "preview_changes",
    "put_task",
    "replay_dead_letters",
    "run",
    "runs",
    "show_task",
    "stats",
    "status",
    "stop",
    "tables",
    "validate",
]
