"""`trempy-nb slots`, `trempy-nb logs`, `trempy-nb metrics` and `trempy-nb drop --orphans`.

Argument parsing only at import (the parser is built on every `trempy-nb` start); the work is
in `ops.slots`, `ops.logsearch` and `ops.metrics`, imported when a command runs (start-up
speed: psycopg, polars and prometheus_client load only for these commands).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from trempy_nb.errors import SettingsError

COMMANDS = ("slots", "logs", "metrics")  # core commands: no plug-in loads for them
SINCE_HELP = "only records since: 30s, 15m, 1h, 2d, 1w, or an ISO time (2024-05-01T12:30, UTC if no zone)"


def add_parsers(subparsers: Any) -> None:
    """Register slots, logs and metrics (`drop --orphans` is an option of cli.py's drop)."""
    p = subparsers.add_parser(
        "slots", help="every replication slot of a source: WAL retained, lag, owner, orphans",
        description="Lists every replication slot of the source's cluster (trempy's and others')."
        " An orphan is a slot named like trempy's (trempy_<task>), inactive, whose task the"
        " metadata store does not know, or which is stopped with no owner and no sign of life for"
        " longer than --orphan-after. fill_eta_s: time until max_slot_wal_keep_size would"
        " invalidate the slot if it stopped advancing, at the WAL rate sampled now.",
    )
    p.add_argument("source", help="source connection: a saved name, a URI or ${VAR}")
    add_orphan_after(p)
    p.add_argument("--sample", type=float, default=1.0, metavar="SECONDS",
                   help="read pg_current_wal_lsn() twice this far apart for the WAL rate (default 1; 0: no projection)")
    p.add_argument("--json", action="store_true", help="a JSON array, one object per slot")
    p.set_defaults(func=cmd_slots)

    p = subparsers.add_parser(
        "logs", help="search the stored logs (level, text, table, time; --follow tails them)",
        description="Reads the metadata store's log records, oldest first; the newest --limit"
        " matching ones. --follow then prints new matching records as they are written"
        " (with --json: one JSON object per line).",
    )
    p.add_argument("task", nargs="?", help="only this task (default: every task)")
    p.add_argument("--level", help="this level and above: debug, info, warning, error, critical")
    p.add_argument("--grep", metavar="TEXT", help="messages containing TEXT (any case)")
    p.add_argument("--table", metavar="SCHEMA.TABLE", help="records about this table")
    p.add_argument("--since", metavar="TIME", help=SINCE_HELP)
    p.add_argument("-n", "--limit", type=int, default=200, help="at most N records (default 200)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="a JSON array of objects (ts, level, task, table, message...)")
    p.set_defaults(func=cmd_logs)

    p = subparsers.add_parser(
        "metrics", help="serve Prometheus metrics read from the metadata store",
        description="Serves /metrics (Prometheus text format) until stopped; every scrape reads"
        " the metadata store (and the tasks' slots on their sources).",
    )
    p.add_argument("--port", type=int, required=True, help="TCP port")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    p.set_defaults(func=cmd_metrics)


def add_orphan_after(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orphan-after", default="24h", metavar="AGE",
                   help="a stopped, unowned task's slot is an orphan after this long without"
                        " a sign of life: 30m, 12h, 2d (default 24h)")


def _orphan_after(text: str) -> Any:
    from trempy_nb.ops.slots import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise SettingsError(f"--orphan-after: {exc}") from None


def _store() -> Any:
    from trempy_nb.metadata import MetadataStore

    return MetadataStore()


def _source(ref: str) -> str:
    """The source URI; an unknown saved name raises SettingsError (exit 2) listing the known."""
    from trempy_nb.connections import resolve

    return resolve(ref)


# ------------------------------------------------------------------ slots


def cmd_slots(args: argparse.Namespace) -> int:
    from trempy_nb.ops import slots

    uri = _source(args.source)
    cockpit = slots.cockpit(uri, _store(), orphan_after=_orphan_after(args.orphan_after),
                            sample_s=max(0.0, args.sample))
    if args.json:
        print(json.dumps([s.record() for s in cockpit.slots], indent=2))
    else:
        print(slots.cockpit_text(cockpit))
    return 0


def cmd_drop_orphans(args: argparse.Namespace) -> int:
    """List the source's orphaned trempy slots, then drop them (asks unless --yes; without --yes
    and no terminal: list only, exit 0)."""
    from trempy_nb.ops import slots

    if not args.source:
        raise SettingsError("drop --orphans needs --source SOURCE (a saved connection name or a URI)")
    uri = _source(args.source)
    store = _store()
    after = _orphan_after(args.orphan_after)
    cockpit = slots.cockpit(uri, store, orphan_after=after, sample_s=0)
    here = [s for s in cockpit.orphans if s.database == cockpit.source_database]
    elsewhere = [s for s in cockpit.orphans if s.database != cockpit.source_database]
    if not cockpit.orphans:
        print("no orphaned trempy slots on this source")
        return 0
    for s in here:
        print(f"orphan {s.slot_name} (database {s.database}, retains {slots.human_bytes(s.retained_bytes)}): {s.orphan_reason}")
    for s in elsewhere:
        print(f"orphan {s.slot_name} is in database {s.database}: run drop --orphans against that database to drop it")
    if not here:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print("not dropped: no terminal to confirm on; pass --yes to drop them", file=sys.stderr)
            return 0
        answer = input(f"drop {len(here)} slot(s) and their publications? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("nothing dropped")
            return 0
    dropped = slots.drop_orphans(uri, store, [s.slot_name for s in here], orphan_after=after)
    for name in dropped:
        print(f"dropped slot {name} and its publication")
    kept = [s.slot_name for s in here if s.slot_name not in dropped]
    if kept:
        print(f"kept (in use or claimed since the listing): {', '.join(kept)}")
    return 0


# ------------------------------------------------------------------ logs


def cmd_logs(args: argparse.Namespace) -> int:
    from trempy_nb import reports
    from trempy_nb.ops import logsearch, retention

    store = _store()
    if args.task:
        reports.check_known(store, args.task)
    retention.prune_soon(store)
    frame = logsearch.search(store, args.task, level=args.level, grep=args.grep, table=args.table,
                             since=args.since, limit=args.limit)
    recs = logsearch.records(frame)
    if args.follow:
        out = _emit_json_line if args.json else _emit_line
        for rec in recs:
            out(rec)
        sys.stdout.flush()
        last = recs[-1]["id"] if recs else _last_id(store)
        logsearch.follow(store, args.task, out, after_id=last, level=args.level, grep=args.grep,
                         table=args.table, interval=max(0.05, args.interval))
        return 0
    if args.json:
        print(json.dumps(recs, indent=2, ensure_ascii=False, default=str))
    elif not recs:
        print("(no matching log records)")
    else:
        print("\n".join(logsearch.line(r) for r in recs))
    return 0


def _last_id(store: Any) -> int:
    """Where a --follow with nothing matching yet starts: after every record written so far."""
    from trempy_nb.ops import logsearch

    frame = logsearch.search(store, None, limit=1)
    return int(frame["id"][0]) if frame.height else 0


def _emit_line(rec: dict[str, Any]) -> None:
    from trempy_nb.ops import logsearch

    print(logsearch.line(rec), flush=True)


def _emit_json_line(rec: dict[str, Any]) -> None:
    print(json.dumps(rec, ensure_ascii=False, default=str), flush=True)


# ------------------------------------------------------------------ metrics


def cmd_metrics(args: argparse.Namespace) -> int:
    from trempy_nb.ops import metrics

    server = metrics.serve(_store(), args.port, args.host)
    print(f"serving Prometheus metrics on http://{args.host}:{args.port}/metrics (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()
