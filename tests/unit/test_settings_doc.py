"""docs/settings.md stays in step with the settings model and `trempy-nb schema`.

A name counts as documented when the page shows it as a name: a whole code span
(`upsert`), or an item of a comma-separated table cell that starts with it
(`in, not_in`, `depends_on (column list)`, `operation: ...`). A word that only
occurs in prose does not count, so short values such as `in` cannot slip through.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from trempy_nb import settings
from trempy_nb.settings import json_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)(?:\s*[(:]|$)")


def documented_names(text: str) -> set[str]:
    """The names docs/settings.md shows as names (code spans and table-cell items)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # the example document is not the reference
    names = {span for span in re.findall(r"`([^`\n]+)`", text) if re.fullmatch(r"[\w.]+", span)}
    for line in text.splitlines():
        if not line.startswith("|") or re.fullmatch(r"[|\s:-]+", line):
            continue
        for cell in line.strip().strip("|").split("|"):
            for item in cell.split(","):
                m = _NAME.match(item.strip())
                if m:
                    names.add(m.group(1))
    return {part for name in names for part in name.split(".")} | names


def schema_names(schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(every property name, every enum/const value) anywhere in a JSON Schema."""
    props: set[str] = set()
    values: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props.update(node.get("properties", {}))
            values.update(str(v) for v in node.get("enum", []))
            if "const" in node:
                values.add(str(node["const"]))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    return props, values


def model_names() -> tuple[set[str], set[str]]:
    """(every field of every settings model, every value of every Literal alias) in settings.py.

    The schema shows `contract` as an open object; its typed contracts are models here too.
    """
    fields: set[str] = set()
    values: set[str] = set()
    for obj in vars(settings).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == settings.__name__:
            fields.update(obj.model_fields)
        elif typing.get_origin(obj) is typing.Literal:
            values.update(str(v) for v in typing.get_args(obj))
    return fields, values


def test_every_schema_key_and_enum_value_is_documented() -> None:
    doc = documented_names(DOC.read_text(encoding="utf-8"))
    props, values = schema_names(json_schema())
    assert props and values
    assert sorted(props - doc) == [], "keys of `trempy-nb schema` missing from docs/settings.md"
    assert sorted(values - doc) == [], "enum values of `trempy-nb schema` missing from docs/settings.md"


def test_every_model_field_and_literal_value_is_documented() -> None:
    doc = documented_names(DOC.read_text(encoding="utf-8"))
    fields, values = model_names()
    assert {"target_table_name", "depends_on", "expression"} <= fields
    assert {"format_date", "math_expression", "timestamp"} <= values
    assert sorted(fields - doc) == [], "fields of trempy_nb/settings.py missing from docs/settings.md"
    assert sorted(values - doc) == [], "Literal values of trempy_nb/settings.py missing from docs/settings.md"


def test_defaults_in_the_doc_match_the_model() -> None:
    """Each `| key | ... | default |` row of a flags table shows the model's default."""
    text = DOC.read_text(encoding="utf-8")
    defaults = {
        **settings.ErrorHandling().model_dump(),
        **settings.FullLoadSettings().model_dump(),
        **settings.Scd2Settings().model_dump(),
    }
    for key, value in defaults.items():
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        row = re.search(rf"^\| {key} \|(?:[^\n]*\|)? `{re.escape(shown)}` \|", text, flags=re.M)
        assert row, f"docs/settings.md: no row for {key} with default `{shown}`"


def test_an_undocumented_name_is_caught() -> None:
    doc = documented_names("| key | values |\n| --- | --- |\n| mode | `upsert` |\nin prose: scd2, in\n")
    assert {"mode", "upsert"} <= doc
    assert "scd2" not in doc and "in" not in doc and "prose" not in doc
