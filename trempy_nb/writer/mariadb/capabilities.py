"""What a MariaDB/MySQL target must offer, checked before anything is written.

Each failure is one line naming what to change: the server version, InnoDB, the
server's `local_infile` (the bulk path is LOAD DATA LOCAL INFILE), the database
the URI names, and the privileges the writer uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trempy_nb.errors import ValidationFailed
from trempy_nb.writer.mariadb.names import execute

MIN_MARIADB = (10, 6)  # UUID from 10.7; generated columns, JSON checks, savepoints well before
MIN_MYSQL = (8, 0)
#: Privileges the writer uses (on the target databases)
NEEDED = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "CREATE TEMPORARY TABLES", "INDEX", "ALTER")


@dataclass(frozen=True)
class ServerInfo:
    version: str
    mariadb: bool
    numbers: tuple[int, int]

    @property
    def native_uuid(self) -> bool:
        return self.mariadb and self.numbers >= (10, 7)


def server_info(conn: Any) -> ServerInfo:
    with conn.cursor() as cur:
        execute(cur, "SELECT VERSION()")
        version = str(cur.fetchone()[0])
    m = re.match(r"(\d+)\.(\d+)", version)
    numbers = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return ServerInfo(version, "mariadb" in version.lower(), numbers)


def _grants(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        execute(cur, "SHOW GRANTS")
        return [str(r[0]) for r in cur.fetchall()]


def missing_privileges(grants: list[str], database: str) -> list[str]:
    """Privileges of NEEDED that no grant line gives on *.* or on `database`.* (pure)."""
    have: set[str] = set()
    for line in grants:
        m = re.match(r"GRANT (.+?) ON (\S+) TO", line)
        if not m:
            continue
        privs, scope = m.group(1).upper(), m.group(2).replace("`", "")
        if scope not in ("*.*", f"{database}.*"):
            continue
        if "ALL PRIVILEGES" in privs:
            return []
        have.update(p.strip() for p in privs.split(","))
    return [p for p in NEEDED if p not in have]


def validate(conn: Any, database: str, *, bulk: bool = True) -> ServerInfo:
    """Raise ValidationFailed (one line) unless the target can take the task's writes."""
    info = server_info(conn)
    minimum = MIN_MARIADB if info.mariadb else MIN_MYSQL
    if info.numbers < minimum:
        kind = "MariaDB" if info.mariadb else "MySQL"
        raise ValidationFailed(f"the target runs {kind} {info.version}; {kind} {'.'.join(map(str, minimum))}"
                               " or newer is needed")
    with conn.cursor() as cur:
        execute(cur, "SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB'")
        row = cur.fetchone()
        if not row or str(row[0]).upper() not in ("YES", "DEFAULT"):
            raise ValidationFailed("the target has no InnoDB engine: the writer needs its transactions")
        if bulk:
            execute(cur, "SELECT @@GLOBAL.local_infile")
            if not int(cur.fetchone()[0] or 0):
                raise ValidationFailed(
                    "the target's local_infile is OFF, and the full load and CDC apply use LOAD DATA LOCAL INFILE:"
                    " run SET GLOBAL local_infile = ON (or local_infile=1 under [mysqld] in the server's config)")
    missing = missing_privileges(_grants(conn), database)
    if missing:
        raise ValidationFailed(f"the target user lacks privilege(s) {', '.join(missing)} on {database}.*"
                               " (GRANT them, or ALL PRIVILEGES, to the user)")
    return info
