"""The project is self-contained: its files agree with each other and point nowhere outside it.

pyproject.toml and environment.yml declare the same packages; the licence metadata and the
LICENSE file agree; every relative link resolves inside the repository; compose.yaml sets the
environment variables the shipped notebooks read; the README documents every variable the
package reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
#: Names of environment variables the project itself defines (the tests' own `CI` aside).
_ENV_NAME = re.compile(r"""["'$({]((?:TREMPY|RABBITMQ|DEEPSEEK|OPENAI)_[A-Z0-9_]+)\b""")


def _req_name(requirement: str) -> str:
    m = _REQ_NAME.match(requirement)
    assert m, requirement
    return m.group(1).lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _text_files() -> list[Path]:
    """The repository's documents, notebooks and package sources (not .venv, not build output)."""
    files = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "compose.yaml", REPO / "pyproject.toml"]
    for folder, pattern in (("docs", "*.md"), ("notebooks", "*.ipynb"), ("trempy_nb", "*.py"),
                            ("trempy_nb", "*.md"), ("tests", "*.md"), ("benchmarks", "*.md")):
        files += sorted((REPO / folder).rglob(pattern))
    return [f for f in files if f.is_file()]


def _markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def test_environment_yml_declares_what_pyproject_declares() -> None:
    project = _pyproject()["project"]
    declared = {_req_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    listed: set[str] = set()
    for item in env["dependencies"]:
        for req in item["pip"] if isinstance(item, dict) else [item]:
            if not req.startswith("-"):
                listed.add(_req_name(req))
    assert sorted(declared - listed) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(listed - declared - {"python", "pip"}) == [], "in environment.yml but not in pyproject.toml"


def test_licence_metadata_names_the_mit_license_file() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_relative_links_stay_inside_the_repository() -> None:
    bad = []
    for path in _text_files():
        if path.suffix not in (".md", ".ipynb"):
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", _markdown_of(path)):
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):  # https:, mailto:, in-page anchors
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                bad.append(f"{path.relative_to(REPO)}: {target}")
    assert bad == []


def test_nothing_refers_to_files_outside_the_repository() -> None:
    """The settings contract and the design map live in docs/; `shared/` is not shipped."""
    hits = [
        f"{path.relative_to(REPO)}: {m.group(0)}"
        for path in _text_files()
        for m in re.finditer(r"\.\./shared\b|\bshared/[A-Z]+\.md", path.read_text(encoding="utf-8"))
    ]
    assert hits == []


def test_compose_sets_the_variables_the_notebooks_read() -> None:
    read = set()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        read |= set(re.findall(r"os\.environ(?:\.get\(|\[)\s*[\"'](TREMPY_NB_[A-Z_]+)", code))
    assert read == {"TREMPY_NB_SOURCE", "TREMPY_NB_TARGET"}
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    env = compose["services"]["jupyter"]["environment"]
    assert read <= set(env)
    assert not [k for k in env if k.startswith("TREMPY_") and k not in read
                and k not in ("TREMPY_HOME", "TREMPY_METADATA_URL")]


def test_readme_documents_every_variable_the_package_reads() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    used = {
        name
        for path in sorted((REPO / "trempy_nb").rglob("*.py"))
        for name in _ENV_NAME.findall(path.read_text(encoding="utf-8"))
    }
    assert {"TREMPY_HOME", "TREMPY_SECRET_KEY", "RABBITMQ_URL", "TREMPY_AI_API_KEY"} <= used
    assert sorted(n for n in used if f"`{n}`" not in section) == []
