"""Where `%trempy` options come from besides `%config`: files and the environment.

`metadata_url` is applied to the environment (`apply_metadata_url`), so every store this
kernel opens, the engine's included, is the one it names.

Order (later wins): trait defaults, `$TREMPY_HOME/config` (TOML, user level),
`[tool.trempy_nb]` in the nearest `pyproject.toml` (project level), IPython
configuration (`c.Trempy.preview_limit = 50` in a profile), then `%config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]


def _read_toml(path: Path) -> dict[str, Any]:
    if tomllib is None or not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def user_config_path() -> Path:
    home = os.environ.get("TREMPY_HOME") or str(Path.home() / ".trempy")
    return Path(home).expanduser() / "config"


def find_pyproject(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def file_config(start: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Options from the user config and the project's pyproject.toml, and where they came from."""
    values: dict[str, Any] = {}
    sources: list[str] = []
    user = user_config_path()
    data = _read_toml(user)
    section = data.get("trempy_nb", data) if isinstance(data, dict) else {}
    if section:
        values.update(section)
        sources.append(str(user))
    pyproject = find_pyproject(start)
    if pyproject is not None:
        tool = _read_toml(pyproject).get("tool", {}).get("trempy_nb", {})
        if isinstance(tool, dict) and tool:
            values.update(tool)
            sources.append(f"{pyproject} [tool.trempy_nb]")
    return values, sources


#: set by `%config Trempy.metadata_url`: the value the environment had before, to restore on ""
_METADATA_BEFORE: list[str | None] = []


def apply_metadata_url(url: str, env_var: str) -> None:
    """Point this kernel at a state store (`%config Trempy.metadata_url`); "" restores the environment's."""
    if url:
        if not _METADATA_BEFORE:
            _METADATA_BEFORE.append(os.environ.get(env_var))
        os.environ[env_var] = url
    elif _METADATA_BEFORE:
        before = _METADATA_BEFORE.pop()
        if before is None:
            os.environ.pop(env_var, None)
        else:
            os.environ[env_var] = before


def detect_headless() -> bool:
    """True when no person is watching: not a kernel of JupyterLab/Notebook/VS Code.

    jupyter_server sets JPY_SESSION_NAME for kernels it starts for a notebook;
    papermill, nbclient and nbmake do not. `TREMPY_HEADLESS=1/0` forces it.
    """
    forced = os.environ.get("TREMPY_HEADLESS", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return True
    ip = get_ipython()
    if ip is None or getattr(ip, "kernel", None) is None:
        return True
    return not any(os.environ.get(v) for v in ("JPY_SESSION_NAME", "VSCODE_PID", "VSCODE_CWD"))
