"""Fixtures of the MariaDB target's tests (test_mariadb*.py), on the machine's server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.maria_helpers import databases, require_server


@pytest.fixture(scope="module")
def server() -> str:
    """mysql://root@127.0.0.1:3306 (no database); skip, or fail in CI, when MariaDB is not running."""
    return require_server()


@pytest.fixture
def dbs(server: str) -> Iterator[Callable[..., str]]:
    """new(prefix, create=True) -> a fresh database name, dropped after the test."""
    with databases(server) as (new, _admin):
        yield new


@pytest.fixture
def maria(server: str) -> Iterator[tuple[str, str, Any]]:
    """(state database, data database, admin connection): fresh databases, dropped after the test;
    the state one exists (the target URI names it), the data one is the writer's to create."""
    with databases(server) as (new, admin):
        yield new("mst"), new("mdw", create=False), admin
