"""AI task assistant against a real local chat-completions server and a real PostgreSQL source.

No test calls the internet: TREMPY_AI_BASE_URL points at tests/chat_server.py on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.chat_server import KEY, ChatServer, Reply
from trempy_nb import settings as settings_model
from trempy_nb.ai import (
    AssistantError,
    create_task,
    describe_catalog,
    load_examples,
    resolve_config,
    tutorial_text,
)
from trempy_nb.ai import cli as ai_cli
from trempy_nb.ai.assistant import parse_answer, validate_settings
from trempy_nb.errors import SettingsError
from trempy_nb.settings import parse_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {ex["task_name"]: ex for ex in load_examples()}
UPSERT = EXAMPLES["fl_cdc_upsert_employees"]
SCD2 = EXAMPLES["fl_cdc_scd2_employees"]
GROUPED = EXAMPLES["fl_cdc_upsert_senior_or_rich"]

HR_DDL = """
CREATE SCHEMA employees;
CREATE TABLE employees.employee (
    id integer PRIMARY KEY,
    first_name text NOT NULL,
    last_name text NOT NULL,
    birth_date date,
    salary numeric(12,2)
);
CREATE TABLE employees.employee_salary (
    id integer PRIMARY KEY,
    employee_id integer NOT NULL REFERENCES employees.employee(id),
    salary numeric(12,2) NOT NULL,
    from_date date NOT NULL
);
INSERT INTO employees.employee VALUES
    (1, 'Ada', 'Lovelace', '1815-12-10', 7000), (2, 'Alan', 'Turing', '1912-06-23', 4000);
INSERT INTO employees.employee_salary VALUES
    (1, 1, 7000, '2024-01-01'), (2, 2, 4000, '2024-01-01'), (3, 2, 5200, '2025-01-01');
"""


@pytest.fixture
def hr(source_uri: str) -> str:
    """The source database with the `employees` schema of the seed examples."""
    with psycopg.connect(source_uri, autocommit=True) as conn:
        conn.execute(HR_DDL)
    return source_uri


def expected(example: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    """The example's settings (or a settings document) with the given refs forced in."""
    doc = copy.deepcopy(example.get("settings", example))
    doc["task"]["source"] = source
    doc["task"]["target"] = target
    return doc


def with_filter(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `doc` whose first filter is changed (None removes a key)."""
    doc = copy.deepcopy(doc)
    f = doc["filters"][0]
    for k, v in changes.items():
        if v is None:
            f.pop(k, None)
        else:
            f[k] = v
    return doc


def starts_with_on_salary(doc: dict[str, Any]) -> dict[str, Any]:
    return with_filter(doc, filter_type="starts_with", value="5")


def password_of(uri: str) -> str:
    return str(conninfo_to_dict(uri).get("password") or "")


# --- the happy path ----------------------------------------------------------------


@pytest.mark.parametrize("example", [UPSERT, SCD2, GROUPED], ids=["upsert", "scd2", "or_group"])
def test_good_answer_becomes_expected_settings(
    chat: ChatServer, hr: str, target_uri: str, example: dict[str, Any]
) -> None:
    chat.script(example["settings"])  # answers with hr/dw refs: the tool forces the given ones
    result = create_task(example["prompt"], hr, target_uri, example["task_name"])
    assert result.ok, result.errors
    assert result.errors == []
    assert result.rounds == 1 and len(chat.requests) == 1
    assert result.settings == expected(example, hr, target_uri)
    assert result.task_settings is not None
    assert result.task_settings.to_dict() == result.settings
    assert result.answers == [json.dumps(example["settings"])]
    assert validate_settings(result.task_settings, hr) == []


def test_request_carries_model_options_tutorial_and_catalog(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    chat.script(UPSERT["settings"])
    create_task(UPSERT["prompt"], hr, target_uri, "my_task")
    (req,) = chat.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = req.body
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    # the packaged tutorial (with its few-shot examples) and the JSON Schema
    assert tutorial_text() in system["content"]
    assert "Answer with **one JSON object and nothing else**" in system["content"]
    assert UPSERT["prompt"] in system["content"] and SCD2["prompt"] in system["content"]
    assert '"title":"trempy_nb task settings"' in system["content"]
    # the live catalog: tables, columns, types, keys
    catalog = system["content"].split("## Catalog of the source database (live)")[1]
    for needle in (
        "employees.employee (primary key: id",
        "employees.employee_salary (primary key: id",
        "first_name: text not null",
        "birth_date: date",
        "salary: numeric(12,2)",
        "from_date: date not null",
        "employee_id: integer not null",
    ):
        assert needle in catalog, needle
    # the user's sentence, the fixed refs and task name; never a password or the key
    assert UPSERT["prompt"] in user["content"]
    assert "Task name: my_task" in user["content"]
    raw = json.dumps(body)
    assert password_of(hr) and password_of(hr) not in raw
    assert KEY not in raw


# --- repair rounds -----------------------------------------------------------------


def test_invalid_operator_triggers_one_repair_round_with_validator_errors(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    bad = starts_with_on_salary(UPSERT["settings"])
    chat.script(bad, UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, UPSERT["task_name"])
    assert result.ok, result.errors
    assert result.rounds == 2 and len(chat.requests) == 2
    assert result.settings == expected(UPSERT, hr, target_uri)  # the second answer wins
    # the follow-up carries the validator's own error text
    validator_errors = validate_settings(parse_settings(expected(bad, hr, target_uri)), hr)
    assert validator_errors and all(e.startswith("filters[0]") for e in validator_errors)
    follow_up = chat.requests[1].messages
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"]
    assert follow_up[2]["content"] == json.dumps(bad)
    for line in validator_errors:
        assert line in follow_up[3]["content"]


def test_empty_or_group_is_repaired_with_the_field_path(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    bad = copy.deepcopy(GROUPED["settings"])
    bad["filters"][1]["or_group"] = ""  # the model meant "or" but left the group unnamed
    chat.script(bad, GROUPED["settings"])
    result = create_task(GROUPED["prompt"], hr, target_uri, GROUPED["task_name"])
    assert result.ok and result.rounds == 2, result.errors
    assert result.settings == expected(GROUPED, hr, target_uri)
    follow_up = chat.requests[1].messages[-1]["content"]
    assert "- filters[1].or_group: an OR group needs a name" in follow_up


def test_unknown_column_is_repaired(chat: ChatServer, hr: str, target_uri: str) -> None:
    bad = with_filter(UPSERT["settings"], column_name="wage")
    chat.script(bad, UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, UPSERT["task_name"])
    assert result.ok and result.rounds == 2
    follow_up = chat.requests[1].messages[-1]["content"]
    assert "filters[0]" in follow_up and "wage" in follow_up


def test_model_level_error_is_repaired_with_the_field_path(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    bad = with_filter(UPSERT["settings"], filter_type="bigger_than")  # not a filter type
    chat.script(bad, UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, UPSERT["task_name"])
    assert result.ok and result.rounds == 2
    with pytest.raises(SettingsError) as exc:
        parse_settings(expected(bad, hr, target_uri))
    follow_up = chat.requests[1].messages[-1]["content"]
    assert "filters[0].filter_type" in follow_up
    assert str(exc.value).split("; ")[0] in follow_up


def test_still_invalid_after_max_rounds_is_reported_not_returned_as_good(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    bad = starts_with_on_salary(UPSERT["settings"])
    chat.script(bad, bad, bad, UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, max_rounds=2)
    assert not result.ok
    assert result.rounds == 3 and len(chat.requests) == 3 and chat.pending == 1
    assert result.task_settings is None
    assert result.errors and all(e.startswith("filters[0]") for e in result.errors)
    assert result.settings == expected(bad, hr, target_uri)  # the draft, for inspection
    assert "ok=False" in repr(result)
    with pytest.raises(SettingsError, match="not valid: filters\\[0\\]"):
        result.raise_for_errors()


def test_max_rounds_zero_means_no_repair(chat: ChatServer, hr: str, target_uri: str) -> None:
    chat.script(starts_with_on_salary(UPSERT["settings"]), UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, max_rounds=0)
    assert not result.ok and result.rounds == 1 and len(chat.requests) == 1


def test_best_attempt_is_kept_when_a_repair_answer_is_worse(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    one_error = starts_with_on_salary(UPSERT["settings"])
    chat.script(one_error, "not json at all", UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, max_rounds=2)
    assert not result.ok and result.rounds == 2
    assert result.settings == expected(one_error, hr, target_uri)
    assert any("not JSON" in e for e in result.errors)


def test_fenced_json_answer_is_accepted(chat: ChatServer, hr: str, target_uri: str) -> None:
    fenced = "Here you are:\n```json\n" + json.dumps(UPSERT["settings"], indent=2) + "\n```\n"
    chat.script(fenced)
    result = create_task(UPSERT["prompt"], hr, target_uri, UPSERT["task_name"])
    assert result.ok and result.settings == expected(UPSERT, hr, target_uri)


# --- failures: one clear line, never the key -------------------------------------------


def assert_clean(exc: AssistantError, *needles: str) -> None:
    text = str(exc)
    assert KEY not in text and KEY not in repr(exc)
    assert "\n" not in text
    for n in needles:
        assert n in text, text


def test_non_json_answer(chat: ChatServer, hr: str, target_uri: str) -> None:
    chat.script("Sure! I would replicate the employee table for you.")
    with pytest.raises(AssistantError) as exc:
        create_task(UPSERT["prompt"], hr, target_uri)
    assert_clean(exc.value, "not JSON", "Sure! I would")


def test_non_json_http_body(chat: ChatServer, hr: str, target_uri: str) -> None:
    chat.script(Reply.non_json_body())
    with pytest.raises(AssistantError) as exc:
        create_task(UPSERT["prompt"], hr, target_uri)
    assert_clean(exc.value, chat.base_url)


@pytest.mark.parametrize(
    ("status", "needle"), [(429, "HTTP 429"), (500, "HTTP 500"), (401, "HTTP 401")]
)
def test_http_errors(chat: ChatServer, hr: str, target_uri: str, status: int, needle: str) -> None:
    chat.script(Reply.error(status, f"scripted {status} (key was {KEY})"))
    with pytest.raises(AssistantError) as exc:
        create_task(UPSERT["prompt"], hr, target_uri, max_retries=0)
    assert_clean(exc.value, needle, chat.base_url)
    assert exc.value.transient is (status != 401)
    assert len(chat.requests) == 1


def test_one_transient_failure_is_retried_by_the_client(
    chat: ChatServer, hr: str, target_uri: str
) -> None:
    chat.script(Reply.error(500), UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, UPSERT["task_name"])  # max_retries=1
    assert result.ok and len(chat.requests) == 2


def test_timeout(chat: ChatServer, hr: str, target_uri: str) -> None:
    chat.script(Reply.slow(5.0, json.dumps(UPSERT["settings"])))
    started = time.monotonic()
    with pytest.raises(AssistantError) as exc:
        create_task(UPSERT["prompt"], hr, target_uri, timeout=0.5, max_retries=0)
    assert time.monotonic() - started < 4.0
    assert_clean(exc.value, "did not answer within 0.5s")
    assert exc.value.transient


def test_unreachable_endpoint(chat: ChatServer, hr: str, target_uri: str) -> None:
    from trempy_nb.embedded import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(AssistantError) as exc:
        create_task(UPSERT["prompt"], hr, target_uri, base_url=url, max_retries=0, timeout=5)
    assert_clean(exc.value, "cannot reach the AI endpoint", url)


def test_no_key(
    chat: ChatServer, hr: str, target_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TREMPY_AI_API_KEY")
    with pytest.raises(AssistantError, match="no API key") as exc:
        create_task(UPSERT["prompt"], hr, target_uri)
    assert_clean(exc.value)
    assert chat.requests == []


def test_key_fallbacks_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "TREMPY_AI_API_KEY",
        "DEEPSEEK_API_KEY",
        "OPENAI_API_KEY",
        "TREMPY_AI_BASE_URL",
        "TREMPY_AI_MODEL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert resolve_config().api_key == "sk-openai"
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek")
    config = resolve_config()
    assert config.api_key == "sk-deepseek"
    assert (config.base_url, config.model) == ("https://api.deepseek.com", "deepseek-chat")
    assert "sk-deepseek" not in repr(config)
    monkeypatch.setenv("TREMPY_AI_API_KEY", KEY)
    assert resolve_config().api_key == KEY
    assert resolve_config(api_key="explicit").api_key == "explicit"


def test_result_repr_never_shows_the_key(chat: ChatServer, hr: str, target_uri: str) -> None:
    chat.script(UPSERT["settings"])
    result = create_task(UPSERT["prompt"], hr, target_uri, UPSERT["task_name"])
    assert KEY not in repr(result)
    assert "ok=True" in repr(result) and "fl_cdc_upsert_employees" in repr(result)


# --- CLI ------------------------------------------------------------------------------


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trempy-nb")
    ai_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def test_cli_run_writes_settings_file(
    chat: ChatServer, hr: str, target_uri: str, tmp_path: Path
) -> None:
    chat.script(SCD2["settings"])
    out = tmp_path / "settings.json"
    args = cli_args(
        "ai",
        SCD2["prompt"],
        "--source",
        hr,
        "--target",
        target_uri,
        "-o",
        str(out),
        "--name",
        SCD2["task_name"],
    )
    assert args.func(args) == 0
    written = json.loads(out.read_text())
    assert written == expected(SCD2, hr, target_uri)
    parse_settings(out)  # loads as a settings file


def test_cli_invalid_settings_exit_2_and_write_nothing(
    chat: ChatServer, hr: str, target_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = starts_with_on_salary(UPSERT["settings"])
    chat.script(bad, bad)
    out = tmp_path / "settings.json"
    args = cli_args(
        "ai",
        UPSERT["prompt"],
        "--source",
        hr,
        "--target",
        target_uri,
        "-o",
        str(out),
        "--max-rounds",
        "1",
    )
    assert ai_cli.run(args) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "still invalid" in err and "filters[0]" in err and password_of(hr) not in err


def test_cli_subprocess_writes_file_and_reports_errors(
    chat: ChatServer, hr: str, target_uri: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "s.json"
    cmd = [
        sys.executable,
        "-m",
        "trempy_nb.ai.cli",
        UPSERT["prompt"],
        "--source",
        hr,
        "--target",
        target_uri,
        "-o",
        str(out),
    ]
    chat.script(UPSERT["settings"])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["filters"][0]["filter_type"] == "greater_than"

    chat.script(Reply.error(429), Reply.error(429))  # the client retries once
    done = subprocess.run(
        [*cmd, "--timeout", "5"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "HTTP 429" in lines[-1]
    assert KEY not in done.stderr + done.stdout and "Traceback" not in done.stderr


# --- tutorial, examples, catalog --------------------------------------------------------


def test_tutorial_covers_every_name_of_the_settings_model() -> None:
    """The hand-written tutorial must be updated when the settings model grows a name."""
    from importlib import resources

    raw = resources.files("trempy_nb.ai").joinpath("tutorial.md").read_text()
    s = settings_model
    names = (
        s.REPLICATION_TYPES
        + s.START_MODES
        + s.TRANSPORTS
        + s.CDC_MODES
        + s.FILTER_TYPES
        + s.TRANSFORMATION_TYPES
        + s.COLUMN_VALUE_OPERATIONS
        + s.CREATE_COLUMN_OPERATIONS
        + s.LITERAL_TYPES
    )
    missing = [n for n in names if n not in raw]
    assert not missing, f"tutorial.md does not explain: {missing}"
    for field in (
        "depends_on",
        "separator",
        "expression",
        "target_table_name",
        "column_names",
        "scd2_settings",
        "or_group",
    ):
        assert field in raw


def test_seed_examples_validate_against_the_live_source(hr: str) -> None:
    assert set(EXAMPLES) == {"fl_cdc_upsert_employees", "fl_cdc_scd2_employees", "fl_cdc_upsert_senior_or_rich"}
    for ex in EXAMPLES.values():
        settings = parse_settings(ex["settings"])
        assert settings.to_dict() == ex["settings"]  # stored in normalized form
        assert validate_settings(settings, hr) == []
    assert SCD2["settings"]["task"]["cdc_settings"]["mode"] == "scd2"
    assert UPSERT["settings"]["task"]["cdc_settings"]["mode"] == "upsert"


def test_catalog_is_bounded_and_puts_named_tables_first(source_uri: str) -> None:
    with psycopg.connect(source_uri, autocommit=True) as conn:
        for i in range(40):
            conn.execute(f"CREATE TABLE public.t{i:02d} (id int primary key, payload text)")
        conn.execute("CREATE TABLE public.zz_wanted (id int primary key, wanted_col date)")
    text = describe_catalog(source_uri, "copy public.zz_wanted please", max_chars=300)
    assert text.startswith("- public.zz_wanted (primary key: id")
    assert "wanted_col: date" in text
    assert "Other tables (columns not shown):" in text and "public.t39" in text
    assert len(text) < 2000


def test_parse_answer_variants() -> None:
    assert parse_answer('{"a": 1}') == {"a": 1}
    assert parse_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_answer('text\n```\n{"a": 2}\n```') == {"a": 2}
    with pytest.raises(AssistantError, match="not JSON"):
        parse_answer("{broken")


def test_saved_connection_names_are_resolved_and_kept(
    chat: ChatServer, hr: str, target_uri: str, trempy_home: Path
) -> None:
    from trempy_nb.connections import save_connection

    save_connection("hr", hr)
    save_connection("dw", target_uri)
    chat.script(UPSERT["settings"])
    result = create_task(UPSERT["prompt"], "hr", "dw", UPSERT["task_name"])
    assert result.ok, result.errors
    assert result.settings == UPSERT["settings"]  # the names, not the URIs, stay in the settings
    assert "Source: hr. Target: dw." in chat.requests[0].messages[1]["content"]
    assert password_of(hr) not in json.dumps(chat.requests[0].body)
