"""`%trempy` / `%%trempy`: a thin router from a verb to one small function each.

The functions under the verbs live in `trempy_nb.notebook.commands` and call
the public Python API only. Domain errors become one short, masked line at
this edge, and are still raised so a failing cell fails papermill and nbmake.

Over 800 lines on purpose: it is one table of verbs with their argument
parsers and help, read top to bottom; each verb's work lives in `commands/`.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.display import display
from traitlets import Bool, CaselessStrEnum, Float, Int, TraitError, Unicode, observe, validate

from trempy_nb.connections import has_literal_password, mask
from trempy_nb.errors import TrempyError
from trempy_nb.notebook import commands as cmd
from trempy_nb.notebook.config import apply_metadata_url, detect_headless, file_config
from trempy_nb.notebook.render import KeyValues, Note, RunView, one_line
from trempy_nb.ops import logsearch
from trempy_nb.store import ENV_VAR as METADATA_ENV
from trempy_nb.writer.history import TIME_FORMS, parse_time


class TrempyMagicError(Exception):
    """A `%trempy` failure: one masked line, no traceback (IPython uses `_render_traceback_`)."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mtrempy: {self}\x1b[0m"]


class TrempyInternalError(Exception):
    """An unexpected exception inside a magic: a bug to report, so its traceback is shown,
    masked (the message too: it is what a saved notebook records as the error value)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"internal error, please report it with the traceback: {one_line(exc)}")
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.lines = mask(text).rstrip().splitlines()

    def _render_traceback_(self) -> list[str]:
        return [*self.lines, f"\x1b[0;31mtrempy: {self}\x1b[0m"]


def is_known(exc: BaseException) -> bool:
    """An error the tool raises on purpose (settings, connection, slot, data) or expects
    (a wait that timed out): one short line is all a user needs."""
    return isinstance(exc, (TrempyError, TimeoutError))


class _HelpShown(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise TrempyMagicError(f"{self.prog}: {message} (usage: {self.format_usage().strip()[7:]})")

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr)
        raise _HelpShown()


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    args: Callable[[argparse.ArgumentParser], None]
    cell: bool = False
    example: str = ""


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="task name")


def _a_connect(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="connection name")
    p.add_argument(
        "uri",
        help="postgresql:// URI; write the password as ${VAR} to read it from the environment",
    )
    p.add_argument("--no-test", action="store_true", help="save without connecting first")


def _a_tables(p: argparse.ArgumentParser) -> None:
    p.add_argument("connection")
    p.add_argument("schema", nargs="?")


def _a_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("connection")
    p.add_argument("table", help="schema.table (or a table name found in one schema)")


def _a_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="task name (overrides task.task_name of the body)")
    p.add_argument(
        "--no-validate", action="store_true", help="skip the check against the live source"
    )
    p.add_argument("--no-save", action="store_true", help="keep it in this session only")


def _a_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="settings file (.json, .yaml)")
    p.add_argument("--name", help="task name (overrides task.task_name)")
    p.add_argument("--no-validate", action="store_true")


def _a_preview(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument(
        "table", nargs="?", help="source schema.table, table name or target schema.table"
    )
    p.add_argument("--limit", "-n", type=int, help="rows (default: Trempy.preview_limit)")


def _a_preview_changes(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--limit", "-n", type=int)


def _a_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--wait", action="store_true", help="block until done; raise if the run fails")
    p.add_argument(
        "--until-caught-up",
        action="store_true",
        help="apply the changes committed before now, then stop",
    )
    p.add_argument("--no-dashboard", action="store_true", help="no live dashboard")
    p.add_argument(
        "--timeout", type=float, help="with --wait: stop and fail after this many seconds"
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="run on a worker, outliving this kernel (starts a local worker if none is alive)",
    )
    p.add_argument("--replace", action="store_true", help="with --detach: replace a running task's settings")


def _a_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?")


def _a_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument(
        "--when-caught-up",
        action="store_true",
        help="first apply every change committed at the source before now",
    )


def _a_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="only this task (default: every task)")
    p.add_argument("--level", help="this level and above: debug, info, warning, error, critical")
    p.add_argument("--grep", metavar="TEXT", help="messages containing TEXT (any case)")
    p.add_argument("--table", metavar="SCHEMA.TABLE", help="records about this table")
    p.add_argument("--since", metavar="TIME", help="30s, 15m, 1h, 2d, 1w, or an ISO time (UTC if no zone)")
    p.add_argument("--limit", "-n", type=int, default=200, help="at most N records (default 200)")
    p.add_argument("--follow", "-f", action="store_true", help="print new records as they are written")
    p.add_argument("--timeout", type=float, help="with --follow: stop after this many seconds")
    p.add_argument("--json", action="store_true", help="a list of JSON-ready records")


def _a_slots(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="source connection: a saved name, a URI or ${VAR}")
    p.add_argument("--orphan-after", default="24h", metavar="AGE", help="30m, 12h, 2d (default 24h)")
    p.add_argument("--sample", type=float, default=1.0, metavar="SECONDS",
                   help="WAL-rate sample for the fill projection (default 1; 0: none)")


def _a_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one task (default: the fleet view of every task)")


def _a_errors(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--table", help="only this table (source or target, schema.table or table)")
    p.add_argument("--limit", "-n", type=int, help="only the latest N errors")


def _a_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--table", help="only this table (source or target, schema.table or table)")


def _a_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--limit", "-n", type=int, help="only the latest N runs")


def _a_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("table", help="source or target table of the task")
    p.add_argument("key", nargs="+", metavar="COLUMN=VALUE")


def _a_as_of(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("ts", metavar="TIME", help=f"when: {TIME_FORMS}")
    p.add_argument("--table", "-t", help="source or target table (default: the task's first)")
    p.add_argument(
        "--limit", "-n", type=int, help="rows (default: all when assigned, else displaylimit)"
    )


def _a_changes(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--since", required=True, metavar="TIME", help=f"from: {TIME_FORMS}")
    p.add_argument("--until", metavar="TIME", help="to (default: now)")
    p.add_argument("--table", "-t", help="source or target table (default: the task's first)")
    p.add_argument(
        "--limit", "-n", type=int, help="rows (default: all when assigned, else displaylimit)"
    )


def _a_diff(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--table", help="one table of the task (default: every table)")
    p.add_argument("--repair", action="store_true", help="fix the differing keys on the target")


def _a_table_action(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="task name")
    p.add_argument("table", help="schema.table (a bare name means public.name)")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="wait up to S seconds for the task's owner to finish (0: do not wait)")


def _a_resync(p: argparse.ArgumentParser) -> None:
    _a_table_action(p)
    p.add_argument("--baseline", action="store_true",
                   help="SCD2: rebuild as a new baseline (truncate + load) instead of appending to the history")


def _a_connections(p: argparse.ArgumentParser) -> None:
    p.add_argument("--form", action="store_true", help="the form, even without a widgets front end")
    p.add_argument("--list", action="store_true", help="the frame of saved connections only")


def _a_delete_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="connection name")


def _a_builder(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="edit this task (or start a new one with this name)")
    p.add_argument("--source", help="source connection for a new task")
    p.add_argument("--target", help="target connection for a new task")


def _a_ai(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="task name")
    p.add_argument("prompt", nargs="*", help="what to replicate, in a sentence (or the cell body)")
    p.add_argument("--source", required=True, help="source connection")
    p.add_argument("--target", required=True, help="target connection")
    p.add_argument("--no-builder", action="store_true", help="show the settings, not the builder")


VERBS: dict[str, Verb] = {
    v.name: v
    for v in [
        Verb(
            "connect",
            "save a connection (password encrypted, never echoed)",
            _a_connect,
            example="%trempy connect hr postgresql://app:${HR_PASSWORD}@db:5432/hr",
        ),
        Verb(
            "connections",
            "manage saved connections in a form (list, add, edit, test, delete)",
            _a_connections,
            example="%trempy connections",
        ),
        Verb(
            "delete-connection",
            "forget a saved connection",
            _a_delete_connection,
            example="%trempy delete-connection old_hr",
        ),
        Verb("tables", "tables of a connection", _a_tables, example="%trempy tables hr employees"),
        Verb(
            "columns",
            "columns of a table, with types and key",
            _a_columns,
            example="%trempy columns hr employees.employee",
        ),
        Verb(
            "task",
            "define (cell body: YAML or JSON) or show a task",
            _a_task,
            cell=True,
            example="%%trempy task hr_to_dw\\n{ ...settings... }",
        ),
        Verb("tasks", "tasks of this session and saved ones", _no_args),
        Verb(
            "load", "load a settings file as a task", _a_load, example="%trempy load settings.json"
        ),
        Verb("validate", "check a task against the live source", _name),
        Verb(
            "preview",
            "the transformed rows a run would write",
            _a_preview,
            example="df = %trempy preview hr_to_dw employees.employee --limit 50",
        ),
        Verb(
            "preview-changes", "pending CDC changes, transformed, not consumed", _a_preview_changes
        ),
        Verb(
            "run",
            "start the runner with a live dashboard (--wait blocks, raises on failure)",
            _a_run,
            example="%trempy run hr_to_dw --wait --until-caught-up",
        ),
        Verb("status", "this kernel's runners and every task of the state store (or one task)", _a_status),
        Verb("stats", "per-table counters of a task's runs", _a_stats),
        Verb("stop", "stop a runner after its current batch (elsewhere: desired stopped in the state store)", _a_stop),
        Verb("errors", "rows that failed and were recorded", _a_errors),
        Verb("dead-letters", "batches given up after max_retries", _name),
        Verb(
            "replay-dead-letters",
            "put the dead letters back on the queue once the cause is fixed (rabbitmq)",
            _name,
            example="%trempy replay-dead-letters hr_to_dw",
        ),
        Verb(
            "logs",
            "search the stored logs (level, text, table, time; --follow tails)",
            _a_logs,
            example="%trempy logs hr_to_dw --level warning --since 1h",
        ),
        Verb(
            "slots",
            "every replication slot of a source: WAL retained, lag, owner, orphans",
            _a_slots,
            example="%trempy slots hr",
        ),
        Verb(
            "dashboard",
            "the fleet view (every task of the store), or one task's live panel",
            _a_dashboard,
            example="%trempy dashboard",
        ),
        Verb("runs", "the task's runs", _a_runs),
        Verb(
            "history",
            "SCD2 versions of one key",
            _a_history,
            example="%trempy history hr_to_dw employees.employee id=42",
        ),
        Verb(
            "as-of",
            "an SCD2 target table as it was at a time",
            _a_as_of,
            example="df = %trempy as-of hr_to_dw 2024-05-01 --table dim_employee",
        ),
        Verb(
            "changes",
            "keys that changed in an SCD2 target between two times, before and after",
            _a_changes,
            example="%trempy changes hr_to_dw --since -1d",
        ),
        Verb(
            "diff",
            "compare the target with the source through the plan, by key (--repair fixes it)",
            _a_diff,
            example="%trempy diff hr_to_dw --table employees.employee",
        ),
        Verb(
            "add-table",
            "add a table to a running task: loaded in step with its stream, then streamed",
            _a_table_action,
            example="%trempy add-table hr_to_dw employees.contract",
        ),
        Verb(
            "resync",
            "reload one table from a fresh snapshot while the others stream",
            _a_resync,
            example="%trempy resync hr_to_dw employees.employee --baseline",
        ),
        Verb("pause-table", "hold one table's changes on the target, in order", _a_table_action,
             example="%trempy pause-table hr_to_dw employees.employee"),
        Verb("resume-table", "apply a paused table's held changes in order, then stream it", _a_table_action,
             example="%trempy resume-table hr_to_dw employees.employee"),
        Verb("table-states", "each table's lifecycle state and last diff", _name,
             example="%trempy table-states hr_to_dw"),
        Verb("drop", "stop, remove slot, publication and state", _name),
        Verb("builder", "the widget task builder", _a_builder, example="%trempy builder hr_to_dw"),
        Verb(
            "ai",
            "draft a task from a sentence, open it in the builder",
            _a_ai,
            cell=True,
            example='%trempy ai hr_to_dw "employees with salary > 5000 into SCD2" --source hr --target dw',
        ),
        Verb("config", "current options and where they came from", _no_args),
    ]
}


def verbs_text() -> str:
    width = max(len(v) for v in VERBS)
    return "\n".join(f"  {v.name.ljust(width)}  {v.summary}" for v in VERBS.values())


HELP_HEAD = """%trempy VERB [ARGS]  /  %%trempy task [NAME] (cell body: YAML or JSON settings)

PostgreSQL full load and change data capture into upsert or SCD2 targets.
`%trempy VERB --help` describes one verb. `{var}` is replaced by a variable of
the notebook (in arguments and cell bodies; `${VAR}` is left for the
environment). Known errors (settings, connection, slot, data) are one line and
fail the cell; an unexpected error shows its traceback, passwords masked
(`%config Trempy.short_errors = False` raises every error as it is). A trailing
`;` silences output; the result is also in `_`.

Verbs:
"""

HELP_TAIL = """
Examples:
  %load_ext trempy_nb
  %trempy connect hr postgresql://app:${HR_PASSWORD}@localhost/hr
  %trempy tables hr employees
  %%trempy task hr_to_dw
  task: {task_name: hr_to_dw, source: hr, target: dw, replication_type: full_load_and_cdc,
         cdc_settings: {mode: scd2}}
  tables: [{schema_name: employees, table_name: employee}]
  filters: [{schema_name: employees, table_name: employee, column_name: salary,
             filter_type: greater_than, value: {min_salary}}]
  df = %trempy preview hr_to_dw --limit 10
  %trempy run hr_to_dw
  %trempy history hr_to_dw employees.employee id=42
  df = %trempy as-of hr_to_dw -1d
  %trempy changes hr_to_dw --since 2024-05-01 --until 2024-05-02
  %trempy stop hr_to_dw
Options (%config Trempy.<name> = value; also [tool.trempy_nb] in pyproject.toml
or $TREMPY_HOME/config): preview_limit, displaylimit, short_errors, dashboard,
dashboard_interval, progress_interval, headless, save_tasks, settings_dir,
warn_inline_passwords.
"""


class Help:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.text)}</pre>"


_NAME_RE = re.compile(r"(?<![$\\{])\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")
_RELATIVE_ARG = re.compile(r"^-\d+(\.\d+)?[smhdwSMHDW]$")




class AutoBool(CaselessStrEnum):  # type: ignore[type-arg]
    """'auto', 'true' or 'false' (any case); a Python bool (`= True`, TOML `true`) counts too."""

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, bool):
            value = "true" if value else "false"
        return super().validate(obj, value)


@magics_class
class Trempy(Magics):
    """PostgreSQL change data capture from the notebook (see `%trempy --help`)."""

    preview_limit = Int(20, help="rows shown by %trempy preview").tag(config=True)
    displaylimit = Int(
        50, help="rows that as-of and changes fetch when their result is shown, not assigned"
    ).tag(config=True)
    short_errors = Bool(
        True, help="known errors in one line (False: every error raised as it is)"
    ).tag(config=True)
    dashboard = Bool(True, help="show the live dashboard when a run starts").tag(config=True)
    dashboard_interval = Float(0.5, help="seconds between dashboard refreshes").tag(config=True)
    progress_interval = Float(10.0, help="headless --wait: seconds between progress lines").tag(
        config=True
    )
    headless = AutoBool(
        ["auto", "true", "false"],
        "auto",
        help="auto, true or false: print text progress instead of widgets",
    ).tag(config=True)
    save_tasks = Bool(True, help="keep tasks in $TREMPY_HOME as well as in the session").tag(
        config=True
    )
    settings_dir = Unicode(
        "", help="where the builder's Save writes settings files (default: cwd)"
    ).tag(config=True)
    warn_inline_passwords = Bool(True, help="warn once when a cell holds a literal password").tag(
        config=True
    )

    metadata_url = Unicode(
        "", help="state store: a postgresql:// URL or a saved connection name (default: $TREMPY_METADATA_URL,"
        " else SQLite in $TREMPY_HOME)"
    ).tag(config=True)

    @observe("metadata_url")
    def _metadata_url_changed(self, change: Any) -> None:
        apply_metadata_url(change["new"], METADATA_ENV)

    @validate("displaylimit", "preview_limit")
    def _check_positive(self, proposal: Any) -> int:
        if proposal["value"] <= 0:
            raise TraitError(f"{proposal['trait'].name} must be a positive number of rows")
        return int(proposal["value"])

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        values, self.config_sources = file_config()
        set_by_ipython = (
            set(getattr(shell, "config", {}).get("Trempy", {})) if shell is not None else set()
        )
        for key, value in values.items():
            if key in set_by_ipython:
                continue
            if not self.has_trait(key) or key in ("config", "parent", "shell"):
                print(
                    f"trempy: ignoring unknown option {key!r} in {', '.join(self.config_sources)}",
                    file=sys.stderr,
                )
                continue
            try:
                setattr(self, key, value)
            except Exception as exc:
                print(f"trempy: ignoring option {key}={value!r}: {one_line(exc)}", file=sys.stderr)

    # ------------------------------------------------------------------ entry point
    @no_var_expand
    @line_cell_magic
    def trempy(self, line: str = "", cell: str | None = None) -> Any:
        """Run `%trempy --help` for the verbs."""
        try:
            return self._dispatch(line, cell)
        except _HelpShown:
            return None
        except TrempyMagicError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if not self.short_errors:
                raise
            if is_known(exc):
                raise TrempyMagicError(one_line(exc)) from None
            raise TrempyInternalError(exc) from None

    def _dispatch(self, line: str, cell: str | None) -> Any:
        line = line.strip()
        quiet = line.endswith(";")
        if quiet:
            line = line[:-1].rstrip()
        try:
            raw_tokens = shlex.split(line)
        except ValueError as exc:
            raise TrempyMagicError(f"cannot read the arguments: {exc}") from None
        if not raw_tokens:
            if cell is not None:
                raise TrempyMagicError("a %%trempy cell needs a verb: %%trempy task NAME")
            return Help("%trempy VERB [ARGS]; verbs:\n" + verbs_text())
        verb_name, raw_args = raw_tokens[0], raw_tokens[1:]
        if verb_name in ("-h", "--help", "help"):
            return Help(HELP_HEAD + verbs_text() + "\n" + HELP_TAIL)
        verb = VERBS.get(verb_name)
        if verb is None:
            raise TrempyMagicError(
                f"unknown verb {verb_name!r}; verbs: {', '.join(VERBS)} (%trempy --help)"
            )
        if cell is not None and not verb.cell:
            raise TrempyMagicError(
                f"%%trempy {verb_name} takes no cell body (cell verbs: task, ai)"
            )
        self._typed: dict[str, Any] = {}
        # a token that is exactly {var} and expands to nothing is dropped (optional flags)
        args_tokens = [
            e for t in raw_args if (e := self._expand_token(t)) != "" or not _NAME_RE.fullmatch(t)
        ]
        if verb.name in ("as-of", "changes"):
            # "-1d" would read as an option: a leading space keeps it a value (parse_time strips it)
            args_tokens = [" " + t if _RELATIVE_ARG.match(t) else t for t in args_tokens]
        parser = _Parser(
            prog=f"%trempy {verb.name}",
            description=verb.summary,
            epilog=f"example: {verb.example}" if verb.example else None,
        )
        verb.args(parser)
        args = parser.parse_args(args_tokens)
        handler = getattr(self, "_v_" + verb.name.replace("-", "_"))
        result = handler(args, cell, raw_args, quiet)
        if quiet:
            if self.shell is not None and result is not None:
                self.shell.user_ns["_"] = result
            return None
        return result

    # ------------------------------------------------------------------ {var} expansion
    def _lookup(self, dotted: str) -> tuple[bool, Any]:
        ns = self.shell.user_ns if self.shell is not None else {}
        head, *rest = dotted.split(".")
        if head not in ns:
            return False, None
        value = ns[head]
        for attr in rest:
            if not hasattr(value, attr):
                return False, None
            value = getattr(value, attr)
        return True, value

    def _expand_token(self, token: str) -> str:
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=" + _NAME_RE.pattern, token)
        if m:
            found, value = self._lookup(m.group(2))
            if found:
                self._typed[m.group(1)] = value
        return _NAME_RE.sub(lambda mm: self._sub_text(mm), token)

    def _sub_text(self, m: re.Match[str]) -> str:
        found, value = self._lookup(m.group(1))
        return str(value) if found else m.group(0)

    def expand_body(self, body: str) -> str:
        """`{var}` in a YAML/JSON body: a typed JSON scalar where it stands alone, text inside strings."""
        import json

        def sub(m: re.Match[str]) -> str:
            found, value = self._lookup(m.group(1))
            if not found:
                return m.group(0)
            start, end = m.span()
            before = body[start - 1] if start > 0 else ""
            after = body[end] if end < len(body) else ""
            quoted = before in "\"'" and after == before
            inside = before.isalnum() or after.isalnum() or before in "_-/." or after in "_-/."
            if inside and not quoted:
                return json.dumps(str(value))[1:-1]
            if quoted:  # "{var}" -> keep the quotes, insert the text
                return (
                    json.dumps(str(value))[1:-1] if before == '"' else str(value).replace("'", "''")
                )
            try:
                return json.dumps(value)
            except TypeError:
                return json.dumps(str(value))

        return _NAME_RE.sub(sub, body)

    # ------------------------------------------------------------------ display helpers
    def _show(self, obj: Any, quiet: bool) -> None:
        if not quiet:
            display(obj)

    def _is_headless(self) -> bool:
        if self.headless == "true":
            return True
        if self.headless == "false":
            return False
        return detect_headless()

    def _assigned(self, verb: str) -> bool:
        """Whether the running cell assigns this verb's result (`df = %trempy as-of ...`).

        Only what a cell shows is bounded by `displaylimit`; an assignment, or a call the
        cell text does not show (`run_line_magic` from code), gets the whole result.
        """
        hook = getattr(self.shell, "displayhook", None)
        info = getattr(getattr(hook, "exec_result", None), "info", None)
        cell = getattr(info, "raw_cell", None)
        pattern = rf"%trempy\s+{re.escape(verb)}\b"
        if not cell or not re.search(pattern, cell):
            return True
        return bool(re.search(rf"^[^#\n]*[\w\]]\s*=\s*{pattern}", cell, re.MULTILINE))

    def _warn_inline_password(self) -> None:
        """Once per loaded extension (a notebook session), not once per process."""
        if getattr(self, "_warned_inline", False):
            return
        self._warned_inline = True
        print(
            "trempy: warning: a password is written in this cell; it is stored encrypted and never shown,"
            " but the notebook file keeps it. Write it as ${VAR} (read from the environment),"
            " pass it in a {variable}, or use a saved connection name.",
            file=sys.stderr,
        )

    # ------------------------------------------------------------------ verbs
    def _v_connect(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        raw_uri = raw[1] if len(raw) > 1 else ""
        inline = has_literal_password(raw_uri)
        if self.warn_inline_passwords and inline:
            self._warn_inline_password()
        note = cmd.connect(a.name, a.uri, test=not a.no_test)
        if inline:
            print(
                "trempy: hint: `%trempy connections` (a password field) or ${VAR} in the URI"
                " keeps the password out of the notebook file",
                file=sys.stderr,
            )
        return note

    def _v_connections(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        if a.list or (not a.form and self._is_headless()):
            return cmd.connections()
        from trempy_nb.notebook.connections_form import ConnectionsForm

        return ConnectionsForm()

    def _v_delete_connection(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.delete_connection(a.name)

    def _v_tables(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.tables(a.connection, a.schema)

    def _v_columns(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.columns(a.connection, a.table)

    def _v_task(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        if cell is None:
            if not a.name:
                return cmd.list_tasks()
            return cmd.show_task(a.name)
        if not cell.strip():
            raise TrempyMagicError(
                "the %%trempy task cell is empty: write the settings as YAML or JSON"
            )
        from trempy_nb.notebook.commands.tasks import literal_password_refs

        task = cmd.define_task(
            self.expand_body(cell),
            a.name,
            validate=not a.no_validate,
            save=self.save_tasks and not a.no_save,
        )
        if self.warn_inline_passwords and literal_password_refs(task):
            t = task.settings.task
            if any(ref in cell for ref in (t.source, t.target) if has_literal_password(ref)):
                self._warn_inline_password()
        checked = "validated against the source" if not a.no_validate else "not validated"
        return Note(
            f"task {task.name} ready ({checked}; {len(task.settings.tables)} table(s))", "ok"
        )

    def _v_tasks(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.list_tasks()

    def _v_load(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        task = cmd.load_task(a.path, a.name, validate=not a.no_validate)
        return Note(f"task {task.name} loaded from {a.path}", "ok")

    def _v_validate(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.validate(a.name)

    def _v_preview(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        from trempy_nb.notebook.commands.tasks import preview_caption

        limit = a.limit if a.limit is not None else self.preview_limit
        if limit <= 0:
            raise TrempyMagicError("--limit must be a positive number")
        frame = cmd.preview(a.name, a.table, limit)
        self._show(Note(preview_caption(a.name, a.table, frame, limit)), quiet)
        return frame

    def _v_preview_changes(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        limit = a.limit if a.limit is not None else self.preview_limit
        frame = cmd.preview_changes(a.name, limit)
        self._show(Note(f"{frame.height} pending change(s) of task {a.name} (not consumed)"), quiet)
        return frame

    def _v_run(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        from trempy_nb.notebook.commands.runs import start, submit, wait

        if a.detach:
            if a.wait or a.until_caught_up:
                raise TrempyMagicError("--detach runs on a worker until stopped: no --wait or --until-caught-up")
            note = submit(a.name, replace=a.replace)
            self._show(note, quiet)
            return note
        from trempy_nb.notebook.dashboard import Dashboard

        headless = self._is_headless()
        runner = start(a.name, until_caught_up=a.until_caught_up)
        dash = Dashboard(
            runner, interval=self.dashboard_interval, use_widgets=None if not headless else False
        )
        old = cmd.SESSION.dashboards.pop(a.name, None)
        if old is not None:
            old.close()
        cmd.SESSION.dashboards[a.name] = dash
        show_live = self.dashboard and not a.no_dashboard and not headless
        if show_live:
            dash.start()
        if not a.wait:
            return dash
        if show_live and not quiet:
            display(dash)
        echo = (lambda s: print(s, flush=True)) if headless and not quiet else None
        try:
            result = wait(runner, self.progress_interval, echo, timeout=a.timeout)
        except BaseException:
            dash.refresh(force_store=True)
            if headless and not quiet:
                print(dash.text(), flush=True)
            raise
        dash.refresh(force_store=True)
        if headless and not quiet:
            print(dash.text(), flush=True)
        return RunView(result) if result is not None else Note(f"task {a.name} stopped", "ok")

    def _v_status(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.status(a.name)

    def _v_stats(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.stats(a.name, table=a.table)

    def _v_stop(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.stop(a.name, when_caught_up=a.when_caught_up)

    def _v_errors(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.errors(a.name, table=a.table, limit=a.limit)

    def _v_dead_letters(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        frame = cmd.dead_letters(a.name)
        if frame.height == 0:
            self._show(Note(f"no dead letters for task {a.name}"), quiet)
        return frame

    def _v_replay_dead_letters(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.replay_dead_letters(a.name)

    def _v_logs(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        filters = {"level": a.level, "grep": a.grep, "table": a.table, "since": a.since, "limit": a.limit}
        if a.follow:
            cmd.follow_logs(a.name, print, timeout=a.timeout, **filters)
            return None
        frame = cmd.logs(a.name, **filters)
        return logsearch.records(frame) if a.json else frame

    def _v_slots(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.slots(a.source, orphan_after=a.orphan_after, sample=a.sample)

    def _v_dashboard(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        from trempy_nb.notebook.fleetview import FleetView, TaskPanel  # widgets: loaded when shown

        headless = self._is_headless()
        if a.name is None:
            return FleetView(use_widgets=None if not headless else False)
        return TaskPanel(a.name, use_widgets=None if not headless else False)

    def _v_runs(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.runs(a.name, limit=a.limit)

    def _v_diff(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        frame, tables = cmd.diff(a.name, a.table, repair=a.repair)
        for t in tables:
            self._show(Note(t.summary(), "ok" if t.equal or t.repaired == len(t.rows) else "warning"), quiet)
        return frame

    def _v_add_table(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.add_table(a.name, a.table, wait=a.wait or None)

    def _v_resync(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.resync(a.name, a.table, baseline=a.baseline, wait=a.wait or None)

    def _v_pause_table(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.pause_table(a.name, a.table, wait=a.wait or None)

    def _v_resume_table(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.resume_table(a.name, a.table, wait=a.wait or None)

    def _v_table_states(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.table_states(a.name)

    def _v_history(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        key: dict[str, Any] = {}
        for item in a.key:
            column, sep, value = item.partition("=")
            if not sep or not column:
                raise TrempyMagicError(f"key {item!r} is not COLUMN=VALUE")
            key[column] = self._typed.get(column, value)
        return cmd.history(a.name, a.table, key)

    def _bound(self, verb: str, limit: int | None) -> int | None:
        if limit is not None:
            if limit <= 0:
                raise TrempyMagicError("--limit must be a positive number")
            return limit
        return None if self._assigned(verb) else self.displaylimit + 1

    def _shown(self, frame: Any, limit: int | None, caption: str, quiet: bool) -> Any:
        """The caption, and the frame cut to displaylimit when more rows exist than shown."""
        more = limit == self.displaylimit + 1 and frame.height > self.displaylimit
        if more:
            frame = frame.head(self.displaylimit)
            caption += (
                f"; showing the first {self.displaylimit} (assign the result to get them all:"
                " df = %trempy ...)"
            )
        self._show(Note(caption), quiet)
        return frame

    def _v_as_of(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        limit = self._bound("as-of", a.limit)
        frame = cmd.as_of(a.name, a.ts.strip(), a.table, limit)
        when = parse_time(a.ts.strip()).isoformat(sep=" ")
        caption = f"{frame.height:,} row(s) of task {a.name} current at {when}"
        return self._shown(frame, limit, caption, quiet)

    def _v_changes(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        limit = self._bound("changes", a.limit)
        until = a.until.strip() if a.until else None
        frame = cmd.changes(a.name, a.since.strip(), until, a.table, limit)
        span = f"since {parse_time(a.since.strip()).isoformat(sep=' ')}"
        if until:
            span += f" until {parse_time(until).isoformat(sep=' ')}"
        caption = f"{frame.height:,} key(s) of task {a.name} changed {span}"
        return self._shown(frame, limit, caption, quiet)

    def _v_drop(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        return cmd.drop(a.name)

    def _v_builder(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        from trempy_nb.notebook.builder import TaskBuilder

        doc = None
        if a.name:
            try:
                doc = cmd.get_task(a.name).settings.to_dict()
            except Exception:
                doc = None
        builder = TaskBuilder(doc, name=a.name, source=a.source, target=a.target, magics=self)
        return builder

    def _v_ai(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        prompt = " ".join(a.prompt).strip()
        if cell is not None and cell.strip():
            prompt = (prompt + "\n" + self.expand_body(cell)).strip()
        if not prompt:
            raise TrempyMagicError(
                'describe the task: %trempy ai NAME "what to replicate" --source S --target T'
            )
        from trempy_nb.ai import create_task

        result = create_task(prompt, a.source, a.target, a.name)
        if not result.settings:
            raise TrempyMagicError(
                "the assistant returned no settings: " + "; ".join(result.errors)
            )
        if a.no_builder:
            from trempy_nb.notebook.render import TaskView

            if not result.ok:
                self._show(Note("still invalid: " + "; ".join(result.errors), "warning"), quiet)
            return TaskView(result.settings, "draft" if not result.ok else "valid")
        from trempy_nb.notebook.builder import TaskBuilder

        builder = TaskBuilder(result.settings, magics=self)
        if not result.ok:
            builder.show_messages(
                ["assistant draft, still invalid:", *result.errors], level="warning"
            )
        return builder

    def _v_config(self, a: Any, cell: Any, raw: list[str], quiet: bool) -> Any:
        names = sorted(n for n in self.trait_names() if self.trait_metadata(n, "config"))
        rows = [(n, repr(getattr(self, n))) for n in names]
        rows.append(("read from", ", ".join(self.config_sources) or "(defaults)"))
        return KeyValues("%trempy options (%config Trempy.<name> = value)", rows)


Trempy.trempy.__doc__ = HELP_HEAD + verbs_text() + "\n" + HELP_TAIL


def load(shell: Any) -> Trempy:
    magics = Trempy(shell=shell)
    shell.register_magics(magics)
    if magics not in shell.configurables:
        shell.configurables.append(magics)
    return magics


def unload(shell: Any) -> None:
    cmd.SESSION.clear()
    magics = shell.magics_manager.registry.get("Trempy")
    if magics is not None:
        for kind in ("line", "cell"):
            shell.magics_manager.magics[kind].pop("trempy", None)
        shell.magics_manager.registry.pop("Trempy", None)
        if magics in shell.configurables:
            shell.configurables.remove(magics)


__all__ = ["Trempy", "TrempyMagicError", "VERBS", "load", "unload", "mask"]
