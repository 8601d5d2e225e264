"""`--metadata URL` is accepted before the subcommand, after it, and after a sub-subcommand, and
points the process at that state store (parsing only: no store is opened)."""

from __future__ import annotations

import os

import pytest

from trempy_nb import store_cli
from trempy_nb.cli import build_parser
from trempy_nb.store.location import ENV_VAR

URL = "postgresql://u@h/fleet"


@pytest.mark.parametrize(
    "argv",
    [
        ["--metadata", URL, "status"],
        ["status", "--metadata", URL, "--json"],
        [f"--metadata={URL}", "runs", "t1"],
        ["connect", "list", "--metadata", URL],
        ["connect", "--metadata", URL, "list"],
        ["schema", "--metadata", URL],
    ],
)
def test_metadata_anywhere(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "")  # recorded, so the value apply_metadata sets is undone afterwards
    args = build_parser(plugins=True).parse_args(argv)
    store_cli.apply_metadata(args)
    assert os.environ[ENV_VAR] == URL


def test_no_metadata_leaves_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "from-env")
    store_cli.apply_metadata(build_parser(plugins=False).parse_args(["status"]))
    assert os.environ[ENV_VAR] == "from-env"


def test_env_var_names_agree() -> None:
    assert store_cli.METADATA_ENV == ENV_VAR
