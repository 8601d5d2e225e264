"""Shared fixtures: one throwaway PostgreSQL cluster (wal_level=logical) per test session.

Each test gets fresh source/target databases in that cluster, so tests never
touch or depend on a shared server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.chat_server import KEY as CHAT_KEY
from tests.chat_server import ChatServer
from trempy_nb.embedded import Cluster, start_cluster

ARTIFACTS = Path(__file__).parent / "_artifacts"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        _drop_slots(cluster)
        cluster.destroy()


def _drop_slots(cluster: Cluster) -> None:
    try:
        with psycopg.connect(cluster.uri(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active"
            )
    except psycopg.Error:
        pass


def _new_db(cluster: Cluster, prefix: str) -> str:
    return cluster.create_database(f"{prefix}_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def source_uri(pg_cluster: Cluster) -> str:
    return _new_db(pg_cluster, "src")


@pytest.fixture
def target_uri(pg_cluster: Cluster) -> str:
    return _new_db(pg_cluster, "tgt")


@pytest.fixture
def trempy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated $TREMPY_HOME (saved connections, key file, metadata store)."""
    home = tmp_path / "trempy_home"
    monkeypatch.setenv("TREMPY_HOME", str(home))
    monkeypatch.delenv("TREMPY_SECRET_KEY", raising=False)
    return home


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    """A scripted chat-completions server on loopback; the environment points the assistant at it."""
    with ChatServer() as server:
        monkeypatch.setenv("TREMPY_AI_BASE_URL", server.base_url)
        monkeypatch.setenv("TREMPY_AI_MODEL", "test-model")
        monkeypatch.setenv("TREMPY_AI_API_KEY", CHAT_KEY)
        monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        yield server


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the fault suite (tests/faults/conftest.py), so `pytest tests --faults-long` works."""
    from tests.faults.conftest import add_options

    add_options(parser)
