"""`trempy-nb`: headless runs, validation, schema, demo, reports (runs, stats, errors, history), connections,
the fleet's submit/stop/status (`--metadata URL` on every subcommand names the state store).

Exit codes: 0 success, 2 invalid settings (message on stderr), 1 runtime
failure. No traceback unless --debug; no password ever printed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import signal
import sys
from collections.abc import Callable, Sequence

from trempy_nb import __version__, lifecycle_cli, reports_cli, store_cli
from trempy_nb.connections import mask
from trempy_nb.errors import SettingsError, TrempyError, UnknownTable, UnknownTask
from trempy_nb.ops import cli as ops_cli


def _cmd_schema(args: argparse.Namespace) -> int:
    from trempy_nb.settings import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from trempy_nb.task import Task

    task = Task.from_settings(args.settings)
    task.validate()
    print(f"{task.name}: valid ({len(task.settings.tables)} table(s), {task.settings.task.replication_type},"
          f" {task.settings.task.cdc_settings.mode})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from trempy_nb.task import Task

    task = Task.from_settings(args.settings)
    if args.start_mode:
        task.settings.task.start_mode = args.start_mode
    if args.role:
        from trempy_nb.engine.runner import run_role

        return run_role(task, args.role, until_caught_up=args.until_caught_up, progress=not args.quiet)
    if task.settings.task.replication_type != "full_load" and not args.until_caught_up:
        from trempy_nb.engine.runner import run_forever

        result = run_forever(task, progress=not args.quiet)
    else:
        result = task.run(until_caught_up=True, progress=not args.quiet)
    print(result)
    return 0


def _cmd_drop(args: argparse.Namespace) -> int:
    if args.orphans:
        if args.task:
            raise SettingsError("drop: give a TASK or --orphans --source SOURCE, not both")
        return ops_cli.cmd_drop_orphans(args)
    if not args.task:
        raise SettingsError("drop: give a TASK (name or settings file), or --orphans --source SOURCE")
    from trempy_nb.engine.runner import drop_task_by_name

    drop_task_by_name(args.task, source=args.source, target=args.target)
    print(f"dropped task {args.task}: slot, publication, state")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from trempy_nb.demo import run_demo

    return run_demo(rows=args.rows, keep=args.keep)


#: Subcommands defined here; the others plug in from their feature's module.
CORE_COMMANDS = ("schema", "validate", "run", "drop", "demo", "runs", "stats", "errors", "history",
                 *store_cli.COMMANDS, *ops_cli.COMMANDS, *lifecycle_cli.COMMANDS)


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `plugins=False` leaves out the plugged-in subcommands (start-up speed:
    their modules import the notebook, AI and widget stacks, which a core command never uses)."""
    p = argparse.ArgumentParser(prog="trempy-nb", description="PostgreSQL full load and change data capture, upsert or SCD2.")
    p.add_argument("--version", action="version", version=f"trempy-nb {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("schema", help="print the JSON Schema of the task settings")
    s.set_defaults(func=_cmd_schema)

    s = sub.add_parser("validate", help="validate a settings file against the live source")
    s.add_argument("settings", help="settings file (.json or .yaml)")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("run", help="run a task (full load; CDC until SIGINT/SIGTERM or --until-caught-up)")
    s.add_argument("settings", help="settings file (.json or .yaml)")
    s.add_argument("--until-caught-up", action="store_true", help="apply every change committed before the start, then exit 0")
    s.add_argument("--start-mode", choices=["reload", "continue"], help="override task.start_mode")
    s.add_argument("--role", choices=["producer", "consumer"], help="rabbitmq transport: run one side only")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("drop", help="remove a task's slot, publication, broker objects and state;"
                       " --orphans: the source's orphaned trempy slots")
    s.add_argument("task", nargs="?", help="task name, or a settings file")
    s.add_argument("--source", help="source connection (needed when TASK is a name, and with --orphans)")
    s.add_argument("--target", help="target connection")
    s.add_argument("--orphans", action="store_true",
                   help="list the source's orphaned trempy slots (see `slots`) and drop them with their publications")
    s.add_argument("--yes", action="store_true", help="with --orphans: drop without asking")
    ops_cli.add_orphan_after(s)
    s.set_defaults(func=_cmd_drop)

    s = sub.add_parser("demo", help="replicate a sample HR database end to end on an embedded PostgreSQL")
    s.add_argument("--rows", type=int, default=300_000, help="employees to generate")
    s.add_argument("--keep", action="store_true", help="keep the embedded cluster running (prints its URI)")
    s.set_defaults(func=_cmd_demo)

    reports_cli.add_parsers(sub)  # runs, stats, errors, history (argparse only: cheap)
    store_cli.add_parsers(sub)  # submit, stop, status (argparse only: cheap)
    ops_cli.add_parsers(sub)  # slots, logs, metrics (argparse only: cheap)
    lifecycle_cli.add_parsers(sub)  # add-table, resync, pause-table, resume-table (argparse only: cheap)
    if plugins:
        for name, module in PLUGINS:
            _plug(sub, name, module)
    store_cli.add_metadata_option(p, sub)  # last: every subcommand, plug-ins included
    return p


# subcommands that live with their feature (`add_parser(subparsers)` + `run(args)`)
PLUGINS = (("ai", "trempy_nb.ai.cli"), ("diff", "trempy_nb.diff_cli"), ("notebook", "trempy_nb.notebook.cli"), ("connect", "trempy_nb.connections_cli"),
           ("worker", "trempy_nb.worker_cli"))


class PluginError(TrempyError):
    """A registered subcommand's module cannot be imported: a broken install, never skipped."""


def _plug(sub: argparse._SubParsersAction, name: str, module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(f"subcommand {name!r} cannot be loaded from {module}: {exc}") from exc
    add: Callable[..., argparse.ArgumentParser] = mod.add_parser
    parser = add(sub)
    parser.set_defaults(func=mod.run)


def main(argv: Sequence[str] | None = None) -> int:
    # Building the parser may import heavy modules (the plug-ins' subcommands; a core command
    # leaves them out): a million long-lived objects the cyclic GC would scan again and again.
    # Not collecting while they load, then freezing them out of later collections, saves ~10%
    # of a short run's startup.
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    gc.disable()
    try:
        parser = build_parser(plugins=command not in CORE_COMMANDS)
    except PluginError as exc:
        print(f"trempy-nb: error: {mask(str(exc))}", file=sys.stderr)
        return 1
    finally:
        gc.freeze()
        gc.enable()
    args = parser.parse_args(argv)
    store_cli.apply_metadata(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except TrempyError as exc:
        if args.debug:
            raise
        msg = mask(str(exc))
        bad_name = isinstance(exc, (UnknownTask, UnknownTable))
        kind = "invalid settings" if isinstance(exc, SettingsError) and not bad_name else "error"
        print(f"trempy-nb: {kind}: {msg}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a last resort: one line, masked
        if args.debug:
            raise
        print(f"trempy-nb: error: {type(exc).__name__}: {mask(str(exc)).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
