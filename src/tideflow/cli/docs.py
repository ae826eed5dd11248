"""Documentation generated from the config models: JSON Schema and connector reference.

The models are the single source of truth; ``tideflow schema``, ``tideflow connectors
describe`` and ``docs/connectors.md`` are all rendered from them.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tideflow.core.contracts import KINDS
from tideflow.registry import Registration, Registry, default_registry
from tideflow.spec.models import ENVELOPES, pipeline_model


def pipeline_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema of a whole pipeline file, with every listed component (not the test
    kit's ``memory``)."""
    model = pipeline_model(registry or default_registry, listed_only=True)
    schema: dict[str, Any] = _allow_variables(model.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tideflow pipeline"
    return schema


# `${VAR}` / `${VAR:-default}` may stand for any value; it is substituted before validation.
_VARIABLE = {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}$"}


def _allow_variables(node: Any) -> Any:
    """Let a variable reference stand where a number, a boolean or a choice is expected, so an
    editor checking a file against the schema accepts ``count: ${COUNT:-1000}`` as
    ``tideflow validate`` does."""
    if isinstance(node, list):
        return [_allow_variables(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _allow_variables(v) for k, v in node.items()}
    if node.get("type") in ("integer", "number", "boolean") or "enum" in node:
        keep = {k: v for k, v in node.items() if k not in ("title", "description", "default")}
        rest = {k: v for k, v in node.items() if k not in keep}
        return {**rest, "anyOf": [keep, _VARIABLE]}
    return node


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


# Plain YAML scalars that read back as the same string (not a number, bool or null).
_PLAIN = re.compile(r"^[A-Za-z_/][\w./@-]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def yaml_text(value: Any) -> str:
    """A value as it is written in a pipeline file (YAML flow style), not as a Python repr."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime.datetime | datetime.date):
        text = value.isoformat()
        return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
            return value
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted one
    if isinstance(value, dict):
        pairs = (f"{yaml_text(str(k))}: {yaml_text(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    return yaml_text(str(value))


def _default_value(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _default_text(info: FieldInfo) -> str:
    """The default as YAML; a nested model's default as the keys it changes from its own."""
    if info.is_required():
        return "required"
    value = _default_value(info)
    if isinstance(value, BaseModel):
        changed = value.model_dump(mode="json", exclude_defaults=True)
        return yaml_text(changed) if changed else "{}"
    return yaml_text(value)


def nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The settings models a field's type refers to (through unions, lists, dicts...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from nested_models(arg)


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
    # The first paragraph is the summary above; the rest of the docstring follows it.
    rest = (reg.cls.__doc__ or "").strip().split("\n\n")[1:]
    doc = [d.strip() for paragraph in rest for d in paragraph.splitlines()]
    if doc:
        lines += [d for d in doc if d] + [""]
    for name, type_text, default, description in field_rows(reg):
        lines.append(f"  {name}: {type_text} = {default}")
        if description:
            lines.append(f"      {description}")
    # The groups of settings its keys take (retry, csv, auth...), each with its own keys.
    seen: set[type[BaseModel]] = set()
    fields = {**ENVELOPES[reg.kind].model_fields, **reg.config_model.model_fields}
    pending = [m for info in fields.values() for m in nested_models(info.annotation)]
    while pending:
        model = pending.pop(0)
        if model in seen:
            continue
        seen.add(model)
        lines += ["", f"{model.__name__}: {_first_paragraph(model.__doc__)}".rstrip(": ")]
        for name, type_text, default, description in _settings_rows(model.model_fields):
            lines.append(f"  {name}: {type_text} = {default}")
            if description:
                lines.append(f"      {description}")
        for info in model.model_fields.values():
            pending += nested_models(info.annotation)
    return "\n".join(lines)


def _settings_rows(fields: dict[str, FieldInfo]) -> list[tuple[str, str, str, str]]:
    return [
        (name, _type_text(info), _default_text(info), info.description or "")
        for name, info in fields.items()
    ]


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()  # mkdocs' heading slug of ### `Name`


def _type_cell(type_text: str, models: set[str]) -> str:
    """The type in code, each nested model's name a link to its section."""
    cell = "`" + type_text.replace("|", "\\|") + "`"
    for name in sorted(models, key=len, reverse=True):
        cell = re.sub(rf"\b{name}\b", f"`[{name}](#{name.lower()})`", cell)
    return cell.replace("``", "")


def _table(rows: list[tuple[str, str, str, str]], models: set[str]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for field, type_text, default, description in rows:
        cell = " ".join(description.split()).replace("|", "\\|")
        default_cell = "`" + default.replace("|", "\\|") + "`"
        lines.append(f"| `{field}` | {_type_cell(type_text, models)} | {default_cell} | {cell} |")
    return lines


def _models_used(registry: Registry) -> dict[str, type[BaseModel]]:
    """Every nested settings model, reached from the components' fields, by name."""
    found: dict[str, type[BaseModel]] = {}

    def visit(fields: dict[str, FieldInfo]) -> None:
        for info in fields.values():
            for model in nested_models(info.annotation):
                if model.__name__ not in found:
                    found[model.__name__] = model
                    visit(model.model_fields)

    for kind in KINDS:
        for reg in registry.items(kind).values():
            visit(reg.config_model.model_fields)
    return found


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def connector_reference(registry: Registry | None = None) -> str:
    """The Markdown connector and step reference (docs/connectors.md)."""
    registry = registry or default_registry
    models = _models_used(registry)
    names = set(models)
    parts = [
        "# Connector and step reference",
        "",
        "Generated from the config models by `python -m tideflow.cli.docs`; do not edit by hand.",
        "Defaults are written as in a pipeline file (YAML). A key whose type is a group of",
        "settings (such as `RetryPolicy`) links to that group under",
        "[Nested settings](#nested-settings); its default `{}` means the group's own defaults.",
        "",
        "The SQL expressions of `filter`, `with_columns`, `route` and `when` are described in",
        "[expressions.md](expressions.md).",
    ]
    for kind in KINDS:
        parts += ["", f"## {kind.capitalize()}s"]
        for name, reg in sorted(registry.items(kind).items()):
            parts += ["", f"### `{name}`", "", reg.summary, "", *_table(field_rows(reg), names)]
    parts += [
        "",
        "## Nested settings",
        "",
        "Groups of settings used as the value of a key above, each written as a mapping.",
    ]
    for name, model in sorted(models.items()):
        parts += ["", f"### `{name}`", ""]
        about = _first_paragraph(model.__doc__)
        if about:
            parts += [about, ""]
        used_by = [
            f"`{reg.type_name}` {reg.kind}"
            for kind in KINDS
            for reg in sorted(registry.items(kind).values(), key=lambda r: r.type_name)
            if any(
                model in nested_models(info.annotation)
                for info in reg.config_model.model_fields.values()
            )
        ]
        if used_by:
            parts += ["Used by: " + ", ".join(used_by) + ".", ""]
        parts += _table(_settings_rows(model.model_fields), names)
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(connector_reference(), end="")
