"""`trempy-nb connect add|list|delete|test`: saved connections, as `%trempy connect`/`connections`.

A saved connection keeps its URI without the password in $TREMPY_HOME/connections.json
and the password encrypted (see `trempy_nb.connections`). No password is ever printed.
A password typed on the command line stays in the shell's history, so `add` also takes
it from stdin (`--password-stdin`, prompted without echo on a terminal) or as a
`${VAR}` reference kept as written and read from the environment at each use (quote
it so the shell leaves it alone: 'postgresql://app:${HR_PASSWORD}@db/hr').
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("connect", help="saved connections: add, list, delete, test")
    sub = p.add_subparsers(dest="connect_command", metavar="ACTION")
    sub.required = True

    a = sub.add_parser("add", help="save a connection (password encrypted, never echoed)")
    a.add_argument("name", help="connection name (a letter, then letters, digits, _ or -)")
    a.add_argument(
        "uri",
        help="postgresql:// URI or keyword conninfo (a target may be mysql:// or mariadb://);"
        " write the password as '${VAR}' to read it"
        " from the environment, or leave it out and use --password-stdin",
    )
    a.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (prompted without echo on a terminal)",
    )
    a.add_argument("--no-test", action="store_true", help="save without connecting first")

    ls = sub.add_parser("list", help="saved connections (never a password)")
    ls.add_argument(
        "--json", action="store_true", help="a JSON array of objects instead of a table"
    )

    d = sub.add_parser("delete", help="forget a saved connection")
    d.add_argument("name")

    t = sub.add_parser(
        "test", help="connect with a saved connection (or a URI) and report the server"
    )
    t.add_argument("name", help="saved connection name or URI")
    return p


# lazy imports below: start-up speed (psycopg, polars and cryptography load only when used)


def _with_password(uri: str, password: str) -> str:
    """`uri` with `password` put in (percent-encoded); the URI must carry none already."""
    from urllib.parse import quote

    from trempy_nb.connections import _join_userinfo, _split_userinfo, has_literal_password
    from trempy_nb.errors import SettingsError

    if not uri.lower().startswith(("postgresql://", "postgres://", "mysql://", "mariadb://")):
        raise SettingsError("--password-stdin needs a postgresql:// (or mysql://, mariadb://) URI")
    scheme, user, raw_pw, after = _split_userinfo(uri)
    if raw_pw is not None or has_literal_password(uri):
        raise SettingsError("the URI already holds a password: leave it out with --password-stdin")
    if not user:
        raise SettingsError("--password-stdin needs a user in the URI (postgresql://USER@host/db)")
    return _join_userinfo(scheme, user, quote(password, safe=""), after)


def _read_password() -> str:
    import getpass

    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


def _add(args: argparse.Namespace) -> int:
    from trempy_nb.connection_check import open_once
    from trempy_nb.connections import has_literal_password, save_connection

    uri = args.uri
    if args.password_stdin:
        uri = _with_password(uri, _read_password())
    elif has_literal_password(uri):
        print(
            "trempy-nb connect: warning: a password on the command line stays in the shell's"
            " history; prefer --password-stdin or '${VAR}'",
            file=sys.stderr,
        )
    info = save_connection(args.name, uri, test=not args.no_test, tester=open_once)
    print(f"saved connection {info}" + ("" if args.no_test else " (tested)"))
    return 0


def _list(args: argparse.Namespace) -> int:
    from trempy_nb import reports
    from trempy_nb.connections import list_connections

    frame = list_connections()
    print(reports.json_text(frame) if args.json else reports.table_text(frame))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from trempy_nb.connections import delete_connection

    delete_connection(args.name)
    print(f"deleted connection {args.name}")
    return 0


def _test(args: argparse.Namespace) -> int:
    from trempy_nb.connection_check import check_connection
    from trempy_nb.connections import mask

    c = check_connection(args.name)
    print(mask(f"{args.name}: ok (user {c.user}, database {c.database}, {c.server}, {c.ms:,.1f} ms)"))
    return 0


def run(args: argparse.Namespace) -> int:
    actions = {"add": _add, "list": _list, "delete": _delete, "test": _test}
    return actions[args.connect_command](args)
