"""`trempy-nb notebook run NB.ipynb -p task settings.json [-p until_caught_up true] [-o out.ipynb]`.

Executes a notebook unattended with papermill (nbclient underneath), writes the
executed copy, and exits 0 when every cell succeeded, 1 when the job failed
(the failing cell's one-line error on stderr), 2 for bad arguments. Safe to
re-run: each run writes its own output file unless -o says where. Parameters
are plain values (connection names and file paths), never secrets; the
executed notebook's text outputs are masked once more before they are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from trempy_nb.connections import home, mask


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("notebook", help="run a notebook unattended (scheduled jobs)")
    sub = p.add_subparsers(dest="notebook_command", metavar="ACTION")
    sub.required = True
    r = sub.add_parser(
        "run", help="execute a notebook with parameters; non-zero exit when it fails"
    )
    r.add_argument("notebook", help="the .ipynb to execute")
    r.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a papermill parameter (values read as YAML: true, 3, 1.5, text)",
    )
    r.add_argument(
        "-o", "--output", help="executed notebook (default: $TREMPY_HOME/runs/<name>-<time>.ipynb)"
    )
    r.add_argument("--kernel", help="kernel name (default: the notebook's)")
    r.add_argument("--cwd", help="working directory of the kernel (default: the notebook's folder)")
    r.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    r.add_argument("--log-output", action="store_true", help="stream cell output to stderr")
    return p


def _value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float, str)) or value is None else text


def _mask_outputs(path: Path) -> None:
    """Mask every text output of an executed notebook in place (defence in depth)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            for key in ("text", "evalue"):
                if key in out:
                    old = out[key]
                    new = [mask(x) for x in old] if isinstance(old, list) else mask(old)
                    changed |= new != old
                    out[key] = new
            if "traceback" in out:
                out["traceback"] = [mask(x) for x in out["traceback"]]
            for mime, data in out.get("data", {}).items():
                if mime.startswith("text/"):
                    new = [mask(x) for x in data] if isinstance(data, list) else mask(data)
                    changed |= new != data
                    out["data"][mime] = new
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _failure(path: Path, exc: BaseException) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    where = f" in cell [{cell}]" if cell else ""
    first = next((ln for ln in str(evalue).splitlines() if ln.strip()), "")
    return mask(f"job failed{where}: {ename}: {first} (executed notebook: {path})")


def run(args: argparse.Namespace) -> int:
    nb = Path(args.notebook)
    if not nb.is_file():
        print(f"trempy-nb notebook: no such notebook: {nb}", file=sys.stderr)
        return 2
    params = {name: _value(value) for name, value in args.parameter}
    if args.output:
        out = Path(args.output)
    else:
        out = (
            home()
            / "runs"
            / f"{nb.stem}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1000:03d}.ipynb"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    import papermill as pm

    cwd = args.cwd or str(nb.resolve().parent)
    kwargs: dict[str, Any] = {
        "parameters": params,
        "cwd": cwd,
        "progress_bar": False,
        "log_output": bool(args.log_output),
        "request_save_on_cell_execute": True,
    }
    if args.kernel:
        kwargs["kernel_name"] = args.kernel
    if args.timeout:
        kwargs["execution_timeout"] = args.timeout
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(out), **kwargs)
    except pm.PapermillExecutionError as exc:
        if out.exists():
            _mask_outputs(out)
        print(f"trempy-nb notebook: {_failure(out, exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # kernel died, missing kernel, bad notebook...
        if out.exists():
            _mask_outputs(out)
        print(
            f"trempy-nb notebook: job failed: {type(exc).__name__}: {mask(str(exc)).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    _mask_outputs(out)
    print(f"{nb.name}: succeeded in {time.perf_counter() - t0:.1f}s; executed notebook: {out}")
    return 0
