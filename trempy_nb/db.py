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
        raise ConnectionFailed(f"cannot connect to {mask(uri)}: {mask(str(exc)).strip().splitlines()[0]}") from None
