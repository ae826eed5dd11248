"""Documentation generated from the config models: JSON Schema and connector reference.

The models are the single source of truth; ``tideflow schema``, ``tideflow connectors
describe`` and ``docs/connectors.md`` are all rendered from them.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from tideflow.registry import KINDS, Registration, Registry, default_registry
from tideflow.spec.models import ENVELOPES, pipeline_model


def pipeline_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema of a whole pipeline file, with every registered component."""
    schema = pipeline_model(registry or default_registry).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tideflow pipeline"
    return schema


def _render_type(annotation: Any) -> str:
    # Annotated carries validators whose repr holds memory addresses; show only the base type.
    if get_origin(annotation) is Annotated:
        return _render_type(get_args(annotation)[0])
    args = get_args(annotation)
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return " | ".join(_render_type(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_render_type(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(typing|datetime|pathlib)\.", "", text)


def _type_text(info: FieldInfo) -> str:
    return _render_type(info.annotation)


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return repr(info.default_factory())  # type: ignore[call-arg]
    return repr(info.default)


def field_rows(reg: Registration) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) for every setting, envelope keys included."""
    rows = []
    envelope = ENVELOPES[reg.kind].model_fields
    for name, info in {**envelope, **reg.config_model.model_fields}.items():
        if name == "type":
            continue
        rows.append((name, _type_text(info), _default_text(info), info.description or ""))
    return rows


def describe_component(reg: Registration) -> str:
    """Plain-text description of one component type."""
    lines = [f"{reg.type_name} ({reg.kind}): {reg.summary}", ""]
    doc = (reg.cls.__doc__ or "").strip().splitlines()[1:]
    if doc:
        lines += [d.strip() for d in doc if d.strip()] + [""]
    for name, type_text, default, description in field_rows(reg):
        lines.append(f"  {name}: {type_text} = {default}")
        if description:
            lines.append(f"      {description}")
    return "\n".join(lines)


def connector_reference(registry: Registry | None = None) -> str:
    """The Markdown connector and step reference (docs/connectors.md)."""
    registry = registry or default_registry
    parts = [
        "# Connector and step reference",
        "",
        "Generated from the config models by `python -m tideflow.docs`; do not edit by hand.",
    ]
    for kind in KINDS:
        parts += ["", f"## {kind.capitalize()}s"]
        for name, reg in sorted(registry.items(kind).items()):
            parts += [
                "",
                f"### `{name}`",
                "",
                reg.summary,
                "",
                "| key | type | default | description |",
                "|---|---|---|---|",
            ]
            for field, type_text, default, description in field_rows(reg):
                cell = description.replace("|", "\\|")
                type_cell = type_text.replace("|", "\\|")
                default_cell = default.replace("|", "\\|")
                parts.append(f"| `{field}` | `{type_cell}` | `{default_cell}` | {cell} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(connector_reference(), end="")
