"""The built wheel, installed (not editable) into a fresh virtual environment, is the whole product.

The wheel is built from the files a release ships (pyproject.toml, README.md, LICENSE,
trempy_nb/), installed with its dependencies from the package index into a new venv,
and then: every module of the package imports there (so an import of something the
wheel does not declare fails), the package data the code loads through
importlib.resources is in the wheel and readable, and that venv's `trempy-nb demo`
replicates real data end to end. pip's cache may serve the dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "trempy_nb"
SHIPPED = ("pyproject.toml", "README.md", "LICENSE")


def _run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert res.returncode == 0, f"{cmd[:4]} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def _source_modules() -> set[str]:
    """Every module of the package in the work tree, as dotted names."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _package_data() -> set[str]:
    """Non-Python files of the package (what importlib.resources reads at run time)."""
    return {
        p.relative_to(REPO).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built (with build isolation, as pip does for a user) from a copy of the shipped files."""
    src = tmp_path_factory.mktemp("src")
    for name in SHIPPED:
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "trempy_nb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], timeout=300)
    (whl,) = dist.glob("trempy_nb-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel and its declared dependencies, nothing else."""
    root = tmp_path_factory.mktemp("wheelvenv") / "venv"
    _run([sys.executable, "-m", "venv", str(root)], timeout=120)
    # --no-compile: the same files, bytecode made on first import (halves the install time here)
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
         timeout=600)
    return root


def _venv_env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TREMPY_HOME"] = str(home)
    return env


def test_wheel_holds_every_module_the_package_data_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {n for n in names if n.endswith(".py")}
    expected = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")}
    assert sorted(expected - modules) == []
    data = _package_data()
    assert {"trempy_nb/ai/tutorial.md", "trempy_nb/ai/examples/01_upsert_employees.json"} <= data
    assert sorted(data - names) == [], "package data missing from the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert "Requires-Dist: numpy" in text


#: drivers of optional extras (pyproject.toml) -> the only modules allowed to need them
OPTIONAL_EXTRAS = {"pymysql": ("trempy_nb.writer.mariadb", "trempy_nb.fullload.mariadb", "trempy_nb.reconcile.mariadb")}


def test_every_module_imports_in_the_fresh_venv(venv: Path, tmp_path: Path) -> None:
    """Walks the installed package and imports each module: an undeclared import fails here."""
    code = (
        "import importlib, json, pkgutil, sys, trempy_nb\n"
        "names = ['trempy_nb'] + [m.name for m in pkgutil.walk_packages(trempy_nb.__path__, 'trempy_nb.')]\n"
        "extra = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except ModuleNotFoundError as exc:\n"
        f"        if exc.name not in {sorted(OPTIONAL_EXTRAS)!r}: raise\n"
        "        extra[n] = exc.name\n"
        "from trempy_nb.ai.assistant import load_examples, tutorial_text\n"
        "print(json.dumps({'file': trempy_nb.__file__, 'prefix': sys.prefix, 'modules': names,\n"
        "                  'extra': extra,\n"
        "                  'examples': len(load_examples()), 'tutorial': len(tutorial_text())}))\n"
    )
    res = _run([str(venv / "bin" / "python"), "-c", code], timeout=120, cwd=tmp_path,
               env=_venv_env(venv, tmp_path / "home"))
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(info["prefix"]) == venv
    assert Path(info["file"]).is_relative_to(venv), "trempy_nb came from outside the fresh venv"
    assert set(info["modules"]) == _source_modules()
    # without its optional extra, only the MariaDB target's own modules miss their driver
    assert info["extra"] and all(
        name.startswith(OPTIONAL_EXTRAS[missing]) for name, missing in info["extra"].items()
    ), info["extra"]
    assert info["examples"] == len(list((PACKAGE / "ai" / "examples").glob("*.json"))) > 0
    assert info["tutorial"] > 1000


def test_the_wheels_demo_replicates(venv: Path, tmp_path: Path) -> None:
    res = _run([str(venv / "bin" / "trempy-nb"), "demo", "--rows", "2000"], timeout=240, cwd=tmp_path,
               env=_venv_env(venv, tmp_path / "home"))
    out = res.stdout
    assert "task demo_hr: succeeded" in out
    assert "employees.employee -> dw.dim_employee: read 2,000" in out
    assert "versions" in out and "current" in out
    assert "pw_" not in out + res.stderr
