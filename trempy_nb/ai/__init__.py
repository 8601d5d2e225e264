"""AI task assistant: a sentence in, validated task settings out (OpenAI-compatible chat API)."""

from __future__ import annotations

from trempy_nb.ai.assistant import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    AssistantConfig,
    AssistantError,
    AssistantResult,
    build_system_prompt,
    create_task,
    describe_catalog,
    load_examples,
    resolve_config,
    tutorial_text,
    tutorial_version,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "AssistantConfig",
    "AssistantError",
    "AssistantResult",
    "build_system_prompt",
    "create_task",
    "describe_catalog",
    "load_examples",
    "resolve_config",
    "tutorial_text",
    "tutorial_version",
]
