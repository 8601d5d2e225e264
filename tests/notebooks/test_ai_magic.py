"""`%trempy ai` against a real local chat-completions server and a real PostgreSQL:
the draft opens in the builder, and the settings it produces validate and run unchanged."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chat_server import KEY, ChatServer
from tests.notebooks.test_magics import run
from trempy_nb.ai import load_examples
from trempy_nb.db import connect
from trempy_nb.notebook.magics import TrempyMagicError
from trempy_nb.task import Task

def _example(mode: str) -> dict[str, Any]:
    for ex in load_examples():
        settings = ex.get("settings", ex)
        if settings["task"]["cdc_settings"]["mode"] == mode:
            return ex
    raise AssertionError(f"no {mode} example shipped")


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_ai_magic_opens_builder_and_the_settings_run(shell: Any, hr: dict, chat: ChatServer, mode: str) -> None:
    example = _example(mode)
    answer = copy.deepcopy(example["settings"])
    answer["task"]["replication_type"] = "full_load"  # a one-shot run keeps the test short
    chat.script(answer)
    builder = run(shell, f'%trempy ai t_ai_{mode} "{example["prompt"]}" --source hr --target dw')
    doc = builder.settings if isinstance(builder.settings, dict) else builder.settings()
    assert doc["task"]["source"] == "hr" and doc["task"]["target"] == "dw"
    assert doc["tables"] == answer["tables"] and doc["filters"] == answer["filters"]
    sent = json.dumps(chat.requests[0].body)
    assert "employees" in sent and KEY not in repr(builder)
    # the drafted settings run unchanged and land rows
    result = Task.from_settings(doc).run(progress=False)
    assert result.status == "succeeded"
    with connect(hr["target"]) as conn:
        written = sum(
            conn.execute(f"SELECT count(*) FROM {r.target}").fetchone()[0]  # noqa: S608 - names from our own result
            for r in result.tables
        )
    assert written == sum(r.rows_written for r in result.tables) > 0


def test_ai_magic_reports_a_dead_endpoint_in_one_line(shell: Any, hr: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TREMPY_AI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("TREMPY_AI_API_KEY", KEY)
    with pytest.raises(TrempyMagicError) as err:
        run(shell, '%trempy ai t_ai "employees into scd2" --source hr --target dw')
    assert KEY not in str(err.value) and "\n" not in str(err.value)
