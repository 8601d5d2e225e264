"""reports: key syntax, the two output forms, what a run records; cli: no silent plug-ins."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from trempy_nb import cli, reports
from trempy_nb import connections as conns
from trempy_nb.errors import SettingsError, UnknownTask
from trempy_nb.metadata import MetadataStore

PW = "Rep0rt-Secret-pw"
ONE = reports.TargetTable("dw", "public", "t", "dw", "t_hist", ("id", "v", "note"), ("id",), "scd2")
TWO = reports.TargetTable(
    "dw", "s", "t", "s", "t", ("id", "region", "v"), ("id", "region"), "upsert"
)


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    conns._forget_secrets()
    yield
    conns._forget_secrets()


@pytest.fixture
def store(trempy_home: Path) -> Iterator[MetadataStore]:
    s = MetadataStore()
    yield s
    s.close()


def test_key_syntax_one_and_composite() -> None:
    assert reports.parse_key(["42"], ONE) == {"id": "42"}
    assert reports.parse_key(["id=42"], ONE) == {"id": "42"}
    assert reports.parse_key(["note=a=b"], ONE) == {"note": "a=b"}  # '=' inside a value
    assert reports.parse_key(["-1=x"], ONE) == {"id": "-1=x"}  # not a column name: a value
    assert reports.parse_key(["id=42", "region=eu"], TWO) == {"id": "42", "region": "eu"}
    with pytest.raises(SettingsError, match=r"'nope' is not a column of dw.t_hist .*--key VALUE"):
        reports.parse_key(["nope=1"], ONE)
    with pytest.raises(
        SettingsError, match="'42' is not COLUMN=VALUE: --key id=VALUE --key region=VALUE"
    ):
        reports.parse_key(["42"], TWO)
    with pytest.raises(SettingsError, match="given twice"):
        reports.parse_key(["id=1", "id=2"], ONE)
    with pytest.raises(SettingsError, match="give the key"):
        reports.parse_key([], ONE)


def test_pick_target_by_any_of_its_names() -> None:
    for name in ("public.t", "t", "dw.t_hist", "t_hist", None):
        assert reports.pick_target("task", [ONE, TWO], name) is ONE
    assert reports.pick_target("task", [ONE, TWO], "s.t") is TWO
    with pytest.raises(
        SettingsError, match=r"'x' is not part of task task \(tables: public.t, s.t\)"
    ):
        reports.pick_target("task", [ONE, TWO], "x")
    with pytest.raises(SettingsError, match="no recorded run"):
        reports.pick_target("task", [], None)


def test_json_and_table_text_are_plain_exact_and_masked() -> None:
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert (
        reports.plain(Decimal("12345678901234567890.000000001")) == "12345678901234567890.000000001"
    )
    assert reports.plain(ts) == "2026-01-02T03:04:05.123456+00:00"
    assert reports.plain(dt.date(2026, 1, 2)) == "2026-01-02"
    assert reports.plain(b"\x00\xff") == "\\x00ff"
    assert reports.plain(uid) == str(uid)
    assert reports.plain({"k": [Decimal("1.5"), None]}) == {"k": ["1.5", None]}
    frame = pl.DataFrame(
        {
            "n": [1, 22],
            "at": [ts, None],
            "msg": [f"failed for postgresql://u:{PW}@h/db\nDETAIL: x", "ok"],
            "payload": [json.dumps({"id": 1}), None],
        }
    )
    data = json.loads(reports.json_text(frame, json_columns=("payload",)))
    assert data == [
        {
            "n": 1,
            "at": "2026-01-02T03:04:05.123456+00:00",
            "msg": "failed for postgresql://u:***@h/db\nDETAIL: x",
            "payload": {"id": 1},
        },
        {"n": 22, "at": None, "msg": "ok", "payload": None},
    ]
    text = reports.table_text(frame)
    lines = text.splitlines()
    assert len(lines) == 4 and PW not in text
    assert lines[0].split() == ["n", "at", "msg", "payload"]
    assert lines[2].startswith(
        " 1  2026-01-02T03:04:05.123456+00:00  failed for postgresql://u:***@h/db DETAIL: x"
    )
    assert lines[3].startswith("22")  # numbers right-aligned
    assert reports.table_text(frame.clear()).endswith("(no rows)")
    assert (
        reports.table_text(pl.DataFrame({"s": ["x" * 300]}), max_width=20).splitlines()[2]
        == "x" * 19 + "…"
    )


def test_targets_recorded_without_passwords(store: MetadataStore) -> None:
    rows = [
        {
            "source_schema": "public",
            "source_table": "t",
            "target_schema": "dw",
            "target_table": "t_hist",
            "columns": ["id", "v"],
            "key_columns": ["id"],
            "mode": "scd2",
            "start_col": "a",
            "end_col": "b",
            "current_col": "c",
        }
    ]
    store.record_targets("lit", f"postgresql://u:{PW}@h/db", rows)
    store.record_targets("var", "postgresql://u:${DW_PW}@h/db", rows)
    store.record_targets("named", "dw", rows)
    (lit,) = reports.recorded_targets(store, "lit")
    assert lit.target == "postgresql://u:***@h/db" and lit.key_columns == ("id",)
    assert lit.columns == ("id", "v") and (lit.start_col, lit.mode) == ("a", "scd2")
    assert reports.recorded_targets(store, "var")[0].target == "postgresql://u:${DW_PW}@h/db"
    assert reports.recorded_targets(store, "named")[0].target == "dw"
    with pytest.raises(
        SettingsError,
        match=r"literal password, which is never recorded \(postgresql://u:\*\*\*@h/db\)",
    ):
        reports.history(lit, {"id": 1})
    # a notebook task saved with that literal password: the store moved it to a connection
    store.save_task(
        "lit",
        {"task": {"task_name": "lit", "source": "src", "target": f"postgresql://u:{PW}@h/db"}},
    )
    assert reports.recorded_targets(store, "lit")[0].target == "lit-target"
    store.record_targets("named", "dw", [])  # a later run replaces what an earlier one recorded
    assert reports.recorded_targets(store, "named") == []
    assert PW.encode() not in store.path.read_bytes()


def test_known_names_are_saved_or_run_tasks(store: MetadataStore) -> None:
    store.save_task("saved_one", {"task": {"task_name": "saved_one", "source": "a", "target": "b"}})
    store.start_run("ran_one", "cdc")
    assert store.task_names() == ["ran_one", "saved_one"]
    reports.check_known(store, "ran_one")
    with pytest.raises(
        UnknownTask, match="unknown task 'nope'; known tasks: ran_one, saved_one"
    ) as info:
        reports.check_known(store, "nope")
    assert info.value.exit_code == 2
    store.start_run("ran_one", "cdc")
    assert reports.runs(store, "ran_one", limit=1).height == 1
    with pytest.raises(SettingsError, match="--limit must be a positive number"):
        reports.runs(store, "ran_one", limit=0)


def test_a_plugin_that_fails_to_import_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "PLUGINS", (*cli.PLUGINS, ("bogus", "trempy_nb.no_such_module")))
    with pytest.raises(
        cli.PluginError, match="subcommand 'bogus' cannot be loaded from trempy_nb.no_such_module"
    ):
        cli.build_parser()
    assert cli.main(["ai", "--help"]) == 1  # a plug-in command loads the plug-ins (core ones do not)
    err = capsys.readouterr().err
    assert "trempy-nb: error: subcommand 'bogus' cannot be loaded" in err and "Traceback" not in err


def test_every_registered_subcommand_loads() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "trempy_nb.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for command in ("runs", "stats", "errors", "history", "connect", "ai", "notebook"):
        assert f"    {command} " in res.stdout
