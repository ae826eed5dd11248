"""The generated reference (docs/connectors.md, ``connectors describe``) reads as a pipeline file.

Defaults are YAML that loads back to the model's own default; every nested settings model is
documented once and linked from the keys that take it; summaries are whole paragraphs.
"""

from __future__ import annotations

import datetime
import io
import re
from typing import Any

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from tideflow.cli.docs import (
    _default_text,
    connector_reference,
    describe_component,
    nested_models,
    yaml_text,
)
from tideflow.core.contracts import KINDS
from tideflow.registry import default_registry


def load(text: str) -> Any:
    return YAML(typ="safe").load(io.StringIO(f"v: {text}\n"))["v"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (1048576, "1048576"),
        (0.5, "0.5"),
        ("none", "none"),
        ("yes", '"yes"'),  # a plain yes would load as a bool
        ("123", '"123"'),
        ("", '""'),
        (",", '","'),
        ({"a": [1, "b c"]}, '{a: [1, "b c"]}'),
        (datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "2026-01-01T00:00:00Z"),
    ],
)
def test_yaml_text_writes_values_as_yaml(value: Any, expected: str) -> None:
    assert yaml_text(value) == expected


def _all_fields() -> list[tuple[str, str, Any]]:
    found = []
    models: list[type[BaseModel]] = []
    for kind in KINDS:
        for name, reg in default_registry.items(kind).items():
            models.append(reg.config_model)
            for field, info in reg.config_model.model_fields.items():
                found.append((f"{kind} {name}.{field}", field, info))
    for model in {m for _, _, info in found for m in nested_models(info.annotation)}:
        for field, info in model.model_fields.items():
            found.append((f"{model.__name__}.{field}", field, info))
    return found


def test_every_default_loads_back_as_the_models_default() -> None:
    checked = 0
    for where, _field, info in _all_fields():
        if info.is_required():
            continue
        text = _default_text(info)
        value = info.default_factory() if info.default_factory else info.default
        if isinstance(value, BaseModel):
            expected: Any = value.model_dump(mode="json", exclude_defaults=True)
        elif isinstance(value, datetime.datetime):
            assert load(text) == value, where
            checked += 1
            continue
        else:
            expected = value
        loaded = load(text)
        if isinstance(expected, tuple | set | frozenset):
            expected = list(expected)
        assert loaded == expected, f"{where}: {text!r} loads as {loaded!r}, not {expected!r}"
        checked += 1
    assert checked > 200


def test_the_reference_has_no_python_reprs() -> None:
    text = connector_reference()
    defaults = [row.split(" | ")[2] for row in text.splitlines() if row.startswith("| `")]
    for cell in defaults:
        assert not re.search(r"\w\(|datetime\.|\bNone\b|\bTrue\b|\bFalse\b|^'", cell), cell


def test_each_nested_model_is_documented_once_and_linked_where_used() -> None:
    text = connector_reference()
    expected = {
        "CsvReadOptions",
        "CsvWriteOptions",
        "ColumnModel",
        "IndexModel",
        "RetryPolicy",
        "PaginationConfig",
        "AuthConfig",
    }
    for name in expected:
        assert text.count(f"### `{name}`") == 1, name
        assert f"[{name}](#{name.lower()})" in text, name
    # Every in-page link points at a heading that exists.
    headings = {m.lower() for m in re.findall(r"^### `(\w+)`$", text, re.M)}
    for target in re.findall(r"\]\(#(\w+)\)", text):
        assert target in headings | {"nested-settings"}, target


def test_summaries_are_whole_first_paragraphs() -> None:
    sink = default_registry.get("sink", "file")
    assert sink.summary.endswith("files appear atomically at each checkpoint.")
    for kind in KINDS:
        for name, reg in default_registry.items(kind).items():
            assert reg.summary.endswith((".", ")")), (kind, name, reg.summary)
            assert "\n" not in reg.summary


def test_describe_shows_nested_settings_with_yaml_defaults() -> None:
    text = describe_component(default_registry.get("source", "file"))
    assert "csv: CsvReadOptions = {}" in text
    assert "CsvReadOptions:" in text
    assert 'delimiter: str = ","' in text
    assert "has_header: bool = true" in text
