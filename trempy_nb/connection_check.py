"""Testing a connection once, whichever database it names: latency, server version, user, database.

`%trempy connections` (its Test button), `trempy-nb connect test` and every save with a test
use it. A postgresql:// connection opens through psycopg (`db.connect`), a mysql:// or
mariadb:// one through the MariaDB target's driver (`writer.mariadb.uri.connect`, the optional
extra `trempy_nb[mariadb]`). Failures are one line (ConnectionFailed), password masked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trempy_nb.connections import conninfo_to_test, is_mariadb_uri
from trempy_nb.db import connect
from trempy_nb.errors import SettingsError


@dataclass(frozen=True)
class Checked:
    """What one test saw: milliseconds to connect and ask, and who answered."""

    ms: float
    server: str  # "PostgreSQL 16.4", "MariaDB 10.11.6", "MySQL 8.0.36"
    user: str
    database: str


def check_connection(ref: str, timeout: int = 10, *, keep_password_of: str | None = None) -> Checked:
    """Open `ref` (a saved name or a URI) once and ask who it is; ConnectionFailed (masked) when it
    cannot. `keep_password_of`: see `connections.conninfo_to_test`."""
    conninfo = conninfo_to_test(ref, keep_password_of=keep_password_of)
    if is_mariadb_uri(conninfo):
        return _check_mariadb(conninfo, timeout)
    started = time.perf_counter()
    with connect(conninfo, connect_timeout=timeout) as conn:
        row = conn.execute("SELECT current_user, current_database(), current_setting('server_version')").fetchone()
    elapsed = (time.perf_counter() - started) * 1000
    user, database, version = (str(v) for v in row) if row else ("?", "?", "?")
    return Checked(elapsed, f"PostgreSQL {version}", user, database)


def _check_mariadb(uri: str, timeout: int) -> Checked:
    try:
        # lazy: the MariaDB driver is the optional extra trempy_nb[mariadb], imported only for such URIs
        from trempy_nb.writer.mariadb import uri as maria_uri
        from trempy_nb.writer.mariadb.capabilities import server_info
    except ImportError as exc:
        raise SettingsError(f"a MariaDB/MySQL connection needs its driver: pip install 'trempy_nb[mariadb]' ({exc})"
                            ) from None
    started = time.perf_counter()
    with maria_uri.connect(uri, timeout=timeout) as conn:
        info = server_info(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE()")
            row = cur.fetchone()
    elapsed = (time.perf_counter() - started) * 1000
    product = "MariaDB" if info.mariadb else "MySQL"
    user, database = (str(v) for v in row) if row else ("?", "?")
    return Checked(elapsed, f"{product} {info.version.split('-')[0]}", user, database)


def open_once(uri: str) -> None:
    """`connections.save_connection(..., tester=open_once)`: raise unless `uri` opens."""
    check_connection(uri)
