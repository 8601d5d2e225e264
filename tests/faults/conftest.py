"""Fault-injection suite (issue 7): fixtures, the `faults` marker, --faults-long, the report.

The suite is bounded for CI (small workloads, >= 10 kill -9 of the local runner, a time limit on
every wait). `--faults-long` (or TREMPY_FAULTS_LONG=1) repeats the kill loops many more times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.faults import harness
from tests.faults.report import RESULTS, RESULTS_JSON, render, write_report

_T0 = time.monotonic()


def add_options(parser: pytest.Parser) -> None:
    """--faults-long. Also called from tests/conftest.py: pytest reads options only from the
    conftests of the command-line paths, so `pytest tests --faults-long` needs it there too."""
    try:
        parser.getgroup("faults").addoption(
            "--faults-long",
            action="store_true",
            default=False,
            help="fault suite: many more kill -9 rounds and larger workloads",
        )
    except ValueError:  # already registered by the other conftest
        pass


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault-injection tests (tests/faults)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.faults)


def faults_long(config: pytest.Config) -> bool:
    try:
        opt = bool(config.getoption("--faults-long"))
    except ValueError:  # option not registered (conftest loaded late): env fallback
        opt = False
    return opt or os.environ.get("TREMPY_FAULTS_LONG", "") in ("1", "true", "yes")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return faults_long(request.config)


@pytest.fixture(scope="session")
def pg_pair() -> Iterator[harness.PgPair]:
    pair = harness.PgPair(harness.new_cluster(), harness.new_cluster())
    try:
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def pair(pg_pair: harness.PgPair) -> harness.PgPair:
    """The session's clusters, running (a previous test may have crashed one)."""
    harness.ensure_up(pg_pair.src)
    harness.ensure_up(pg_pair.tgt)
    return pg_pair


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if "faults" not in item.keywords:
        return
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        status = rep.outcome
        if hasattr(rep, "wasxfail"):
            status = "xfail" if rep.skipped else "xpass"
        RESULTS.cases[item.nodeid] = status


def _whole_suite(session: pytest.Session) -> bool:
    """Only a run of every fault case rewrites the committed REPORT.md (a single case would not)."""
    opt = session.config.option
    if getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "lf", False):
        return False
    return not any("::" in str(a) or str(a).endswith(".py") for a in session.config.args)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RESULTS.cases:
        return
    RESULTS.wall_s = time.monotonic() - _T0
    RESULTS.save(RESULTS_JSON)
    if _whole_suite(session):
        write_report(RESULTS)
    harness.cleanup_session_dir()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS.cases:
        return
    terminalreporter.section("fault-injection report (tests/faults/REPORT.md)")
    for line in render(RESULTS).splitlines():
        terminalreporter.write_line(line)
