"""Opening PostgreSQL connections with the session settings every module relies on.

Values travel as PostgreSQL text; fixing TimeZone, DateStyle and float digits
makes that text canonical (the same bytes from COPY, from pgoutput and from
a query), so comparisons and round trips are exact.
"""

from __future__ import annotations

from typing import Any

import psycopg

from trempy_nb.errors import ConnectionFailed
from trempy_nb.redact import mask

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3"

#: application_name prefix of a task's connections: `trempy_nb:<task>:<what>` (eviction finds them by it)
APP_PREFIX = "trempy_nb"


def task_app_name(task: str, what: str) -> str:
    """The application_name of a task's connection (`what`: lock, capture, apply, fullload, ...).
    PostgreSQL keeps 63 bytes of it: a longer task name is cut, and eviction matches the cut prefix."""
    return f"{APP_PREFIX}:{task}:{what}".encode()[:63].decode(errors="ignore")


def task_app_prefix(task: str) -> str:
    """What every application_name of the task's connections starts with (at most 63 bytes)."""
    return f"{APP_PREFIX}:{task}:".encode()[:63].decode(errors="ignore")


def connect(uri: str, *, autocommit: bool = False, application_name: str = "trempy_nb", **kwargs: Any) -> psycopg.Connection:
    """psycopg.connect with canonical session settings; errors never carry the password."""
    try:
        return psycopg.connect(
            uri,
            autocommit=autocommit,
            options=SESSION_OPTIONS,
            application_name=application_name,
            connect_timeout=kwargs.pop("connect_timeout", 10),
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {mask(uri)}: {mask(str(exc)).strip().splitlines()[0]}",
                               exc.sqlstate or refusal_sqlstate(str(exc))) from None


#: libpq reports a refused connection as text only (no SQLSTATE): the server's FATAL messages that
#: no retry can cure, by the SQLSTATE the server logged for them.
_REFUSALS = (
    ("password authentication failed", "28P01"),
    ("authentication failed", "28000"),
    ("no pg_hba.conf entry", "28000"),
    ("role \"", "28000"),  # role "x" does not exist
    ("database \"", "3D000"),  # database "x" does not exist
)


def refusal_sqlstate(message: str) -> str | None:
    """The SQLSTATE of a connection the server refused for good (who we are, which database), else None."""
    if "does not exist" not in message and "authentication" not in message and "pg_hba" not in message:
        return None
    for phrase, code in _REFUSALS:
        if phrase in message:
            return code
    return None
