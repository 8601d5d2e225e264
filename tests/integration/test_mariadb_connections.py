"""Saved MariaDB connections tested like PostgreSQL ones, against the machine's MariaDB: the
connections form's Test button and save-with-test, and `trempy-nb connect add|test` (latency,
server version), with a user of its own whose password never shows; a wrong password is one
masked line and nothing is saved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import run_cli
from trempy_nb.connection_check import check_connection
from trempy_nb.connections import list_connections, password_source, resolve
from trempy_nb.errors import ConnectionFailed
from trempy_nb.notebook.connections_form import ConnectionsForm
from trempy_nb.writer.mariadb.names import execute, quote

PASSWORD = "Sekr3t!pw_" + uuid.uuid4().hex[:6]


@pytest.fixture
def account(maria: tuple[str, str, Any]) -> Iterator[tuple[str, str]]:
    """(user, database): a MariaDB user with a password, allowed on a fresh database."""
    state, _data, admin = maria
    user = f"tc_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        execute(cur, "CREATE USER %s@'%%' IDENTIFIED BY %s", (user, PASSWORD))
        execute(cur, f"GRANT SELECT ON {quote(state)}.* TO %s@'%%'", (user,))
    try:
        yield user, state
    finally:
        with admin.cursor() as cur:
            execute(cur, "DROP USER IF EXISTS %s@'%%'", (user,))


def test_check_connection_reports_mariadb(trempy_home: Path, account: tuple[str, str]) -> None:
    user, db = account
    checked = check_connection(f"mariadb://{user}:{PASSWORD}@127.0.0.1:3306/{db}")
    assert checked.server.startswith(("MariaDB 1", "MySQL 8")) and checked.ms > 0
    assert checked.user.startswith(user + "@") and checked.database == db
    with pytest.raises(ConnectionFailed) as info:
        check_connection(f"mysql://{user}:not-{PASSWORD}@127.0.0.1:3306/{db}")
    assert "cannot connect" in str(info.value) and PASSWORD not in str(info.value)


def test_cli_connect_add_and_test(trempy_home: Path, account: tuple[str, str]) -> None:
    user, db = account
    env = {"TREMPY_HOME": str(trempy_home)}
    bare = f"mysql://{user}@127.0.0.1:3306/{db}"
    added = run_cli(["connect", "add", "mdw", bare, "--password-stdin"], env=env, input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "saved connection mdw" in added.stdout and "(tested)" in added.stdout
    tested = run_cli(["connect", "test", "mdw"], env=env)
    assert tested.returncode == 0, tested.stderr
    assert f"mdw: ok (user {user}@" in tested.stdout and f"database {db}, MariaDB 1" in tested.stdout
    assert " ms)" in tested.stdout
    wrong = run_cli(["connect", "add", "mbad", bare, "--password-stdin"], env=env, input="wrong-pw\n")
    assert wrong.returncode != 0 and "cannot connect" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "wrong-pw" not in wrong.stderr + wrong.stdout
    for out in (added, tested, wrong):
        assert PASSWORD not in out.stdout + out.stderr
    listed = run_cli(["connect", "list", "--json"], env=env)
    assert '"mdw"' in listed.stdout and "mbad" not in listed.stdout
    assert PASSWORD.encode() not in (trempy_home / "connections.json").read_bytes()


def test_connections_form_tests_and_saves_a_mariadb_connection(trempy_home: Path, account: tuple[str, str]) -> None:
    user, db = account
    form = ConnectionsForm()
    form.w_pick.value = ""
    form.w_name.value = "mdw2"
    form.w_uri.value = f"mysql://{user}@127.0.0.1:3306/{db}"
    form.w_password.value = PASSWORD
    form.b_test.click()
    assert "connected in" in form.w_status.value and "MariaDB" in form.w_status.value, form.w_status.value
    form.w_password.value = PASSWORD
    form.b_save.click()
    assert "saved connection mdw2" in form.w_status.value, form.w_status.value
    assert "tested" in form.w_status.value and "MariaDB" in form.w_status.value
    assert form.w_password.value == "" and password_source("mdw2") == "encrypted"
    assert resolve("mdw2", mariadb=True).startswith("mysql://")
    # the saved one, picked: tested with its stored password
    form.w_pick.value = "mdw2"
    form.b_test.click()
    assert "connected in" in form.w_status.value and "MariaDB" in form.w_status.value, form.w_status.value
    # a wrong password: one masked line, nothing saved
    form.w_pick.value = ""
    form.w_name.value = "mbad2"
    form.w_uri.value = f"mysql://{user}@127.0.0.1:3306/{db}"
    form.w_password.value = "not-the-password"
    form.b_save.click()
    assert "cannot connect" in form.w_status.value and "mbad2" not in list_connections()["name"].to_list()
    assert "not-the-password" not in form.w_status.value
    assert PASSWORD not in form.w_status.value + form.w_list.value
