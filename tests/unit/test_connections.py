"""Saved connections (encrypted at rest), ${VAR} resolution, masking and masked logging."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet
from psycopg.conninfo import conninfo_to_dict

from trempy_nb import connections as conns
from trempy_nb.connections import (
    ConnectionInfo,
    delete_connection,
    has_literal_password,
    home,
    list_connections,
    mask,
    protect,
    register_secret,
    resolve,
    save_connection,
)
from trempy_nb.db import connect
from trempy_nb.embedded import free_port
from trempy_nb.errors import ConnectionFailed, SettingsError
from trempy_nb.logs import MaskingFilter, get_logger

PW = "Sup3r/S3cret@pw:x"  # needs percent-encoding in a URI
PW_ENC = "Sup3r%2FS3cret%40pw%3Ax"
URI = f"postgresql://alice:{PW_ENC}@db.example.com:5433/hr?sslmode=require"


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    """The secret registry is process-wide: keep tests from seeing each other's secrets."""
    conns._forget_secrets()
    yield
    conns._forget_secrets()


def _same(a: str, b: str) -> bool:
    return conninfo_to_dict(a) == conninfo_to_dict(b)


# --------------------------------------------------------------------------- home and storage


def test_home_is_created_private(trempy_home: Path) -> None:
    assert not trempy_home.exists()
    assert home() == trempy_home
    assert stat.S_IMODE(trempy_home.stat().st_mode) == 0o700


def test_password_is_encrypted_at_rest(trempy_home: Path) -> None:
    info = save_connection("hr", URI)
    raw = (trempy_home / "connections.json").read_text()
    assert PW not in raw and PW_ENC not in raw and "Sup3r" not in raw
    entry = json.loads(raw)["connections"]["hr"]
    assert entry["uri"] == "postgresql://alice@db.example.com:5433/hr?sslmode=require"
    assert entry["password"]
    key_file = trempy_home / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((trempy_home / "connections.json").stat().st_mode) == 0o600
    assert Fernet(key_file.read_bytes()).decrypt(entry["password"].encode()).decode() == PW
    assert info.has_password
    assert _same(resolve("hr"), URI)


def test_secret_key_from_environment(trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv("TREMPY_SECRET_KEY", key.decode())
    save_connection("hr", URI)
    assert not (trempy_home / "secret.key").exists()
    token = json.loads((trempy_home / "connections.json").read_text())["connections"]["hr"][
        "password"
    ]
    assert Fernet(key).decrypt(token.encode()).decode() == PW
    assert _same(resolve("hr"), URI)
    # another key cannot read it: a clear error, not a garbage password
    monkeypatch.setenv("TREMPY_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(SettingsError, match="cannot decrypt"):
        resolve("hr")


def test_bad_secret_key_is_a_settings_error(
    trempy_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TREMPY_SECRET_KEY", "not-a-key")
    with pytest.raises(SettingsError, match="TREMPY_SECRET_KEY"):
        save_connection("hr", URI)


def test_key_file_is_reused(trempy_home: Path) -> None:
    save_connection("a", URI)
    key = (trempy_home / "secret.key").read_bytes()
    save_connection("b", URI)
    assert (trempy_home / "secret.key").read_bytes() == key
    assert _same(resolve("a"), resolve("b"))


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a/b", "x" * 64, "é"])
def test_invalid_names_are_refused(trempy_home: Path, name: str) -> None:
    with pytest.raises(SettingsError, match="invalid connection name"):
        save_connection(name, URI)


def test_list_and_delete(trempy_home: Path) -> None:
    save_connection("hr", URI)
    save_connection("v6", "postgres://bob@[2001:db8::1]:6543/dw")
    df = list_connections()
    assert df.columns == ["name", "host", "port", "database", "user"]
    assert df.rows() == [
        ("hr", "db.example.com", "5433", "hr", "alice"),
        ("v6", "2001:db8::1", "6543", "dw", "bob"),
    ]
    assert PW not in str(df.to_dicts()) and PW_ENC not in str(df.to_dicts())
    delete_connection("v6")
    assert list_connections()["name"].to_list() == ["hr"]
    with pytest.raises(SettingsError, match="saved connections: hr"):
        delete_connection("v6")


def test_empty_list_has_columns(trempy_home: Path) -> None:
    df = list_connections()
    assert df.height == 0 and df.columns == ["name", "host", "port", "database", "user"]


def test_keyword_conninfo_is_saved_as_uri(trempy_home: Path) -> None:
    save_connection("kw", "host=::1 port=5 dbname=x user=y password='q w' sslmode=disable")
    assert "q w" not in (trempy_home / "connections.json").read_text()
    params = conninfo_to_dict(resolve("kw"))
    assert params == {
        "host": "::1",
        "port": "5",
        "dbname": "x",
        "user": "y",
        "password": "q w",
        "sslmode": "disable",
    }


def test_save_with_test_refuses_unreachable(trempy_home: Path) -> None:
    uri = f"postgresql://u:{PW_ENC}@127.0.0.1:{free_port()}/db?connect_timeout=2"
    with pytest.raises(ConnectionFailed) as err:
        save_connection("down", uri, test=True)
    assert PW not in str(err.value) and PW_ENC not in str(err.value)
    assert list_connections().height == 0


def test_connection_info_never_shows_password(trempy_home: Path) -> None:
    info = save_connection("hr", URI)
    for text in (repr(info), str(info), f"{info}", str(info.__dict__)):
        assert PW not in text and PW_ENC not in text
    assert str(info) == "hr -> postgresql://alice:***@db.example.com:5433/hr?sslmode=require"
    assert isinstance(conns.get_connection("hr"), ConnectionInfo)
    assert info.params == {"sslmode": "require"}


# --------------------------------------------------------------------------- resolve


def test_resolve_plain_uri_and_registers_password(trempy_home: Path) -> None:
    assert resolve(f"  {URI} ") == URI
    assert mask(f"server said {PW}") == "server said ***"


def test_resolve_expands_variables(trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_PW", PW)
    monkeypatch.setenv("HR_HOST", "db.example.com")
    out = resolve("postgresql://alice:${HR_PW}@${HR_HOST}:5433/hr?sslmode=require")
    assert _same(out, URI)  # the password is percent-encoded inside the userinfo
    monkeypatch.setenv("WHOLE", URI)
    assert resolve("${WHOLE}") == URI
    save_connection("hr", URI)
    monkeypatch.setenv("CONN_NAME", "hr")
    assert _same(resolve("${CONN_NAME}"), URI)


def test_missing_variable_is_named(trempy_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(SettingsError, match="NOPE_PW is not set"):
        resolve("postgresql://alice:${NOPE_PW}@h/db")


def test_saved_template_is_expanded_at_resolve(
    trempy_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_connection("tpl", "postgresql://alice:${TPL_PW}@${TPL_HOST}:5433/hr")
    raw = (trempy_home / "connections.json").read_text()
    assert "${TPL_HOST}" in raw
    with pytest.raises(SettingsError, match="TPL_PW is not set"):
        resolve("tpl")
    monkeypatch.setenv("TPL_PW", PW)
    monkeypatch.setenv("TPL_HOST", "db.example.com")
    assert conninfo_to_dict(resolve("tpl"))["password"] == PW
    assert list_connections().row(0) == ("tpl", "${TPL_HOST}", "5433", "hr", "alice")


def test_unknown_name_lists_saved(trempy_home: Path) -> None:
    with pytest.raises(SettingsError, match="saved connections: none"):
        resolve("hr")
    save_connection("dw", URI)
    save_connection("hr2", URI)
    with pytest.raises(SettingsError, match="saved connections: dw, hr2"):
        resolve("hr")


@pytest.mark.parametrize("ref", ["", "   ", "mysql://u:p@h/db", "not a uri"])
def test_resolve_refuses_garbage(trempy_home: Path, ref: str) -> None:
    with pytest.raises(SettingsError):
        resolve(ref)


def test_resolve_keyword_conninfo(trempy_home: Path) -> None:
    out = resolve("host=h dbname=d password=kwSecret9")
    assert out == "host=h dbname=d password=kwSecret9"
    assert mask("echo kwSecret9") == "echo ***"


def test_protect_moves_literal_passwords_only(trempy_home: Path) -> None:
    assert protect("hr", "t-source") == "hr"
    assert protect("postgresql://u@h/db", "t-source") == "postgresql://u@h/db"
    assert protect("postgresql://u:${PW}@h/db", "t-source") == "postgresql://u:${PW}@h/db"
    assert protect("${SRC}", "t-source") == "${SRC}"
    assert protect(URI, "t-source") == "t-source"
    assert _same(resolve("t-source"), URI)
    assert has_literal_password(URI) and not has_literal_password("postgres://u@h/db")


# --------------------------------------------------------------------------- mask


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:pw123@h/db", "postgresql://u:***@h/db"),
        ("postgres://u:pw123@h:5432/db", "postgres://u:***@h:5432/db"),
        (f"at {URI}.", "at postgresql://alice:***@db.example.com:5433/hr?sslmode=require."),
        (
            "postgresql://u:p%40ss@[::1]:5432/db?sslmode=verify-full",
            "postgresql://u:***@[::1]:5432/db?sslmode=verify-full",
        ),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # unencoded '@'
        ("postgresql://u:p/ss@h/db", "postgresql://u:***@h/db"),  # unencoded '/'
        ("'postgresql://u:pw123@h/db'", "'postgresql://u:***@h/db'"),
        (
            "a postgresql://u:x1@h/a and postgresql://v:y2@k/b",
            "a postgresql://u:***@h/a and postgresql://v:***@k/b",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db?x=a@b", "postgresql://h:5432/db?x=a@b"),
        (
            "postgresql://h/db?password=zz&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("host=h password=secret1 dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 'two words' dbname=d", "host=h password = *** dbname=d"),
        ("host=h password='it\\'s' dbname=d", "host=h password=*** dbname=d"),
        ("PGPASSWORD=hunter22 psql", "PGPASSWORD=*** psql"),
        (
            "{'user': 'u', 'password': 'p4ss', 'host': 'h'}",
            "{'user': 'u', 'password': '***', 'host': 'h'}",
        ),
        ('{"password": "p4ss"}', '{"password": "***"}'),
        ("password authentication failed for user", "password authentication failed for user"),
        ("", ""),
    ],
)
def test_mask(text: str, expected: str) -> None:
    assert mask(text) == expected


def test_mask_registered_secret_in_any_text() -> None:
    register_secret(PW)
    register_secret("abc")  # too short to mask without mangling ordinary words
    text = f'FATAL: bad "{PW}" / {PW_ENC} ... abc'
    assert mask(text) == 'FATAL: bad "***" / *** ... abc'
    assert mask(None) == ""
    assert mask(ValueError(PW)) == "***"


def test_mask_psycopg_error_text() -> None:
    """A real libpq error about a malformed URI, and one from a refused connection."""
    pw = "Zq9-echoed-pw"
    register_secret(pw)
    bad = f"postgresql://u:{pw}@127.0.0.1:notaport/db"
    with pytest.raises(psycopg.Error) as err:
        psycopg.connect(bad, connect_timeout=2)
    text = f"{err.value} while connecting to {bad} with password={pw}"
    masked = mask(text)
    assert pw not in masked
    # a refused connection through db.connect: the message is already masked
    with pytest.raises(ConnectionFailed) as err2:
        connect(f"postgresql://u:{pw}@127.0.0.1:{free_port()}/db", connect_timeout=2)
    assert pw not in str(err2.value) and "u:***@" in str(err2.value)


# --------------------------------------------------------------------------- masked logging


def test_logger_masks_records(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(PW)
    log = get_logger("unit_test")
    assert log.name == "trempy_nb.unit_test"
    with caplog.at_level(logging.INFO, logger="trempy_nb"):
        log.info("connecting to %s", URI)
        log.warning("libpq said %s", PW)
        try:
            raise RuntimeError(f"failed with postgresql://u:{PW_ENC}@h/db")
        except RuntimeError:
            log.exception("boom")
    assert caplog.records
    assert PW not in caplog.text and PW_ENC not in caplog.text
    assert "alice:***@db.example.com" in caplog.text


def test_masking_filter_on_foreign_handler() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "dsn %s", ("password=abc123",), None)
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "dsn password=***"


def test_connections_file_survives_concurrent_saves(trempy_home: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: save_connection(f"c{i}", URI), range(24)))
    assert list_connections().height == 24
    assert os.listdir(trempy_home).count("secret.key") == 1
