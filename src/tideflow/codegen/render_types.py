"""Rendering of types: a model field's annotation as the source text of a type that accepts
what the model accepts, nested models as TypedDicts."""

from __future__ import annotations

import datetime
import importlib
import keyword
from collections.abc import Iterable
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tideflow.codegen.common import SHORTHANDS, WIDTH, _docstring_safe, _Output, _wrap
from tideflow.registry import Registry
from tideflow.spec.models import ENVELOPES


class TypeRenderer:
    """Renders the types of one registry's config models, collecting the imports and
    TypedDicts they need."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.out = _Output()

    # -- types ---------------------------------------------------------------------------

    def render(self, annotation: Any) -> str:
        """Source text of a type that accepts what the model accepts, in its plain-data form
        (nested models as TypedDicts)."""
        origin = get_origin(annotation)
        args = get_args(annotation)
        if origin is Annotated:
            return self.render(args[0])
        if origin in (Union, UnionType):
            return self._union(args)
        if origin is Literal:
            self.out.typing_names.add("Literal")
            return f"Literal[{', '.join(repr(a) for a in args)}]"
        if origin is list:
            return f"list[{self.render(args[0]) if args else 'Any'}]"
        if origin is dict:
            self.out.abc_names.add("Mapping")
            key, value = (self.render(a) for a in args) if args else ("str", "Any")
            return f"Mapping[{key}, {value}]"
        if annotation is Any:
            self.out.typing_names.add("Any")
            return "Any"
        if annotation is NoneType or annotation is None:
            return "None"
        if annotation in (str, int, float, bool):
            return str(annotation.__name__)
        if annotation is datetime.datetime:
            # pydantic accepts ISO 8601 text as well, as a YAML file gives it
            self.out.datetime = True
            return "datetime | str"
        if annotation in ENVELOPES.values():
            # a component of any registered type (a dead-letter sink): its constructor's dict
            self.out.abc_names.add("Mapping")
            self.out.typing_names.add("Any")
            return "Mapping[str, Any]"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            name = self.typed_dict(annotation)
            if annotation in SHORTHANDS:
                short = self.render(annotation.model_fields[SHORTHANDS[annotation]].annotation)
                return f"{name} | {short}"
            return name
        if isinstance(annotation, type):
            return self._imported(annotation)
        raise NotImplementedError(f"codegen cannot render the type {annotation!r} yet")

    def _union(self, members: Iterable[Any]) -> str:
        """Members rendered once each; literals merged into one ``Literal[...]``."""
        literals: list[Any] = []
        parts: list[str] = []
        has_none = False
        for member in _flatten(members):
            if get_origin(member) is Literal:
                literals += [a for a in get_args(member) if a not in literals]
            elif member is NoneType or member is None:
                has_none = True
            else:
                text = self.render(member)
                if text not in parts:
                    parts.append(text)
        if literals:
            self.out.typing_names.add("Literal")
            parts.insert(0, f"Literal[{', '.join(repr(a) for a in literals)}]")
        return " | ".join(parts + (["None"] if has_none else []))

    def _imported(self, cls: type) -> str:
        """A class from another package, imported for the type checker only; named by its
        top-level package when that exports it (``polars.DataFrame``)."""
        top = cls.__module__.split(".")[0]
        if getattr(importlib.import_module(top), cls.__name__, None) is cls:
            module = top
        else:
            module = cls.__module__
        self.out.type_checking[module] = f"import {module}"
        return f"{module}.{cls.__qualname__}"

    def typed_dict(self, model: type[BaseModel]) -> str:
        """The TypedDict mirroring a nested model (rendered once)."""
        if model in self.out.typed_dicts:
            return self.out.typed_dicts[model]
        name = model.__name__.replace("Spec", "Settings")
        taken = set(self.out.typed_dicts.values())
        if name in taken:
            name = f"{model.__module__.split('.')[-1].title().replace('_', '')}{name}"
        self.out.typed_dicts[model] = name
        rows = []
        for field_name, info in model.model_fields.items():
            key = info.alias or field_name
            annotation = self.render(info.annotation)
            if not info.is_required():
                self.out.typing_names.add("NotRequired")
                annotation = f"NotRequired[{annotation}]"
            rows.append((key, annotation, self._describe(info)))
        self.out.typing_names.add("TypedDict")
        summary = model.__doc__ or f"The settings of ``{name}``."
        doc = _wrap(summary, "    ", '"""', WIDTH, hanging=False)
        doc += ["", "    Keys:"]
        for key, _, description in rows:
            doc += _wrap(description or "(no description)", "        ", f"{key}: ", WIDTH)
        if all(k.isidentifier() and not keyword.iskeyword(k) for k, _, _ in rows):
            lines = [f"class {name}(TypedDict):", *_docstring_safe("\n".join(doc)).split("\n")]
            lines += ['    """', ""]
            lines += [f"    {key}: {annotation}" for key, annotation, _ in rows]
        else:
            # a key such as `for` is not an identifier: the functional form, doc as comments
            text = [line[4:].replace('"""', "", 1) for line in doc]
            lines = ["# " + line if line.strip() else "#" for line in text]
            lines.append(f"{name} = TypedDict(")
            lines.append(f"    {name!r},")
            lines.append("    {")
            lines += [f"        {key!r}: {annotation}," for key, annotation, _ in rows]
            lines += ["    },", ")"]
        self.out.typed_dict_code.append("\n".join(lines))
        return name

    @staticmethod
    def _describe(info: FieldInfo) -> str:
        return " ".join((info.description or "").split())


def _flatten(members: Iterable[Any]) -> list[Any]:
    """Union members with nested unions and ``Annotated`` wrappers opened."""
    flat: list[Any] = []
    for member in members:
        origin = get_origin(member)
        if origin is Annotated:
            flat += _flatten([get_args(member)[0]])
        elif origin in (Union, UnionType):
            flat += _flatten(get_args(member))
        else:
            flat.append(member)
    return flat
