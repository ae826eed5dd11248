"""Rendering of the entry points: a constructor per source/sink type, a Pipeline method per
step type and the ``PipelineSettings`` TypedDict, with their parameters and docstrings."""

from __future__ import annotations

import datetime
import inspect
import keyword
import textwrap
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tideflow.codegen.common import (
    PIPELINE_COMPONENT_KEYS,
    POSITIONAL,
    WIDTH,
    Param,
    _docstring_safe,
    _paragraphs,
    _wrap,
)
from tideflow.codegen.render_types import TypeRenderer, _flatten
from tideflow.core.contracts import Kind
from tideflow.registry import Registration
from tideflow.spec.models import ENVELOPES, PipelineSpec


class FunctionRenderer(TypeRenderer):
    """Renders the functions and methods of the typed API (their types through
    :class:`TypeRenderer`)."""

    # -- parameters ----------------------------------------------------------------------

    @staticmethod
    def _literal_default(info: FieldInfo) -> str | None:
        """Source text of a default that can stand in a signature, else None."""
        if info.is_required() or info.default_factory is not None:
            return None
        value = info.default
        if value is None or isinstance(value, bool | int | float | str):
            return repr(value)
        return None

    @staticmethod
    def _default_doc(info: FieldInfo) -> str:
        """The default as the docs show it: ``required``, or a value in double backquotes."""
        if info.is_required():
            return "required"
        factory = info.default_factory
        value = factory() if factory is not None else info.default  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            changed = value.model_dump(mode="json", exclude_defaults=True)
            return f"``{changed!r}``" if changed else "the defaults of its keys"
        if isinstance(value, datetime.datetime):
            return f"``{value.isoformat()}``"
        return f"``{value!r}``"

    def params(self, regs: list[Registration]) -> list[Param]:
        """The keyword arguments of one component type, over all its kinds (a ``file``
        source and sink share one constructor)."""
        kinds = [reg.kind for reg in regs]
        fields: dict[str, dict[Kind, FieldInfo]] = {}
        for reg in regs:
            for name, info in reg.config_model.model_fields.items():
                fields.setdefault(name, {})[reg.kind] = info
        params = []
        for name, by_kind in fields.items():
            infos = list(by_kind.values())
            annotation = self._union([info.annotation for info in infos])
            literal_defaults = {self._literal_default(info) for info in infos}
            everywhere = len(by_kind) == len(kinds)
            if everywhere and all(info.is_required() for info in infos):
                default = None
            elif len(literal_defaults) == 1 and None not in literal_defaults:
                default = literal_defaults.pop()
            else:
                default = "NOT_GIVEN"
                annotation = (
                    annotation.removesuffix(" | None") + " | NotGiven | None"
                    if annotation.endswith(" | None")
                    else annotation + " | NotGiven"
                )
            params.append(
                Param(
                    name=f"{name}_" if keyword.iskeyword(name) else name,
                    key=_key(infos[0], name),
                    annotation=annotation,
                    default=default,
                    doc=self._param_doc(by_kind, kinds, default not in (None, "NOT_GIVEN")),
                )
            )
        return params

    def _param_doc(
        self, by_kind: dict[Kind, FieldInfo], kinds: list[Kind], in_signature: bool
    ) -> str:
        parts = []
        descriptions = {self._describe(info) for info in by_kind.values()}
        defaults = {self._default_doc(info) for info in by_kind.values()}
        if len(kinds) > 1 and len(by_kind) < len(kinds):
            parts.append(f"{next(iter(by_kind)).capitalize()} only.")
        if len(descriptions) == 1:
            parts.append(descriptions.pop())
        else:
            parts += [f"As a {kind}: {self._describe(info)}" for kind, info in by_kind.items()]
        if in_signature:
            pass  # the signature shows the default
        elif len(defaults) == 1:
            default = defaults.pop()
            parts.append("Required." if default == "required" else f"Default: {default}.")
        else:
            parts += [f"As a {kind}: {self._default_doc(info)}." for kind, info in by_kind.items()]
        return " ".join(p for p in parts if p)

    # -- functions -----------------------------------------------------------------------

    def connector(self, type_name: str, regs: list[Registration]) -> str:
        """The constructor of one source/sink type."""
        params = self.params(regs)
        envelope = Param(
            "name",
            "name",
            "str | None",
            "None",
            self._describe(ENVELOPES["source"].model_fields["name"]),
        )
        positional = POSITIONAL.get(type_name, ())
        ordered = [p for n in positional for p in params if p.name == n]
        rest = [p for p in params if p.name not in positional] + [envelope]
        signature = [_param_text(p) for p in ordered] + ["*"] + [_param_text(p) for p in rest]
        kinds = " and ".join(reg.kind for reg in regs)
        lines = [f'"""The ``{type_name}`` {kinds}.', ""]
        for reg in regs:
            lead = f"As a {reg.kind}: " if len(regs) > 1 else ""
            lines += [*_wrap(_class_doc(reg), "", lead, WIDTH - 4, hanging=False), ""]
        lines += _args_doc(ordered + rest, WIDTH - 4)
        keys = _keys_argument(ordered + rest)
        self.out.typing_names.add("Any")
        body = [
            f"def {type_name}(",
            *[f"    {s}," for s in signature],
            ") -> dict[str, Any]:",
            *textwrap.indent(_docstring_safe("\n".join([*lines, '"""'])), "    ").splitlines(),
            # by name: a parameter may shadow the function (`topic(topic=...)`)
            f'    return {{"type": {type_name!r}, **_given({type_name!r}, locals(){keys})}}',
        ]
        return "\n".join(body)

    def step_method(self, type_name: str, reg: Registration) -> str:
        """The Pipeline method of one step type."""
        params = self.params([reg])
        step_envelope = ENVELOPES["step"].model_fields
        envelope = [
            Param("name", "name", "str | None", "None", self._describe(step_envelope["name"])),
            Param(
                "input",
                "input",
                "str | list[str] | None",
                "None",
                self._describe(step_envelope["input"]),
            ),
        ]
        width = WIDTH - 8
        lines = [
            *_wrap(_class_doc(reg), "", '"""', width, hanging=False),
            "",
            *_args_doc(params + envelope, width),
        ]
        keys = _keys_argument(params)
        body = [
            f"def {type_name}(",
            "    self,",
            "    *,",
            *[f"    {_param_text(p)}," for p in params + envelope],
            ") -> Self:",
            *textwrap.indent(_docstring_safe("\n".join([*lines, '"""'])), "    ").splitlines(),
            f"    settings = _given(StepMethods.{type_name}, locals(){keys}, skip=_STEP_ENVELOPE)",
            f"    return self.step({type_name!r}, name, input, **settings)",
        ]
        return textwrap.indent("\n".join(body), "    ")

    def pipeline_settings(self) -> str:
        """A TypedDict of the top-level keys ``tf.Pipeline(name, **settings)`` takes."""
        rows = []
        for name, info in PipelineSpec.model_fields.items():
            if name == "name":
                continue
            if name in PIPELINE_COMPONENT_KEYS:
                self.out.abc_names.add("Mapping")
                self.out.typing_names.add("Any")
                one = "Mapping[str, Any]"
                annotation = f"list[{one}]" if name in ("sources", "steps", "sinks") else one
            else:
                annotation = self._union([info.annotation])
            described = self._describe(info) or _model_summary(info.annotation)
            rows.append((name, f"NotRequired[{annotation}]", described))
        self.out.typing_names.update({"NotRequired", "TypedDict"})
        lines = [
            "class PipelineSettings(TypedDict):",
            '    """The top-level keys of a pipeline besides its name, as ``tf.Pipeline(name,',
            "    **settings)`` takes them.",
            "",
            "    Keys:",
        ]
        for key, _, description in rows:
            lines += _wrap(
                description or "(see the pipeline file reference)", "        ", f"{key}: "
            )
        lines.append('    """')
        lines.append("")
        lines += [f"    {key}: {annotation}" for key, annotation, _ in rows]
        return _docstring_safe("\n".join(lines))


def _key(info: FieldInfo, name: str) -> str:
    """The key that holds a field in the settings (its alias, where it has one)."""
    alias = info.alias or info.validation_alias
    if isinstance(alias, str):
        return alias
    choices = getattr(alias, "choices", None)
    if choices and isinstance(choices[0], str):
        return str(choices[0])
    return name


def _param_text(param: Param) -> str:
    if param.default is None:
        return f"{param.name}: {param.annotation}"
    return f"{param.name}: {param.annotation} = {param.default}"


def _keys_argument(params: list[Param]) -> str:
    renamed = {p.name: p.key for p in params if p.name != p.key}
    return f", keys={renamed!r}" if renamed else ""


def _args_doc(params: list[Param], width: int) -> list[str]:
    lines = ["Args:"]
    for param in params:
        lines += _wrap(param.doc or "(no description)", "    ", f"{param.name}: ", width)
    return lines


def _model_summary(annotation: Any) -> str:
    """The first paragraph of a nested model's docstring (for a field with no description)."""
    for member in _flatten([annotation]):
        if isinstance(member, type) and issubclass(member, BaseModel) and member.__doc__:
            return _paragraphs(member.__doc__)[0]
    return ""


def _class_doc(reg: Registration) -> str:
    return inspect.getdoc(reg.cls) or reg.summary or reg.type_name
