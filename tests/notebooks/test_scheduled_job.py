"""The scheduled-job notebook through `trempy-nb notebook run` (success, re-run, failure),
and a scan of every executed notebook and log for the test password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.notebooks.conftest import hr_settings, scan_for

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def _cli(*args: str, home: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TREMPY_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TREMPY_NB_SOURCE", None)
    env.pop("TREMPY_NB_TARGET", None)
    return subprocess.run(
        [sys.executable, "-m", "trempy_nb.cli", "notebook", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def test_scheduled_job_succeeds_reruns_and_fails(hr: dict, tmp_path: Path) -> None:
    settings = hr_settings("t_job", "upsert")
    settings["task"]["start_mode"] = "continue"
    good = tmp_path / "good.json"
    good.write_text(json.dumps(settings))
    out1, out2, out3 = (tmp_path / f"run{i}.ipynb" for i in (1, 2, 3))

    first = _cli(
        str(NOTEBOOKS / "scheduled_job.ipynb"),
        "-p",
        "task",
        str(good),
        "-p",
        "until_caught_up",
        "true",
        "-o",
        str(out1),
        home=hr["home"],
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "succeeded" in first.stdout
    executed = nbformat.read(out1, as_version=4)
    text = json.dumps(executed)
    assert "task t_job: succeeded" in text and "employees.employee_salary" in text

    second = _cli(
        str(NOTEBOOKS / "scheduled_job.ipynb"),
        "-p",
        "task",
        str(good),
        "-o",
        str(out2),
        home=hr["home"],
    )
    assert second.returncode == 0, second.stderr[-2000:]  # safe to re-run (continue)

    bad_settings = hr_settings("t_job_bad", "upsert")
    bad_settings["tables"][0]["table_name"] = "no_such_table"
    bad_settings["filters"] = []
    bad_settings["transformations"] = [
        t for t in bad_settings["transformations"] if t["table_name"] != "employee"
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_settings))
    failed = _cli(
        str(NOTEBOOKS / "scheduled_job.ipynb"),
        "-p",
        "task",
        str(bad),
        "-o",
        str(out3),
        home=hr["home"],
    )
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert "job failed" in lines[-1] and "no_such_table" in lines[-1]
    assert out3.exists()

    missing = _cli(str(tmp_path / "nope.ipynb"), home=hr["home"])
    assert missing.returncode == 2

    hits = scan_for(
        hr["password"],
        out1,
        out2,
        out3,
        hr["home"],
        texts=(
            first.stdout,
            first.stderr,
            second.stdout,
            second.stderr,
            failed.stdout,
            failed.stderr,
        ),
    )
    assert hits == [], hits


def test_quickstart_against_env_uris_leaks_no_password(hr: dict, tmp_path: Path) -> None:
    """The quickstart, given URIs with the test password, keeps it out of every output and log."""
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    env_backup = {k: os.environ.get(k) for k in ("TREMPY_NB_SOURCE", "TREMPY_NB_TARGET")}
    os.environ["TREMPY_NB_SOURCE"] = hr["source"]
    os.environ["TREMPY_NB_TARGET"] = hr["target"]
    try:
        NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = tmp_path / "quickstart.executed.ipynb"
    nbformat.write(nb, out)
    text = out.read_text()
    assert "showing 5 of" in text and "changes applied" in text
    assert scan_for(hr["password"], out, hr["home"]) == []
