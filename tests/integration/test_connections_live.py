"""Saved connections against a real cluster: connect through resolve(), and a wrong password stays secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from trempy_nb import connections as conns
from trempy_nb.connections import list_connections, mask, resolve, save_connection
from trempy_nb.db import connect
from trempy_nb.errors import ConnectionFailed
from trempy_nb.logs import get_logger

WRONG = "Wr0ng-Pass/word@x"


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    conns._forget_secrets()
    yield
    conns._forget_secrets()


def _with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_saved_connection_connects(trempy_home: Path, source_uri: str) -> None:
    right = urlsplit(source_uri).password
    assert right
    info = save_connection("src", source_uri + "?sslmode=disable", test=True)
    assert right not in repr(info) and right not in str(info)
    assert right not in (trempy_home / "connections.json").read_text()
    assert right not in str(list_connections().to_dicts())
    with connect(resolve("src")) as conn:
        db = conn.execute("SELECT current_database()").fetchone()[0]
    assert db == urlsplit(source_uri).path.lstrip("/")
    # resolve registered the password: any text echoing it is masked
    assert right not in mask(f"libpq echoed {right}")


def test_wrong_password_is_reported_without_passwords(
    trempy_home: Path, source_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    right = urlsplit(source_uri).password
    assert right
    save_connection("good", source_uri)
    resolve("good")  # registers the right password, as a runner would
    save_connection("bad", _with_password(source_uri, WRONG))
    with pytest.raises(ConnectionFailed) as err:
        connect(resolve("bad"))
    text = str(err.value)
    assert "password authentication failed" in text
    for secret in (WRONG, quote(WRONG, safe=""), right):
        assert secret not in text
    get_logger("live_test").error("connect failed: %s (%s)", err.value, resolve("bad"))
    assert "connect failed" in caplog.text
    assert WRONG not in caplog.text and quote(WRONG, safe="") not in caplog.text
    # testing before saving refuses to save a connection that cannot log in
    with pytest.raises(ConnectionFailed) as err2:
        save_connection("bad2", _with_password(source_uri, WRONG + "2"), test=True)
    assert WRONG not in str(err2.value)
    assert "bad2" not in list_connections()["name"].to_list()
