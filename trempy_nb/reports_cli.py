"""`trempy-nb runs|stats|errors|history TASK`: the notebook's report verbs on the command line.

TASK is a task name (as the metadata store in $TREMPY_HOME knows it: saved from a
notebook, or run from anywhere) or a settings file (.json, .yaml). Without
`--json` a readable aligned table is printed; with it, a JSON array of objects and
nothing else (datetimes ISO-8601, decimals as strings). An unknown task name exits
with 2 and lists the known names on stderr. Every output is masked.

The work is done by `trempy_nb.reports`, the same functions the magics call; this
module only parses arguments and prints. Its own imports stay light (argparse only):
the parser is built on every `trempy-nb` start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SETTINGS_SUFFIXES = (".json", ".yaml", ".yml")

KEY_HELP = (
    "the key to show: a bare VALUE when the table has one key column (--key 42), else"
    " COLUMN=VALUE, repeated for a composite key (--key id=42 --key region=eu); any column"
    " of the target may be named; a value holding '=' is written after its column"
    " (--key code=a=b)"
)
TASK_HELP = "task name, or its settings file (.json, .yaml)"
TABLE_HELP = "one table of the task: source or target, schema.table or table"


def add_parsers(subparsers: Any) -> None:
    """Register runs, stats, errors and history."""
    p = subparsers.add_parser("runs", help="a task's runs, newest first")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("-n", "--limit", type=int, help="only the latest N runs")
    _json(p)
    p.set_defaults(func=_cmd_runs)

    p = subparsers.add_parser("stats", help="per-table counters of a task's runs")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--table", help=TABLE_HELP)
    p.add_argument("--run", dest="run_id", help="only this run (a run_id of `trempy-nb runs`)")
    _json(p)
    p.set_defaults(func=_cmd_stats)

    p = subparsers.add_parser("errors", help="rows that failed and were recorded, oldest first")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--table", help=TABLE_HELP)
    p.add_argument("-n", "--limit", type=int, help="only the latest N errors")
    _json(p)
    p.set_defaults(func=_cmd_errors)

    p = subparsers.add_parser(
        "history",
        help="the SCD2 versions of one key (an upsert target: its row), oldest first",
        description="Reads the target table. Given a task name, the target and keys come from"
        " what the task's latest run recorded in $TREMPY_HOME; given a settings file, from the"
        " file (checked against the live source).",
    )
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--key", action="append", required=True, metavar="[COLUMN=]VALUE", help=KEY_HELP)
    p.add_argument("--table", help=TABLE_HELP + " (default: the task's first table)")
    p.add_argument(
        "-n", "--limit", type=int, default=1000, help="at most N versions (default 1000)"
    )
    _json(p)
    p.set_defaults(func=_cmd_history)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="a JSON array of objects instead of a table")


def is_settings_file(text: str) -> bool:
    """A settings file rather than a task name (names are [a-z][a-z0-9_]*, so never look like paths)."""
    return Path(text).suffix.lower() in SETTINGS_SUFFIXES or "/" in text or "\\" in text


# lazy imports below: start-up speed (polars, psycopg and the store load only for these commands)


def _task(args: argparse.Namespace) -> tuple[str, Any, Any]:
    """(task name, its settings or None, the metadata store); an unknown name raises UnknownTask."""
    from trempy_nb import reports
    from trempy_nb.metadata import MetadataStore

    store = MetadataStore()
    if is_settings_file(args.task):
        from trempy_nb.settings import parse_settings

        settings = parse_settings(Path(args.task))
        return settings.name, settings, store
    reports.check_known(store, args.task)
    return args.task, None, store


def _print(frame: Any, as_json: bool, json_columns: tuple[str, ...] = ()) -> int:
    from trempy_nb import reports

    text = reports.json_text(frame, json_columns) if as_json else reports.table_text(frame)
    sys.stdout.write(text + "\n")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from trempy_nb import reports

    name, _, store = _task(args)
    return _print(reports.runs(store, name, limit=args.limit), args.json)


def _cmd_stats(args: argparse.Namespace) -> int:
    from trempy_nb import reports

    name, _, store = _task(args)
    return _print(reports.stats(store, name, table=args.table, run_id=args.run_id), args.json)


def _cmd_errors(args: argparse.Namespace) -> int:
    from trempy_nb import reports

    name, _, store = _task(args)
    frame = reports.errors(store, name, table=args.table, limit=args.limit)
    return _print(frame, args.json, json_columns=("payload",))


def _cmd_history(args: argparse.Namespace) -> int:
    from trempy_nb import reports

    name, settings, store = _task(args)
    uri = None
    if settings is not None:
        from trempy_nb.task import Task

        task = Task(settings)
        target = reports.pick_target(name, reports.targets_of(settings, task.plans), args.table)
        uri = task.target_uri
    else:
        target = reports.pick_target(name, reports.recorded_targets(store, name), args.table)
    key = reports.parse_key(args.key, target)
    return _print(reports.history(target, key, limit=args.limit, uri=uri), args.json)
