"""trempy_nb: notebook-native PostgreSQL change data capture."""

from __future__ import annotations

__version__ = "0.1.0"
