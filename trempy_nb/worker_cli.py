"""`trempy-nb worker`: the long-lived fleet worker process (a CLI plug-in, see `cli.PLUGINS`).

Exit codes: 0 after a drain (SIGTERM/SIGINT), 1 when the state store cannot be reached at start
or the `--metrics-port` cannot be bound (one masked line, nothing started), 2 for bad flags or a
live worker with the same `--name`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from trempy_nb.errors import SettingsError, WorkerNameTaken
from trempy_nb.fleet.policy import Backoff, parse_roles
from trempy_nb.fleet.worker import DEFAULT_MAX_TASKS, DEFAULT_TTL_S, Worker
from trempy_nb.metadata import MetadataStore
from trempy_nb.redact import mask
from trempy_nb.task import Task


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "worker", help="run tasks from the state store: claim, run, renew leases, fail over (docs/fleet.md)")
    p.add_argument("--name", help="worker name, unique among live workers (default: HOST-PID)")
    p.add_argument("--max-tasks", type=int, default=DEFAULT_MAX_TASKS, metavar="N",
                   help=f"most (task, role) pairs held at once (default {DEFAULT_MAX_TASKS})")
    p.add_argument("--roles", default="both,producer,consumer",
                   help="what to claim: both (local transport), producer, consumer (rabbitmq)")
    p.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL_S, metavar="S",
                   help=f"lease time to live in seconds; takeover happens within it (default {DEFAULT_TTL_S:g})")
    p.add_argument("--max-failures", type=int, default=Backoff().max_failures, metavar="N",
                   help="failures in a row before a task is marked failed")
    p.add_argument("--metrics-port", type=int, metavar="P",
                   help="serve Prometheus metrics of the state store on this port (as `trempy-nb metrics`)")
    return p


def run(args: argparse.Namespace) -> int:
    # `--metadata URL` (every subcommand's, cli.store_cli) has set TREMPY_METADATA_URL by now
    try:
        roles = parse_roles(args.roles)
        backoff = Backoff(max_failures=args.max_failures)
        if args.lease_ttl <= 0 or args.max_tasks < 1:
            raise ValueError(f"--lease-ttl must be positive and --max-tasks at least 1"
                             f" (got {args.lease_ttl:g}, {args.max_tasks})")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    try:
        store = MetadataStore()
        store.workers()  # proves the store answers before anything starts
    except Exception as exc:  # noqa: BLE001 - any failure here is "unreachable": one masked line
        where = os.environ.get("TREMPY_METADATA_URL") or "the SQLite store under $TREMPY_HOME"
        reason = (mask(str(exc)).splitlines() or [type(exc).__name__])[0]
        if "unreachable" not in reason:
            reason = f"state store unreachable ({mask(where)}): {reason}"
        print(f"trempy-nb: error: {reason}; no worker started", file=sys.stderr)
        return 1
    worker = Worker(store, make_task=Task.from_settings, name=args.name, roles=roles,
                    max_tasks=args.max_tasks, ttl_s=args.lease_ttl, backoff=backoff)
    metrics = _serve_metrics(store, args.metrics_port) if args.metrics_port else None  # fails before anything starts
    try:
        try:
            worker.register()
        except WorkerNameTaken as exc:
            print(f"trempy-nb: error: {mask(str(exc))}", file=sys.stderr)
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker.request_drain())
        return worker.run()
    finally:
        if metrics is not None:
            metrics.shutdown()


def _serve_metrics(store: Any, port: int) -> Any:
    """`ops.metrics.serve` on `port` (a port that cannot be bound: MetricsPortInUse, exit 1)."""
    # lazy: start-up speed (prometheus_client loads only for a worker that serves metrics; this
    # module is imported by every plug-in command)
    from trempy_nb.ops.metrics import serve

    server = serve(store, port)
    print(f"metrics on http://0.0.0.0:{port}/metrics", flush=True)
    return server
