"""The notebooks under test run on the test run's own environment.

nbmake (like nbclient and papermill) starts the kernel a notebook names in its
metadata. The shipped notebooks name `python3`, which jupyter_client resolves to
the ipykernel of the running interpreter; a `python3` kernelspec elsewhere (a user's
~/.local/share/jupyter, say) would silently run the notebooks on another Python with
other packages. This checks the kernel's interpreter and the trempy_nb it imports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import trempy_nb

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def test_shipped_notebooks_name_the_python3_kernel() -> None:
    names = {nb.name: json.loads(nb.read_text())["metadata"]["kernelspec"]["name"]
             for nb in sorted(NOTEBOOKS.glob("*.ipynb"))}
    assert names and set(names.values()) == {"python3"}, names


def test_python3_kernel_runs_this_environment(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys, trempy_nb\n"
        "print(json.dumps({'prefix': sys.prefix, 'trempy_nb': trempy_nb.__file__}))"
    ))
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    (output,) = [o for o in nb.cells[0].outputs if o.get("name") == "stdout"]
    seen = json.loads(output["text"].strip())
    assert seen == {"prefix": sys.prefix, "trempy_nb": trempy_nb.__file__}
