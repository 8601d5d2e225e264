"""From a sentence to validated task settings, through an OpenAI-compatible chat API.

The model gets a packaged tutorial (``tutorial.md``, with the names derived
from the settings model and the seed examples), the settings JSON Schema and
the live catalog of the source. Its answer goes through the same validation as
every other entry point (`parse_settings`, then `validate_settings` against the
live source); errors are sent back for a bounded number of repair rounds. The
result says plainly whether the settings are valid: invalid ones are returned
as a draft with their errors, never as good settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from trempy_nb import settings as settings_model
from trempy_nb.connections import mask, register_secret, resolve
from trempy_nb.errors import SettingsError, TrempyError
from trempy_nb.settings import TaskSettings, json_schema, parse_settings
from trempy_nb.validation import validate_settings

DEFAULT_BASE_URL = "https://api.deepseek.com"
DEFAULT_MODEL = "deepseek-chat"
KEY_VARIABLES = ("TREMPY_AI_API_KEY", "DEEPSEEK_API_KEY", "OPENAI_API_KEY")

#: Bounds of the catalog section of the system prompt.
MAX_DESCRIBED_TABLES = 150
MAX_CATALOG_CHARS = 30_000
MAX_TABLE_NAMES_CHARS = 6_000


class AssistantError(TrempyError):
    """The assistant could not get an answer (no key, endpoint down, 429/500, timeout, non-JSON).

    The message is one line and never contains the API key.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# Configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class AssistantConfig:
    """Where and how to ask; the key never appears in repr()."""

    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout: float = 60.0
    max_retries: int = 1


def dotenv_file(path: str | Path | None = None) -> dict[str, str]:
    """The variables of `.env` in the working directory (or `path`), if the file exists.

    Read, not loaded: os.environ is left as it is, and a variable set there wins.
    Nothing of the file is printed or logged.
    """
    file = Path(path) if path is not None else Path.cwd() / ".env"
    if not file.is_file():
        return {}
    return {k: v for k, v in dotenv_values(file).items() if v}


def resolve_config(
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 1,
) -> AssistantConfig:
    """Arguments first, then TREMPY_AI_* / DEEPSEEK_API_KEY / OPENAI_API_KEY from the
    environment, then from a `.env` file in the working directory, then DeepSeek defaults."""
    env = {**dotenv_file(), **{k: v for k, v in os.environ.items() if v}}
    key = api_key or next((env[v] for v in KEY_VARIABLES if env.get(v)), "")
    if not key:
        raise AssistantError(
            "no API key for the AI assistant: set TREMPY_AI_API_KEY "
            "(or DEEPSEEK_API_KEY / OPENAI_API_KEY) in the environment or in ./.env,"
            " or pass api_key="
        )
    register_secret(key)  # masked wherever it might be echoed
    return AssistantConfig(
        base_url=(base_url or env.get("TREMPY_AI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
        model=model or env.get("TREMPY_AI_MODEL") or DEFAULT_MODEL,
        api_key=key,
        timeout=float(timeout),
        max_retries=int(max_retries),
    )


# Result -----------------------------------------------------------------------


@dataclass
class AssistantResult:
    """What the assistant produced.

    `settings` is the validated document when `ok`, else the best draft (or None);
    `errors` lists what is still wrong, one line per problem led by the field path.
    """

    settings: dict[str, Any] | None
    task_settings: TaskSettings | None
    answers: list[str]
    errors: list[str]
    rounds: int
    model: str
    base_url: str
    messages: list[dict[str, str]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.task_settings is not None and not self.errors

    def __repr__(self) -> str:
        name = (self.settings or {}).get("task", {}) if isinstance(self.settings, dict) else {}
        task_name = name.get("task_name") if isinstance(name, dict) else None
        return (
            f"AssistantResult(ok={self.ok}, task_name={task_name!r}, rounds={self.rounds}, "
            f"errors={self.errors!r}, model={self.model!r}, base_url={self.base_url!r})"
        )

    def to_json(self, indent: int = 2) -> str:
        """The settings document as JSON text (the draft when not ok)."""
        return json.dumps(self.settings, indent=indent, ensure_ascii=False)

    def raise_for_errors(self) -> TaskSettings:
        """The validated settings, or SettingsError listing the remaining problems."""
        if not self.ok or self.task_settings is None:
            problems = "; ".join(self.errors) or "no settings"
            raise SettingsError(f"the assistant's settings are not valid: {problems}")
        return self.task_settings


# Tutorial, examples, prompts -------------------------------------------------------


def _ai_file(name: str) -> str:
    return resources.files("trempy_nb.ai").joinpath(name).read_text(encoding="utf-8")


def load_examples() -> list[dict[str, Any]]:
    """The seed examples shipped in trempy_nb/ai/examples (prompt, refs, expected settings)."""
    folder = resources.files("trempy_nb.ai").joinpath("examples")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    return [json.loads(folder.joinpath(n).read_text(encoding="utf-8")) for n in names]


def _names_section() -> str:
    s = settings_model
    rows = [
        ("replication_type", s.REPLICATION_TYPES),
        ("start_mode", s.START_MODES),
        ("transport", s.TRANSPORTS),
        ("cdc_settings.mode", s.CDC_MODES),
        ("filter_type", s.FILTER_TYPES),
        ("transformation_type", s.TRANSFORMATION_TYPES),
        ("modify_column_value operation", s.COLUMN_VALUE_OPERATIONS),
        ("create_column operation", s.CREATE_COLUMN_OPERATIONS),
        ("literal type", s.LITERAL_TYPES),
    ]
    lines = [f"- {label}: {', '.join(values)}" for label, values in rows]
    for kind, (lo, hi) in s.PRIORITY_RANGES.items():
        lines.append(f"- priority of {kind}: {lo if lo == hi else f'{lo} to {hi}'}")
    lines.append(f"- task_name pattern: {s.TASK_NAME_PATTERN}")
    return "\n".join(lines)


def _examples_section() -> str:
    parts = []
    for i, ex in enumerate(load_examples(), 1):
        name = ex.get("task_name")
        parts.append(
            f"### Example {i}: {ex['title']}\n\n"
            f"Request: {ex['prompt']}\n"
            f"Source: {ex['source']}. Target: {ex['target']}. "
            f"Task name: {name or '(choose one)'}.\n"
            f"Why: {ex.get('notes', '')}\n\n"
            f"Answer:\n```json\n{json.dumps(ex['settings'], indent=1)}\n```"
        )
    return "\n\n".join(parts)


@lru_cache(maxsize=1)
def tutorial_text() -> str:
    """tutorial.md with the names of the settings model and the seed examples filled in."""
    text = _ai_file("tutorial.md")
    return text.replace("<!-- NAMES -->", _names_section()).replace(
        "<!-- EXAMPLES -->", _examples_section()
    )


def tutorial_version() -> str:
    """A short fingerprint of the tutorial plus the settings schema it was written for."""
    digest = hashlib.sha256(tutorial_text().encode())
    digest.update(json.dumps(json_schema(), sort_keys=True).encode())
    return digest.hexdigest()[:12]


def describe_catalog(
    source_uri: str, prompt: str = "", *, max_chars: int = MAX_CATALOG_CHARS
) -> str:
    """The live source catalog as compact text: tables, columns, types, primary keys.

    Tables named in `prompt` come first; past `max_chars` (or MAX_DESCRIBED_TABLES)
    the rest are listed by name only, then counted.
    """
    from trempy_nb.catalog import describe_table, list_tables
    from trempy_nb.db import connect

    with connect(source_uri, autocommit=True) as conn:
        tables = list_tables(conn)
        lowered = prompt.lower()

        def mentioned(t: tuple[str, str, int]) -> bool:
            return f"{t[0]}.{t[1]}".lower() in lowered or bool(
                re.search(rf"\b{re.escape(t[1].lower())}\b", lowered)
            )

        ordered = sorted(tables, key=lambda t: (not mentioned(t), t[0], t[1]))
        lines: list[str] = []
        size = 0
        described = 0
        rest: list[str] = []
        for schema, table, rows in ordered:
            if described >= MAX_DESCRIBED_TABLES or size >= max_chars:
                rest.append(f"{schema}.{table}")
                continue
            info = describe_table(conn, schema, table)
            pk = ", ".join(info.primary_key) or "none"
            cols = "\n".join(
                f"    - {c.name}: {c.pg_type}{'' if c.nullable else ' not null'}"
                for c in info.columns
            )
            block = f"- {schema}.{table} (primary key: {pk}; ~{max(rows, 0)} rows)\n{cols}"
            lines.append(block)
            size += len(block) + 1
            described += 1
    if not tables:
        return "(the source has no tables)"
    if rest:
        shown: list[str] = []
        used = 0
        for name in rest:
            if used + len(name) > MAX_TABLE_NAMES_CHARS:
                break
            shown.append(name)
            used += len(name) + 2
        lines.append(f"Other tables (columns not shown): {', '.join(shown)}")
        if len(shown) < len(rest):
            lines.append(f"... and {len(rest) - len(shown)} more tables not listed.")
    return "\n".join(lines)


def build_system_prompt(catalog: str) -> str:
    """Tutorial + JSON Schema + live catalog."""
    schema = json.dumps(json_schema(), separators=(",", ":"))
    return (
        f"{tutorial_text()}\n\n## JSON Schema of the settings document\n\n```json\n{schema}\n```\n\n"
        f"## Catalog of the source database (live)\n\n{catalog}\n"
    )


def _shown_ref(ref: str) -> str:
    """What the model sees of a connection ref: a name as is, a URI without its password."""
    return mask(ref)


def build_user_message(prompt: str, source: str, target: str, name: str | None) -> str:
    """The user's sentence plus the fixed source, target and task name."""
    task_name = (
        f"Task name: {name} (use exactly this task_name)."
        if name
        else f"Task name: choose a short one matching {settings_model.TASK_NAME_PATTERN}."
    )
    return (
        f"Request: {prompt.strip()}\n"
        f"Source: {_shown_ref(source)}. Target: {_shown_ref(target)}. "
        "(task.source and task.target are filled in by the tool; copy them as given.)\n"
        f"{task_name}\n"
        "Answer with the complete settings document as one JSON object."
    )


def build_repair_message(errors: list[str]) -> str:
    """The follow-up sent when the answer did not validate."""
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        "The settings you returned were rejected by the validator:\n"
        f"{listed}\n"
        "Return the complete corrected settings document as one JSON object. Keep what was "
        "right, fix these problems, use only tables and columns of the catalog."
    )


# Parsing and validating an answer ---------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)\n?```", re.DOTALL)


def parse_answer(text: str) -> Any:
    """The JSON value of an answer: bare JSON, or the first ```json fenced block."""
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    snippet = " ".join(text.split())[:80]
    raise AssistantError(f"the model's answer is not JSON (starts with: {snippet!r})")


def _normalize(doc: Any, source: str, target: str, name: str | None) -> Any:
    """Unwrap {"settings": {...}} and force the given source, target and task name."""
    if isinstance(doc, dict) and "task" not in doc and len(doc) == 1:
        (inner,) = doc.values()
        if isinstance(inner, dict) and "task" in inner:
            doc = inner
    if isinstance(doc, dict) and isinstance(doc.get("task"), dict):
        doc["task"]["source"] = source
        doc["task"]["target"] = target
        if name:
            doc["task"]["task_name"] = name
    return doc


def _split_errors(message: str) -> list[str]:
    """format_validation_error joins problems with '; ' before each field path."""
    parts = re.split(r"; (?=[A-Za-z_(][\w\[\].()]*: )", message)
    return [p.strip() for p in parts if p.strip()]


def check_settings(doc: Any, source_uri: str) -> tuple[TaskSettings | None, list[str]]:
    """Model validation, then validation against the live source: (settings, errors)."""
    if not isinstance(doc, dict):
        return None, ["(document): the answer must be one JSON object (the settings document)"]
    try:
        parsed = parse_settings(doc)
    except SettingsError as exc:
        return None, _split_errors(str(exc))
    try:
        errors = list(validate_settings(parsed, source_uri))
    except SettingsError as exc:  # a validator that raises instead of listing
        errors = _split_errors(str(exc))
    return parsed, errors


# The chat call ---------------------------------------------------------------------


def _scrub(text: str, key: str) -> str:
    text = mask(" ".join(str(text).split()))
    if key:
        text = text.replace(key, "***")
    return text[:300]


def _ask(client: Any, config: AssistantConfig, messages: list[dict[str, str]]) -> str:
    """One chat-completions call; every failure becomes a one-line AssistantError."""
    import openai

    where = config.base_url
    try:
        response = client.chat.completions.create(
            model=config.model,
            messages=messages,
            temperature=0,
            response_format={"type": "json_object"},
        )
    except openai.APITimeoutError:
        raise AssistantError(
            f"the AI endpoint {where} did not answer within {config.timeout:g}s", transient=True
        ) from None
    except openai.APIConnectionError as exc:
        cause = _scrub(str(exc.__cause__ or exc), config.api_key)
        raise AssistantError(
            f"cannot reach the AI endpoint {where}: {cause}", transient=True
        ) from None
    except openai.AuthenticationError:
        raise AssistantError(
            f"the AI endpoint {where} refused the API key (HTTP 401); check TREMPY_AI_API_KEY"
        ) from None
    except openai.RateLimitError:
        raise AssistantError(
            f"the AI endpoint {where} is rate-limiting requests (HTTP 429); wait and try again",
            transient=True,
        ) from None
    except openai.APIStatusError as exc:
        body = exc.body.get("message") if isinstance(exc.body, dict) else None
        detail = _scrub(str(body or exc.message or ""), config.api_key)
        raise AssistantError(
            f"the AI endpoint {where} failed with HTTP {exc.status_code}: {detail}",
            transient=exc.status_code >= 500,
        ) from None
    except openai.OpenAIError as exc:
        detail = _scrub(str(exc), config.api_key)
        raise AssistantError(f"the AI endpoint {where} gave an unusable answer: {detail}") from None
    choices = getattr(response, "choices", None)
    if not choices:
        raise AssistantError(
            f"the AI endpoint {where} did not answer in the chat-completions format"
        )
    content = choices[0].message.content
    if not content or not content.strip():
        reason = choices[0].finish_reason
        raise AssistantError(f"the model returned an empty answer (finish_reason={reason})")
    if choices[0].finish_reason == "length":
        raise AssistantError("the model's answer was cut off (finish_reason=length)")
    return str(content)


def make_client(config: AssistantConfig) -> Any:
    """An openai.OpenAI client for the configured endpoint."""
    import openai

    return openai.OpenAI(
        base_url=config.base_url,
        api_key=config.api_key,
        timeout=config.timeout,
        max_retries=config.max_retries,
    )


def create_task(
    prompt: str,
    source: str,
    target: str,
    name: str | None = None,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    max_rounds: int = 2,
    timeout: float = 60,
    max_retries: int = 1,
) -> AssistantResult:
    """Ask the model for task settings and validate them against the live source.

    `source`/`target` are saved connection names or URIs; they are forced into the
    answer. `max_rounds` bounds the repair rounds after the first answer (0: none).
    Raises AssistantError when no usable answer can be obtained at all.
    """
    if not prompt or not prompt.strip():
        raise AssistantError("describe the task in a sentence (the prompt is empty)")
    config = resolve_config(
        model=model, base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
    )
    source_uri = resolve(source)
    messages = [
        {"role": "system", "content": build_system_prompt(describe_catalog(source_uri, prompt))},
        {"role": "user", "content": build_user_message(prompt, source, target, name)},
    ]
    client = make_client(config)
    answers: list[str] = []
    best: tuple[int, Any, TaskSettings | None, list[str]] | None = None
    for round_no in range(max(0, int(max_rounds)) + 1):
        answer = _ask(client, config, messages)
        answers.append(answer)
        messages.append({"role": "assistant", "content": answer})
        try:
            doc = _normalize(parse_answer(answer), source, target, name)
        except AssistantError as exc:
            if best is None:
                raise
            best[3].append(f"(answer {round_no + 1}): {exc}")
            break
        parsed, errors = check_settings(doc, source_uri)
        # rank: fewest errors, a model-valid document beats one that does not parse
        rank = len(errors) + (0 if parsed is not None else 1000)
        if best is None or rank <= best[0]:
            best = (rank, doc, parsed, errors)
        if not errors:
            break
        if round_no < max_rounds:
            messages.append({"role": "user", "content": build_repair_message(errors)})
    assert best is not None
    _, doc, parsed, errors = best
    ok = parsed is not None and not errors
    return AssistantResult(
        settings=parsed.to_dict() if ok and parsed is not None else doc,
        task_settings=parsed if ok else None,
        answers=answers,
        errors=errors,
        rounds=len(answers),
        model=config.model,
        base_url=config.base_url,
        messages=messages,
    )
