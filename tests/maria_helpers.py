"""Shared by the MariaDB tests: the machine's server (127.0.0.1:3306, root, no password), fresh
databases dropped afterwards, and reads in transactions of their own. The fixtures that use these
are in tests/integration/conftest.py. In CI (`CI=true`) a missing server fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import in_ci
from trempy_nb.errors import ConnectionFailed
from trempy_nb.writer.mariadb import uri
from trempy_nb.writer.mariadb.names import execute, quote

SERVER = "mysql://root@127.0.0.1:3306"


def require_server() -> str:
    """The server's URI (no database); skips the test, or fails it in CI, when it is not running."""
    try:
        uri.connect(f"{SERVER}/mysql", timeout=3).close()
    except ConnectionFailed as exc:
        if in_ci():
            pytest.fail(f"MariaDB is not running on 127.0.0.1:3306 (CI needs it): {exc}")
        pytest.skip(f"MariaDB is not running: {exc}")
    return SERVER


@contextlib.contextmanager
def databases(server: str = SERVER) -> Iterator[tuple[Callable[..., str], Any]]:
    """(new(prefix, create=True) -> a fresh database name, an admin connection); every database
    made is dropped at the end."""
    made: list[str] = []
    admin = uri.connect(f"{server}/mysql")

    def new(prefix: str = "t", create: bool = True) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        made.append(name)
        if create:
            with admin.cursor() as cur:
                execute(cur, f"CREATE DATABASE {quote(name)}")
        return name

    try:
        yield new, admin
    finally:
        with admin.cursor() as cur:
            for name in made:
                execute(cur, f"DROP DATABASE IF EXISTS {quote(name)}")
        admin.close()


def q(conn: Any, text: str, params: tuple = ()) -> list[tuple]:
    """Read in a transaction of its own: a fresh snapshot, and no metadata lock held afterwards
    (an open reader's transaction would make the applier's ALTER TABLE wait, as on PostgreSQL)."""
    conn.commit()
    with conn.cursor() as cur:
        execute(cur, text, params)
        out = [tuple(r) for r in cur.fetchall()]
    conn.commit()
    return out
