"""`trempy-nb diff SETTINGS|NAME [--table T] [--json] [--repair]`: is the target what the source says?

Exit codes: 0 equal (or every difference repaired), 3 differences found, 1 failure (the target
behind the source snapshot included), 2 bad input (invalid settings, unknown task, a table not in
the task). Without `--json`: the differing keys as an aligned table, then one summary line per
table; with it, a JSON array with one object per differing key (`table`, `target`, `key` as an
object, `kind`, `columns`) and nothing else. Imports stay light: the parser is built on every start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_DIFFERENT = 3


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "diff",
        help="compare the target with the source through the task's plan, by key (--repair fixes it)",
        description="Counts, then hashes of chunks computed in SQL on both sides, narrowed down to the"
        " keys that are missing on the target, extra on it, or different (with their columns)."
        " While the task streams, the target is compared once it has caught up with the source"
        " snapshot. Exit 0 equal, 3 differences, 1 failure, 2 bad input.",
    )
    p.add_argument("task", help="settings file (.json, .yaml), or the name of a saved task")
    p.add_argument("--table", help="one table of the task: source or target, schema.table or table")
    p.add_argument("--json", action="store_true", help="a JSON array, one object per differing key")
    p.add_argument("--repair", action="store_true",
                   help="fix the differing keys on the target, one transaction per chunk (logged)")
    p.add_argument("--chunk-rows", type=int, help="rows per chunk (default 50000)")
    p.add_argument("--wait", type=float,
                   help="seconds to wait for a streaming task's target to catch up (default 60)")
    return p


def _settings(ref: str) -> Any:
    # lazy imports: start-up speed
    from trempy_nb.reports_cli import is_settings_file
    from trempy_nb.settings import parse_settings

    if is_settings_file(ref):
        return parse_settings(Path(ref))
    from trempy_nb.metadata import MetadataStore

    return parse_settings(MetadataStore().load_task(ref))


def run(args: argparse.Namespace) -> int:
    from trempy_nb import reports
    from trempy_nb.errors import SettingsError
    from trempy_nb.reconcile.chunks import frame, records
    from trempy_nb.task import Task

    if args.chunk_rows is not None and args.chunk_rows <= 0:
        raise SettingsError(f"--chunk-rows must be a positive number, not {args.chunk_rows}")
    task = Task(_settings(args.task))
    tables = task.diff_tables(args.table, repair=args.repair, chunk_rows=args.chunk_rows, wait=args.wait)
    if args.json:
        sys.stdout.write(json.dumps(reports.plain(records(tables)), indent=2, ensure_ascii=False) + "\n")
    else:
        found = frame(tables)
        if found.height:
            sys.stdout.write(reports.table_text(found) + "\n")
        for t in tables:
            sys.stdout.write(t.summary() + "\n")
    left = sum(len(t.rows) - t.repaired for t in tables)
    return EXIT_DIFFERENT if left > 0 else 0
