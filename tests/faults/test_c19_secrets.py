"""Case 19: secrets. Every password the suite used (its clusters' superuser passwords, the
least-privilege roles', the broker user's) is searched for, raw and percent-encoded, in:
every runner log, every TREMPY_HOME (metadata store, saved connections), every settings file,
the target's state tables, executed notebooks under the repository, and in-process texts:
exception messages, reprs, RunResult texts, stats/logs/errors frames of runs given literal
passwords. Expected: zero hits. (This module runs last: it scans what the whole suite left.)"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.faults.harness import REPO, SCAN_PATHS, SCAN_TEXTS, SECRETS, fault_env, q
from tests.faults.report import RESULTS
from trempy_nb.errors import TrempyError


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += [f for f in p.rglob("*") if f.is_file()]
        elif p.is_file():
            out.append(p)
    return out


def _needles(secret: str) -> list[bytes]:
    return sorted({secret.encode(), quote(secret, safe="").encode()})


def _in_process_texts(env, monkeypatch, tmp_path) -> None:
    """Runs given URIs with literal passwords, in this process: collect what a user could see."""
    from trempy_nb.metadata import MetadataStore
    from trempy_nb.task import Task

    monkeypatch.setenv("TREMPY_HOME", str(tmp_path / "home19"))
    SCAN_PATHS.append(tmp_path / "home19")
    q(env.src, "CREATE TABLE public.sec (id int PRIMARY KEY, s text)")
    q(env.src, "INSERT INTO public.sec SELECT i, 'x' || i FROM generate_series(1, 50) i")
    doc = {
        "task": {
            "task_name": env.task,
            "source": env.src,
            "target": env.tgt,
            "replication_type": "full_load_and_cdc",
            "start_mode": "reload",
            "cdc_settings": {"mode": "scd2"},
        },
        "tables": [{"schema_name": "public", "table_name": "sec"}],
    }
    task = Task.from_settings(doc)
    SCAN_TEXTS.append(("repr(Task)", repr(task)))
    SCAN_TEXTS.append(("str(Task)", str(task)))
    result = task.run(until_caught_up=True, progress=False)
    SCAN_TEXTS.append(("str(RunResult)", str(result)))
    SCAN_TEXTS.append(("RunResult.stats", str(result.stats)))
    SCAN_TEXTS.append(("repr(RunResult)", repr(result)))
    runner = task.start()
    with contextlib.suppress(Exception):
        runner.stop_when_caught_up(60)
    SCAN_TEXTS.append(("Runner.stats", str(runner.stats())))
    SCAN_TEXTS.append(("repr(Runner)", repr(runner)))
    store = MetadataStore()
    for name in ("runs", "stats", "logs", "errors", "dead_letters", "list_tasks"):
        with contextlib.suppress(Exception):
            frame = getattr(store, name)()
            SCAN_TEXTS.append((f"MetadataStore.{name}", str(frame.rows())))
    # failures: wrong database, refused port, wrong password, missing table
    port_src = env.src.rsplit(":", 1)[1].split("/")[0]
    bad = [
        env.src.rsplit("/", 1)[0] + "/no_such_db",
        env.src.replace(f":{port_src}/", ":1/"),
        env.src.replace("@", "x@", 1),
    ]
    for uri in bad:
        d = {**doc, "task": {**doc["task"], "source": uri}}
        try:
            Task.from_settings(d).run(until_caught_up=True, progress=False)
        except TrempyError as exc:
            SCAN_TEXTS.append(("exception text", f"{exc!s} {exc!r} {exc.args!r}"))
    d = {**doc, "tables": [{"schema_name": "public", "table_name": "missing"}]}
    try:
        Task.from_settings(d).run(until_caught_up=True, progress=False)
    except TrempyError as exc:
        SCAN_TEXTS.append(("exception text", f"{exc!s} {exc!r}"))
    for name in ("runs", "logs", "errors"):
        with contextlib.suppress(Exception):
            SCAN_TEXTS.append((f"MetadataStore.{name}", str(getattr(store, name)().rows())))
    task.drop()


def test_c19_no_secret_leaks(pair, monkeypatch, tmp_path):
    with fault_env(pair, "sec") as env:
        _in_process_texts(env, monkeypatch, tmp_path)
        state = q(env.tgt, "SELECT string_agg(c::text, ' ') FROM trempy.checkpoints c")
        SCAN_TEXTS.append(("target trempy.checkpoints", str(state)))
    notebooks = [p for p in REPO.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    files = _files(SCAN_PATHS) + notebooks + _files([REPO / "tests" / "_artifacts"])
    assert SECRETS, "no passwords registered"
    planted = tmp_path / "planted.log"  # the scan itself finds a planted password
    planted.write_text("x " + quote(next(iter(SECRETS)), safe="") + " y")
    assert _scan([planted], []), "the scan misses a planted password"
    hits = _scan(files, SCAN_TEXTS)
    RESULTS.secret_hits += len(hits)
    RESULTS.secrets_searched = len(SECRETS)
    RESULTS.secret_places_searched = len(files) + len(SCAN_TEXTS)
    assert len(files) >= 3 and len(SCAN_TEXTS) > 10, (len(files), len(SCAN_TEXTS))
    assert not hits, "password found in:\n" + "\n".join(hits[:20])


def _scan(files: list[Path], texts: list[tuple[str, str]]) -> list[str]:
    hits: list[str] = []
    for f in files:
        with contextlib.suppress(OSError):
            data = f.read_bytes()
            for s in SECRETS:
                if any(n in data for n in _needles(s)):
                    hits.append(f"{f}: password of length {len(s)}")
    for where, text in texts:
        for s in SECRETS:
            if any(n.decode() in text for n in _needles(s)):
                hits.append(f"{where}: {text[:200]!r}".replace(s, "<PASSWORD>"))
    return hits


@pytest.fixture(autouse=True)
def _no_secret_key(monkeypatch):
    monkeypatch.delenv("TREMPY_SECRET_KEY", raising=False)
