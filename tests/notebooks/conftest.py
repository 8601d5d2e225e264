"""Fixtures for the notebook surface: a real IPython shell, a sample HR source, saved connections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from trempy_nb.connections import save_connection
from trempy_nb.db import connect
from trempy_nb.demo import SCHEMA_SQL, demo_settings
from trempy_nb.embedded import Cluster

ROWS = 500


@pytest.fixture
def hr(pg_cluster: Cluster, source_uri: str, target_uri: str, trempy_home: Path) -> dict[str, Any]:
    """A source with the sample HR schema, a target, both saved as connections hr and dw."""
    with connect(source_uri, autocommit=True) as conn:
        conn.execute(sql.SQL(SCHEMA_SQL.replace("%(rows)s", str(ROWS))))
    save_connection("hr", source_uri)
    save_connection("dw", target_uri)
    return {
        "source": source_uri,
        "target": target_uri,
        "password": pg_cluster.password,
        "home": trempy_home,
    }


def hr_settings(name: str = "t_hr", mode: str = "scd2") -> dict[str, Any]:
    doc = demo_settings(ROWS)
    doc["task"].update({"task_name": name, "source": "hr", "target": "dw", "interval_seconds": 0.2})
    doc["task"]["cdc_settings"] = {"mode": mode}
    return json.loads(json.dumps(doc))


@pytest.fixture
def shell() -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    from trempy_nb.notebook.commands import SESSION

    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("trempy_nb")
    try:
        yield ip
    finally:
        SESSION.clear()
        ip.extension_manager.unload_extension("trempy_nb")
        ip.user_ns.pop("_", None)
        ip.config.pop("Trempy", None)  # %config values would carry over to the next test


def scan_for(secret: str, *paths: Path, texts: tuple[str, ...] = ()) -> list[str]:
    """Where `secret` occurs (files read as bytes, folders recursively, plus texts)."""
    hits = []
    needle = secret.encode()
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for f in files:
            if needle in f.read_bytes():
                hits.append(str(f))
    hits += [f"text[{i}]" for i, t in enumerate(texts) if secret in t]
    return hits
