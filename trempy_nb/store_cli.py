"""`trempy-nb submit | stop | status`, and `--metadata URL` on every subcommand.

`submit` stores a task as desired-running in the state store, `stop` sets it
desired-stopped (its owner drains and stops), `status` shows desired and actual state,
owner, heartbeat age, lag and last error of every task (`--json`: a JSON array of
objects). The state store is `--metadata URL`, else `$TREMPY_METADATA_URL`, else the
SQLite file in $TREMPY_HOME (docs/fleet.md). Its own imports stay light (argparse only):
the parser is built on every `trempy-nb` start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["COMMANDS", "METADATA_ENV", "add_metadata_option", "add_parsers", "apply_metadata"]

#: the same name as `trempy_nb.store.location.ENV_VAR` (a unit test keeps them equal); repeated
#: here so that building the parser imports no store
METADATA_ENV = "TREMPY_METADATA_URL"
METADATA_HELP = (
    "state store: a postgresql:// URL, a saved connection name or a SQLite file"
    f" (default: ${METADATA_ENV}, else $TREMPY_HOME/metadata.sqlite3)"
)
COMMANDS = ("submit", "stop", "status")


def add_parsers(subparsers: Any) -> None:
    """Register submit, stop and status."""
    p = subparsers.add_parser("submit", help="store a task as desired-running for the workers of the state store")
    p.add_argument("settings", help="settings file (.json or .yaml)")
    p.add_argument("--replace", action="store_true",
                   help="accept changed settings for a running task (its owner restarts it with them)")
    p.set_defaults(func=_cmd_submit)

    p = subparsers.add_parser("stop", help="set a task desired-stopped (its owner drains and stops it)")
    p.add_argument("task", help="task name")
    p.set_defaults(func=_cmd_stop)

    p = subparsers.add_parser("status", help="desired and actual state, owner, lag and last error of the tasks")
    p.add_argument("task", nargs="?", help="only this task")
    p.add_argument("--json", action="store_true", help="a JSON array of objects instead of a table")
    p.set_defaults(func=_cmd_status)


def add_metadata_option(parser: argparse.ArgumentParser, subparsers: Any) -> None:
    """`--metadata URL` before the subcommand and on every subcommand (and sub-subcommand, as in
    `connect list`) that does not define it itself.

    argparse copies a subparser's defaults over its parent's values, so each level has its own
    destination (`metadata_global`, `metadata`, `metadata_2`...); `apply_metadata` takes the one given."""
    parser.add_argument("--metadata", dest="metadata_global", metavar="URL", help=METADATA_HELP)
    _add_below(subparsers, 1)


def _add_below(subparsers: Any, depth: int) -> None:
    for sub in subparsers.choices.values():
        if "--metadata" not in sub._option_string_actions:
            sub.add_argument("--metadata", dest="metadata" if depth == 1 else f"metadata_{depth}",
                             metavar="URL", help=METADATA_HELP)
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_below(action, depth + 1)


def apply_metadata(args: argparse.Namespace) -> None:
    """Point this process at the state store named on the command line (before anything opens it)."""
    given = [v for k, v in sorted(vars(args).items()) if k.startswith("metadata") and isinstance(v, str) and v]
    if given:
        os.environ[METADATA_ENV] = given[0]


# lazy imports below: start-up speed (polars, psycopg and the store load only for these commands)


def _cmd_submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trempy_nb.metadata import MetadataStore
    from trempy_nb.settings import parse_settings

    settings = parse_settings(Path(args.settings))
    store = MetadataStore()
    store.submit(settings.name, settings.to_dict(), replace=args.replace)
    alive = [w["name"] for w in store.workers() if w["alive"]]
    print(f"submitted task {settings.name}: desired running in {store.location}")
    if not alive:
        print("no live worker: start one with `trempy-nb worker`", file=sys.stderr)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from trempy_nb.metadata import MetadataStore

    store = MetadataStore()
    store.set_desired(args.task, "stopped")
    owners = sorted({r["worker"] for r in store.fleet_status(args.task) if r["worker"]})
    tail = f": {', '.join(owners)} drains and stops it" if owners else " (no worker runs it)"
    print(f"task {args.task}: desired stopped{tail}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from trempy_nb import reports
    from trempy_nb.metadata import MetadataStore
    from trempy_nb.store import status_frame

    store = MetadataStore()
    rows = store.fleet_status(args.task)
    if args.json:
        sys.stdout.write(json.dumps([reports.plain(r) for r in rows], indent=2, ensure_ascii=False) + "\n")
        return 0
    sys.stdout.write(reports.table_text(status_frame(rows)) + "\n")
    workers = store.workers()
    if workers and not args.task:
        listed = ", ".join(
            f"{w['name']} ({w['host']}, pid {w['pid']}, {'alive' if w['alive'] else 'dead'},"
            f" heartbeat {w['heartbeat_age_s']:.1f} s ago)"
            for w in workers
        )
        sys.stdout.write(f"\nworkers: {listed}\n")
    return 0
