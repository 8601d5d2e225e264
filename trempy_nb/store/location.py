"""Where the state store lives: an argument, else `$TREMPY_METADATA_URL`, else SQLite in $TREMPY_HOME.

A `postgresql://`/`postgres://` URL, a keyword conninfo or the name of a saved connection
selects PostgreSQL; a path (or `sqlite:///path`) selects SQLite. A bare word that is
neither a saved connection nor an existing file is refused rather than silently becoming
a new local file: a typo in a fleet's store name must not split the fleet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trempy_nb.connections import NAME_RE, SCHEMES, get_connection, home, resolve
from trempy_nb.errors import SettingsError
from trempy_nb.redact import mask

__all__ = ["ENV_VAR", "Location", "resolve_location"]

#: the environment variable naming the state store (the CLI's --metadata sets it)
ENV_VAR = "TREMPY_METADATA_URL"
SQLITE_FILE = "metadata.sqlite3"


@dataclass(frozen=True)
class Location:
    """A resolved store location: `target` is a file path (sqlite) or a conninfo (postgresql)."""

    kind: Literal["sqlite", "postgresql"]
    target: str

    def __str__(self) -> str:
        return mask(self.target)


def _saved(name: str) -> bool:
    try:
        get_connection(name)
    except SettingsError:
        return False
    return True


def resolve_location(location: str | Path | None = None) -> Location:
    """The backend and address of `location` (see the module docstring); SettingsError if unusable."""
    if location is None:
        location = os.environ.get(ENV_VAR, "").strip() or None
        if location is None:
            return Location("sqlite", str(home() / SQLITE_FILE))
    if isinstance(location, Path):
        return Location("sqlite", str(location))
    text = str(location).strip()
    if not text:
        raise SettingsError(f"empty state store location (set {ENV_VAR} or --metadata to a postgresql:// URL or a file)")
    lower = text.lower()
    if lower.startswith("sqlite://"):
        path = text[len("sqlite://"):]
        if not path:
            raise SettingsError(f"no file in state store location {mask(text)} (sqlite:///path/to/file)")
        return Location("sqlite", path)
    if lower.startswith(("mysql://", "mariadb://")):
        raise SettingsError(f"the state store runs on SQLite or PostgreSQL, not MariaDB/MySQL: {mask(text)}")
    if lower.startswith(SCHEMES) or ("=" in text and "/" not in text.split("=", 1)[0]):
        return Location("postgresql", resolve(text))
    if NAME_RE.fullmatch(text):
        if _saved(text):
            return Location("postgresql", resolve(text))
        if not Path(text).is_file():
            raise SettingsError(
                f"state store {text!r} is not a saved connection, a postgresql:// URL or an existing"
                " SQLite file (write ./NAME for a new file here)"
            )
    return Location("sqlite", str(Path(text).expanduser()))
