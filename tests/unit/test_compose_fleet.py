"""compose.yaml runs a fleet: a scalable `worker` service built from the Dockerfile, whose state
store is the compose PostgreSQL the notebook service uses too (Docker does not run in CI: the
files are checked as data)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))


def test_worker_service_is_scalable_and_points_at_the_compose_postgres() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert worker["build"] == "." and worker["command"][0] == "worker"
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=3 needs both absent
    assert worker["stop_signal"] == "SIGTERM"
    env = worker["environment"]
    assert {"TREMPY_METADATA_URL", "TREMPY_NB_SOURCE", "TREMPY_NB_TARGET", "RABBITMQ_URL"} <= set(env)
    url = urlsplit(env["TREMPY_METADATA_URL"])
    assert url.scheme == "postgresql"
    host = url.hostname
    assert host in services and str(services[host]["image"]).startswith("postgres:")
    assert host in worker["depends_on"] and worker["depends_on"][host]["condition"] == "service_healthy"
    # the notebook submits to the same store the workers read
    assert services["jupyter"]["environment"]["TREMPY_METADATA_URL"] == env["TREMPY_METADATA_URL"]
    # no literal password: compose substitutes it from the environment
    assert re.search(r":\$\{TARGET_PASSWORD:-[^}]*\}@", env["TREMPY_METADATA_URL"])


def test_dockerfile_runs_the_cli_as_a_worker() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["trempy-nb"\]$', text, re.M)
    assert re.search(r'^CMD \["worker"\]$', text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)  # not as root
    copied = re.findall(r"^COPY (.+) \./", text, re.M)
    for item in " ".join(copied).split():
        assert (REPO / item).exists(), item
