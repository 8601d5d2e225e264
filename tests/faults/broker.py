"""The suite's own RabbitMQ vhost and user on the machine's broker (created and deleted with
rabbitmqctl): faults are scoped to them (restart_vhost, close_all_user_connections), so other
users of the broker are not disturbed. In CI a missing broker FAILS the tests that need it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from tests.faults.harness import SECRETS, in_ci
from tests.faults.report import RESULTS


def _ctl(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def broker_available() -> str | None:
    """None when usable, else why not."""
    if not shutil.which("rabbitmqctl"):
        return "rabbitmqctl not found"
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            pass
    except OSError as exc:
        return f"no broker at 127.0.0.1:5672 ({exc})"
    return None


def require_broker() -> None:
    why = broker_available()
    if why is None:
        return
    if in_ci():
        pytest.fail(f"RabbitMQ is required in CI: {why}")
    pytest.skip(f"RabbitMQ not available here: {why} (in CI this fails)")


@dataclass
class Vhost:
    name: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{quote(self.password, safe='')}@127.0.0.1:5672/{quote(self.name, safe='')}"

    def restart(self, down_s: float = 3.0) -> None:
        """A broker restart as the suite's clients see it: every connection dropped and new ones
        refused for `down_s` seconds (vhost connection limit 0), queues kept (durable). The real
        `stop_app`/`start_app` hits every user of the broker: only with TREMPY_FAULTS_BROKER_RESTART=1."""
        if os.environ.get("TREMPY_FAULTS_BROKER_RESTART", "") in ("1", "true", "yes"):
            _ctl("stop_app")
            time.sleep(down_s)
            _ctl("start_app")
            _ctl("await_startup", check=False)
            RESULTS.fault("rabbitmq stop_app/start_app")
            return
        _ctl("set_vhost_limits", "-p", self.name, '{"max-connections": 0}')
        _ctl("close_all_user_connections", self.user, "fault injection: broker restart")
        time.sleep(down_s)
        _ctl("clear_vhost_limits", "-p", self.name)
        RESULTS.fault("rabbitmq outage (connections dropped and refused)")

    def close_connections(self) -> None:
        _ctl("close_all_user_connections", self.user, "fault injection")
        RESULTS.fault("rabbitmq close_all_user_connections")

    def queue_depth(self, queue: str) -> int:
        out = _ctl(
            "list_queues", "-p", self.name, "name", "messages", "--no-table-headers", "-q"
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == queue:
                return int(parts[1])
        return 0


@contextlib.contextmanager
def vhost(label: str) -> Iterator[Vhost]:
    require_broker()
    suffix = secrets.token_hex(4)
    v = Vhost(
        f"trempy_faults_{label}_{suffix}", f"trempy_faults_{suffix}", "rmq_" + secrets.token_hex(12)
    )
    SECRETS.add(v.password)
    _ctl("add_vhost", v.name)
    _ctl("add_user", v.user, v.password)
    _ctl("set_permissions", "-p", v.name, v.user, ".*", ".*", ".*")
    try:
        yield v
    finally:
        _ctl("delete_vhost", v.name, check=False)
        _ctl("delete_user", v.user, check=False)
