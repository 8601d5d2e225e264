"""mysql:// and mariadb:// target URIs: parse, resolve (saved connections, ${VAR}) and connect.

`connections.resolve` turns a saved name or a URI with `${VAR}` into the full
URI and registers its password with `mask`; this module reads that URI into the
driver's keywords and opens a connection with the session settings every
statement relies on (UTC, strict SQL mode, utf8mb4). Errors are one line,
password masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pymysql

from trempy_nb.connections import is_mariadb_uri, resolve
from trempy_nb.errors import ConnectionFailed, SettingsError
from trempy_nb.redact import mask

DEFAULT_PORT = 3306

#: Every value round-trips exactly only when the session is UTC and strict (an out-of-range or
#: malformed value is an error, never a silent change).
SQL_MODE = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO"
INIT_COMMAND = f"SET time_zone = '+00:00', sql_mode = '{SQL_MODE}', sql_notes = 1"

#: Error numbers of a connection the server refused for good (no retry can cure them):
#: 1044/1045 access denied, 1049 unknown database, 1698 access denied (unix socket plugin).
REFUSED = (1044, 1045, 1049, 1698)


@dataclass(frozen=True)
class MariaDBTarget:
    """Where to connect; `repr` never shows the password."""

    host: str
    port: int
    user: str
    password: str = field(repr=False, default="")
    database: str = ""
    params: dict[str, str] = field(default_factory=dict, compare=False)

    def masked(self) -> str:
        pw = ":***" if self.password else ""
        return f"mysql://{self.user}{pw}@{self.host}:{self.port}/{self.database}"


def parse(uri: str) -> MariaDBTarget:
    """A resolved mysql:// / mariadb:// URI -> MariaDBTarget (the database part is required)."""
    if not is_mariadb_uri(uri):
        raise SettingsError(f"not a mysql:// or mariadb:// URI: {mask(uri)}")
    parts = urlsplit(uri.strip())
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise SettingsError(f"invalid port in {mask(uri)}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise SettingsError(
            f"the target URI {mask(uri)} names no database: add /<database> (the task's state tables live there)"
        )
    return MariaDBTarget(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=database,
        params=dict(parse_qsl(parts.query)),
    )


def target_of(ref: str) -> MariaDBTarget:
    """A saved connection name or URI (with `${VAR}`) -> MariaDBTarget; the password is registered for masking."""
    return parse(resolve(ref, mariadb=True))


def connect(ref: str | MariaDBTarget, *, timeout: int = 10, database: bool = True) -> pymysql.connections.Connection:
    """Open a session (autocommit off, LOCAL INFILE allowed, UTC, strict); ConnectionFailed on refusal.

    `database=False` connects without selecting the database (to say clearly that it is missing)."""
    target = ref if isinstance(ref, MariaDBTarget) else target_of(ref)
    try:
        return pymysql.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database if database else None,
            charset="utf8mb4",
            autocommit=False,
            local_infile=True,
            connect_timeout=timeout,
            init_command=INIT_COMMAND,
        )
    except pymysql.err.MySQLError as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        failed = ConnectionFailed(f"cannot connect to {target.masked()}: {mask(_message(exc))}")
        failed.transient = code not in REFUSED
        raise failed from None


def _message(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    text = str(args[1]) if len(args) > 1 else str(exc)
    return " ".join(text.split())
