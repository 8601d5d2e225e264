"""`trempy-nb runs/stats/errors/history/connect` as a user runs them: real task runs (full load,
then CDC changes into an SCD2 target, one rejected by a target constraint), then the CLI as a
subprocess against the same $TREMPY_HOME. Outputs are compared with the target table and with
the changes the test made, never with the engine's own figures."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdc_helpers import drop_task, execute, rows, run_cli, settings, write_settings
from trempy_nb.connections import save_connection
from trempy_nb.embedded import Cluster
from trempy_nb.notebook import commands
from trempy_nb.reports import records
from trempy_nb.task import Task

ALL_OFF = {f"stop_if_{op}_error": False for op in ("insert", "update", "delete", "upsert", "scd2")}
OUTPUTS: list[str] = []  # every stdout/stderr of this module, scanned for the password


def cli(*args: str, input: str | None = None) -> Any:
    res = run_cli(list(args), input=input)
    OUTPUTS.extend([res.stdout, res.stderr])
    return res


def ok_json(*args: str) -> list[dict[str, Any]]:
    res = cli(*args, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # stdout is the JSON array and nothing else
    assert isinstance(data, list) and all(isinstance(r, dict) for r in data)
    return data


def ok_text(*args: str) -> str:
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture
def task_name(source_uri: str) -> Iterator[str]:
    name = "r" + uuid.uuid4().hex[:10]
    yield name
    drop_task(source_uri, name)


@pytest.fixture
def scd2_task(
    pg_cluster: Cluster,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    task_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Full load of 5 rows, then 5 changes (one rejected by a target CHECK), run by the CLI.

    The source is a saved connection, the target a `${VAR}` URI: neither holds a password,
    so `history NAME` can reach the target from what the run recorded."""
    save_connection("src", source_uri)
    monkeypatch.setenv("TGT_PW", pg_cluster.password)
    target = target_uri.replace(f":{pg_cluster.password}@", ":${TGT_PW}@")
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int, s text)")
    execute(source_uri, "INSERT INTO t SELECT i, i * 10, 's' || i FROM generate_series(1, 5) i")
    doc = settings(
        task_name, "src", target, rtype="full_load_and_cdc", mode="scd2", error_handling=ALL_OFF
    )
    path = write_settings(tmp_path / "task.json", doc)
    first = cli("run", str(path), "--until-caught-up", "-q")
    assert first.returncode == 0, first.stderr
    execute(target_uri, "ALTER TABLE public.t ADD CONSTRAINT v_small CHECK (v < 1000)")
    for statement in (
        "UPDATE t SET v = 21 WHERE id = 2",
        "UPDATE t SET s = 'two' WHERE id = 2",
        "INSERT INTO t VALUES (6, 60, 's6')",
        "DELETE FROM t WHERE id = 5",
        "UPDATE t SET v = 5000 WHERE id = 3",  # rejected by v_small: recorded, skipped
    ):
        execute(source_uri, statement)
    second = cli("run", str(path), "--until-caught-up", "--start-mode", "continue", "-q")
    assert second.returncode == 0, second.stderr
    return {
        "name": task_name,
        "path": path,
        "target": target_uri,
        "password": pg_cluster.password,
        "home": trempy_home,
    }


def test_runs_stats_errors_history(scd2_task: dict[str, Any]) -> None:
    name, path, tgt = scd2_task["name"], str(scd2_task["path"]), scd2_task["target"]

    # runs: both runs, newest first; the settings file names the same task
    runs = ok_json("runs", name)
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert {r["task"] for r in runs} == {name} and runs[0]["started_at"] > runs[1]["started_at"]
    assert runs[0]["started_at"].endswith("+00:00")  # ISO-8601 with its zone
    assert ok_json("runs", path) == runs
    assert [r["run_id"] for r in ok_json("runs", name, "--limit", "1")] == [runs[0]["run_id"]]
    text = ok_text("runs", name)
    assert all(r["run_id"] in text for r in runs) and "succeeded" in text

    # stats: the full load wrote the 5 rows; CDC read exactly the 5 changes made
    stats = ok_json("stats", name)
    full = [s for s in stats if s["operation"] == "full_load"]
    cdc = [s for s in stats if s["operation"] == "cdc"]
    assert sum(s["rows_written"] for s in full) == 5
    assert sum(s["rows_read"] for s in cdc) == 5
    assert {(s["schema"], s["table"]) for s in stats} == {("public", "t")}
    assert ok_json("stats", name, "--table", "t") == stats
    assert ok_json("stats", name, "--table", "public.other") == []
    assert ok_json("stats", name, "--run", runs[1]["run_id"]) == full
    text = ok_text("stats", name)
    assert "full_load" in text and "cdc" in text and "rows_read" in text

    # errors: the one rejected change, with its key and payload
    errors = ok_json("errors", name)
    assert len(errors) == 1
    err = errors[0]
    assert (err["schema"], err["table"], err["task"]) == ("public", "t", name)
    assert "v_small" in err["error"] and err["run_id"] == runs[0]["run_id"]
    payload = json.dumps(err["payload"])  # embedded as an object, not JSON text
    assert ('"id": "3"' in payload or '"id": 3' in payload) and "5000" in payload
    assert ok_json("errors", path, "--table", "public.t") == errors
    text = ok_text("errors", name)
    assert "v_small" in text and len(text.splitlines()) == 3  # one line per error, folded

    # history: exactly the target's versions of key 2, oldest first
    db = rows(
        tgt,
        "SELECT v, s, scd_start_date, scd_end_date, scd_current FROM public.t"
        " WHERE id = 2 ORDER BY scd_start_date",
    )
    assert [(r[0], r[1]) for r in db] == [(20, "s2"), (21, "s2"), (21, "two")]
    hist = ok_json("history", name, "--key", "2")
    assert [(h["id"], h["v"], h["s"], h["scd_current"]) for h in hist] == [
        (2, v, s, cur) for v, s, _, _, cur in db
    ]
    assert [h["scd_start_date"] for h in hist] == [r[2].isoformat() for r in db]
    assert [h["scd_end_date"] for h in hist] == [r[3].isoformat() if r[3] else None for r in db]
    assert ok_json("history", name, "--key", "id=2") == hist
    assert ok_json("history", path, "--key", "2", "--table", "public.t") == hist
    assert ok_json("history", name, "--key", "5")[-1]["scd_current"] is False  # deleted
    assert ok_json("history", name, "--key", "99") == []
    text = ok_text("history", name, "--key", "2")
    lines = text.splitlines()
    assert len(lines) == 2 + len(db) and "two" in lines[-1] and lines[0].split()[0] == "id"
    assert db[0][2].isoformat() in text

    # the notebook verbs read the same rows through the same functions (this task never ran
    # in a notebook session: the store knows it from the CLI runs)
    assert records(commands.runs(name)) == runs
    assert records(commands.stats(name)) == stats
    assert records(commands.errors(name, table="t"), json_columns=("payload",)) == errors

    # bad input: clear, exit 2, nothing on stdout
    bad = cli("history", name, "--key", "nope=1")
    assert bad.returncode == 2 and "'nope' is not a column of public.t" in bad.stderr
    assert bad.stdout == ""
    bad = cli("history", name, "--key", "abc")
    assert bad.returncode == 2 and "does not fit public.t" in bad.stderr, bad.stderr
    bad = cli("history", name, "--key", "2", "--table", "other")
    assert bad.returncode == 2 and "tables: public.t" in bad.stderr
    bad = cli("runs", name, "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr


def test_unknown_task_exits_2_with_the_known_names(scd2_task: dict[str, Any]) -> None:
    for command in (["errors"], ["stats"], ["runs"], ["history", "--key", "1"]):
        res = cli(command[0], "no_such_task", *command[1:], "--json")
        assert res.returncode == 2, (command, res.stderr)
        assert res.stdout == ""
        assert "unknown task 'no_such_task'" in res.stderr and scd2_task["name"] in res.stderr
    missing = cli("runs", "nowhere/task.yaml")
    assert missing.returncode == 2 and "settings file not found" in missing.stderr


def test_no_password_in_any_output(scd2_task: dict[str, Any]) -> None:
    name = scd2_task["name"]
    for args in (
        ["runs", name],
        ["stats", name],
        ["errors", name],
        ["history", name, "--key", "3"],
    ):
        ok_json(*args)
        ok_text(*args)
    pw = scd2_task["password"]
    assert not [o for o in OUTPUTS if pw in o]
    assert pw.encode() not in (scd2_task["home"] / "metadata.sqlite3").read_bytes()


def test_literal_password_target_is_never_recorded(
    pg_cluster: Cluster,
    source_uri: str,
    target_uri: str,
    trempy_home: Path,
    task_name: str,
    tmp_path: Path,
) -> None:
    execute(source_uri, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    execute(source_uri, "INSERT INTO t VALUES (1, 10), (2, 20)")
    doc = settings(task_name, source_uri, target_uri, rtype="full_load", mode="upsert")
    Task.from_settings(doc).run(progress=False)
    pw = pg_cluster.password
    assert pw.encode() not in (trempy_home / "metadata.sqlite3").read_bytes()
    by_name = cli("history", task_name, "--key", "1")
    assert by_name.returncode == 2 and "literal password" in by_name.stderr
    assert pw not in by_name.stderr + by_name.stdout
    path = write_settings(tmp_path / "literal.json", doc)
    assert ok_json("history", str(path), "--key", "1") == [{"id": 1, "v": 10}]
    execute(target_uri, "DROP TABLE public.t")
    gone = cli("history", str(path), "--key", "1")
    assert gone.returncode == 1 and "public.t does not exist on the target" in gone.stderr
    assert pw not in "".join(OUTPUTS[-2:])


def test_connect_add_list_test_delete(
    pg_cluster: Cluster, target_uri: str, trempy_home: Path
) -> None:
    pw = pg_cluster.password
    bare = target_uri.replace(f":{pw}@", "@")
    added = cli("connect", "add", "dw2", bare, "--password-stdin", input=pw + "\n")
    assert added.returncode == 0, added.stderr
    assert "saved connection dw2" in added.stdout and "(tested)" in added.stdout
    listed = ok_json("connect", "list")
    assert [(c["name"], c["user"]) for c in listed] == [("dw2", "postgres")]
    assert "dw2" in ok_text("connect", "list")
    tested = cli("connect", "test", "dw2")
    assert tested.returncode == 0 and "dw2: ok" in tested.stdout, tested.stderr
    wrong = cli("connect", "add", "dw3", bare, "--password-stdin", input="wrong-password\n")
    assert wrong.returncode != 0 and "wrong-password" not in wrong.stderr + wrong.stdout
    assert [c["name"] for c in ok_json("connect", "list")] == ["dw2"]  # nothing saved
    assert cli("connect", "delete", "dw2").returncode == 0
    gone = cli("connect", "delete", "dw2")
    assert gone.returncode == 2 and "unknown connection 'dw2'" in gone.stderr
    assert not [o for o in OUTPUTS if pw in o]
    assert pw.encode() not in (trempy_home / "connections.json").read_bytes()
