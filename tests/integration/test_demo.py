"""The README's first command: `trempy-nb demo` replicates real data end to end (small size here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "TREMPY_HOME": str(tmp_path / "home")}
    res = subprocess.run(
        [sys.executable, "-m", "trempy_nb.cli", "demo", "--rows", "3000"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "task demo_hr: succeeded" in out
    assert "employees.employee -> dw.dim_employee: read 3,000" in out
    assert "RENAMED" in out and "versions" in out and "current" in out
    # the demo cluster's password never shows
    assert "pw_" not in out + res.stderr
