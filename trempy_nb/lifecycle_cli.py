"""`trempy-nb add-table | resync | pause-table | resume-table NAME schema.table`: per-table lifecycle.

Each records a request in the state store for the task's owner (the runner holding the task, in any
process, or a fleet worker), which carries it out between batches while the other tables stream
(docs/lifecycle.md). The command says who will carry it out, or that the task is not running and the
request waits for its next run (add-table also writes the table into the stored settings at once).
`--wait S`: wait up to S seconds for the owner to finish (exit 1 if it failed).

Exit codes: 0 recorded (or done), 2 bad input (an unknown task: the known ones are listed; a table not
in the task: its tables are named), 1 failure. Imports stay light: the parser is built on every start.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["COMMANDS", "add_parsers"]

COMMANDS = ("add-table", "resync", "pause-table", "resume-table")
_HELP = {
    "add-table": "add a table to a running task: loaded from a snapshot in step with its stream, then streamed",
    "resync": "reload one table of a running task from a fresh snapshot while the others stream",
    "pause-table": "hold one table's changes durably on the target (the stream and the slot go on)",
    "resume-table": "apply a paused table's held changes in order, then stream it again",
}


def add_parsers(subparsers: Any) -> None:
    """Register add-table, resync, pause-table and resume-table."""
    for command in COMMANDS:
        p = subparsers.add_parser(command, help=_HELP[command], description=_HELP[command])
        p.add_argument("task", help="name of a saved task")
        p.add_argument("table", help="schema.table (a bare name means public.name)")
        if command == "resync":
            p.add_argument("--baseline", action="store_true",
                           help="SCD2: rebuild the table as a new baseline (truncate + load) instead of appending"
                                " the differences to its history")
        p.add_argument("--wait", type=float, default=0.0, metavar="S",
                       help="wait up to S seconds for the task's owner to finish the request")
        p.set_defaults(func=_run, command_name=command)


def _run(args: argparse.Namespace) -> int:
    # lazy imports: start-up speed
    from trempy_nb.engine.tablectl import ACTIONS
    from trempy_nb.errors import UnknownTask
    from trempy_nb.metadata import MetadataStore
    from trempy_nb.settings import parse_settings
    from trempy_nb.task import Task

    store = MetadataStore()
    if args.task not in store.task_names() or not _saved(store, args.task):
        known = [n for n in store.task_names() if _saved(store, n)]
        raise UnknownTask(f"unknown task {args.task!r}; known tasks: {', '.join(known) or 'none'}")
    task = Task(parse_settings(store.load_task(args.task)))
    options = {"baseline": True} if getattr(args, "baseline", False) else None
    action = ACTIONS[args.command_name]
    if args.wait and args.wait < 0:
        from trempy_nb.errors import SettingsError

        raise SettingsError(f"--wait must be a positive number of seconds, not {args.wait}")
    out = task._lifecycle(action, args.table, options, args.wait or None)
    print(out["message"])
    return 0


def _saved(store: Any, name: str) -> bool:
    try:
        store.load_task(name)
    except Exception:
        return False
    return True
