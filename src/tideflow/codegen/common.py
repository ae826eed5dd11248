"""What the generator's parts share: the tables that shape the generated API, the records
they pass around, and the text helpers that wrap docstrings to the line width."""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from tideflow.spec.models import OnErrorSpec

TARGET = Path(__file__).parents[1] / "api.py"

HAND_WRITTEN_STEPS: dict[str, dict[str, str]] = {
    "select": {"columns": "columns"},
    "rename": {"columns": "mapping"},
    "drop": {"columns": "columns", "strict": "strict"},
    "cast": {"columns": "mapping", "formats": "formats", "strict": "strict"},
    "filter": {"expr": "expr"},
    "with_columns": {"columns": "columns"},
    "sql": {"query": "query", "engine": "engine"},
    "route": {"routes": "routes", "default": "default"},
}
"""Steps whose :class:`~tideflow.Pipeline` method is written by hand (a shorter form such as
``.filter("x > 0")`` or ``.select("a", "b")``), by config field -> method parameter; a test
checks that each such method exists and takes every field of its model."""

POSITIONAL: dict[str, tuple[str, ...]] = {"file": ("path",)}
"""Constructor parameters that may also be given by position (kept from the first API)."""

SHORTHANDS: dict[type[BaseModel], str] = {OnErrorSpec: "action"}
"""Models that also accept the value of one of their fields alone (``on_error: skip``)."""

PIPELINE_COMPONENT_KEYS = ("source", "sources", "steps", "sink", "sinks")
"""Top-level keys that hold components: typed as plain mappings in ``PipelineSettings``
(the constructors above build them)."""

WIDTH = 99
"""Longest generated line (ruff allows 100)."""


@dataclass
class Param:
    """One keyword argument of a generated function."""

    name: str
    key: str
    annotation: str
    default: str | None
    doc: str


@dataclass
class _Output:
    """What the rendered module needs besides the functions: imports and TypedDicts."""

    typing_names: set[str] = field(default_factory=set)
    abc_names: set[str] = field(default_factory=set)
    datetime: bool = False
    type_checking: dict[str, str] = field(default_factory=dict)
    """Module -> import line for types only needed by the type checker."""
    typed_dicts: dict[type[BaseModel], str] = field(default_factory=dict)
    typed_dict_code: list[str] = field(default_factory=list)


def _paragraphs(text: str) -> list[str]:
    """Paragraphs of a docstring or description, each as one line."""
    return [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n") if p.strip()]


def _wrap(
    text: str, indent: str, first: str = "", width: int = WIDTH, hanging: bool = True
) -> list[str]:
    """``text`` wrapped to ``width`` columns at ``indent``; ``first`` prefixes the first line
    and, with ``hanging``, the lines after it are indented four more."""
    lines: list[str] = []
    more = "    " if first and hanging else ""
    for i, paragraph in enumerate(_paragraphs(text)):
        if i:
            lines.append("")
        lines += textwrap.wrap(
            (first if i == 0 else "") + paragraph,
            width=width,
            initial_indent=indent if i == 0 else indent + more,
            subsequent_indent=indent + more,
            break_on_hyphens=False,
            break_long_words=False,
        )
    return lines or [indent + first.rstrip()]


def _docstring_safe(code: str) -> str:
    """Backslashes in descriptions (regular expressions) must reach the docstring as typed."""
    return code.replace("\\", "\\\\")


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest, as ruff's isort orders names."""
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name
