"""Generates :mod:`tideflow.api`, the typed Python API, from the config models.

::

    python -m tideflow.codegen            # rewrite src/tideflow/api.py (also: make docs)
    python -m tideflow.codegen --check    # exit 1 when the committed module is stale

The models are the single source of truth, as for the JSON Schema and docs/connectors.md:
every built-in source and sink gets a constructor function and every built-in step a
:class:`~tideflow.Pipeline` method, whose keyword arguments are the model's fields (types,
defaults and descriptions included), so an editor completes them and ``mypy --strict``
rejects a misspelt one. A test regenerates the module and fails when it differs from the
committed file, or when a registered built-in has no typed entry point.

Plugins registered through entry points are not generated into tideflow's own module; they
keep the dynamic forms ``tf.connector(type, ...)`` / ``Pipeline.step(type, ...)`` (and the
attribute shortcuts at run time).
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import keyword
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tideflow.core.contracts import Kind
from tideflow.core.settings import CheckpointSpec
from tideflow.registry import Registration, Registry
from tideflow.spec.models import (
    ENVELOPES,
    AlertSpec,
    OnErrorSpec,
    PipelineSpec,
)

TARGET = Path(__file__).with_name("api.py")

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


class Generator:
    """Renders the typed API module for the components of one registry."""

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

    # -- parameters ----------------------------------------------------------------------

    @staticmethod
    def _describe(info: FieldInfo) -> str:
        return " ".join((info.description or "").split())

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

    # -- module --------------------------------------------------------------------------

    def module(self) -> str:
        """The whole module's source text (before formatting)."""
        self.registry.load_plugins()
        builtins = _builtin_names()
        connectors: dict[str, list[Registration]] = {}
        for kind in ("source", "sink"):
            for type_name, reg in sorted(self.registry.items(kind).items()):
                if (kind, type_name) in builtins:
                    connectors.setdefault(type_name, []).append(reg)
        steps = {
            type_name: reg
            for type_name, reg in sorted(self.registry.items("step").items())
            if ("step", type_name) in builtins and type_name not in HAND_WRITTEN_STEPS
        }
        # Pipeline settings first: their nested models get the plainest names.
        for model in (CheckpointSpec, OnErrorSpec, AlertSpec):
            self.typed_dict(model)
        settings = self.pipeline_settings()
        functions = [self.connector(name, regs) for name, regs in sorted(connectors.items())]
        methods = [self.step_method(name, reg) for name, reg in steps.items()]
        self.out.typing_names.update({"Self", "TYPE_CHECKING"})
        self.out.abc_names.add("Callable")
        return (
            "\n\n\n".join(
                [
                    self._header(),
                    *self.out.typed_dict_code,
                    settings,
                    *functions,
                    _STEP_CLASS_HEAD + "\n\n".join(methods),
                    _all(
                        [
                            *self.out.typed_dicts.values(),
                            "PipelineSettings",
                            *connectors,
                            "NOT_GIVEN",
                            "NotGiven",
                            "StepMethods",
                        ]
                    ),
                ]
            ).rstrip()
            + "\n"
        )

    def _header(self) -> str:
        imports = ["from __future__ import annotations", "", "import inspect"]
        if self.out.abc_names:
            imports.append(f"from collections.abc import {', '.join(sorted(self.out.abc_names))}")
        if self.out.datetime:
            imports.append("from datetime import datetime")
        imports.append("from enum import Enum")
        if not self.out.type_checking:
            self.out.typing_names.discard("TYPE_CHECKING")
        names = sorted(self.out.typing_names, key=_isort_key)
        imports.append(f"from typing import {', '.join(names)}")
        if self.out.type_checking:
            imports += ["", "if TYPE_CHECKING:"]
            imports += [f"    {line}" for _, line in sorted(self.out.type_checking.items())]
        return "\n".join([_MODULE_DOC, *imports, "", "", _SUPPORT.strip()])


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


def _docstring_safe(code: str) -> str:
    """Backslashes in descriptions (regular expressions) must reach the docstring as typed."""
    return code.replace("\\", "\\\\")


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest, as ruff's isort orders names."""
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name


def _all(names: list[str]) -> str:
    rows = "\n".join(f'    "{name}",' for name in sorted(set(names), key=_isort_key))
    return f"__all__ = [\n{rows}\n]"


def _builtin_names() -> set[tuple[str, str]]:
    """(kind, type) of every component tideflow itself ships."""
    from tideflow.builtin import register

    own = Registry()
    register(own)
    return {(kind, name) for kind in ("source", "step", "sink") for name in own._items[kind]}


_MODULE_DOC = '''"""The typed Python API: a constructor for every built-in source and sink, a method
for every built-in step (on :class:`tideflow.Pipeline`), and TypedDicts for nested settings.

Generated from the config models by ``python -m tideflow.codegen`` (``make docs``): do not
edit by hand. A test regenerates it and fails when it is stale.

Each function takes exactly the keys its model accepts, with their types, defaults and
descriptions, and returns the plain settings dict that ``Pipeline.source()`` /
``Pipeline.sink()`` take; only the arguments given are set (a key left out keeps the
model's default). A type that is both a source and a sink (``file``, ``sql``, ``kafka``...)
has one constructor taking the keys of both; a key only one of them has says so, and
validation rejects it on the other.
"""'''

_SUPPORT = '''
class NotGiven(Enum):
    """The default of an argument whose default depends on where the component is used (a
    source or a sink), or is not a plain value: leaving it out keeps the model's default."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven.NOT_GIVEN
_STEP_ENVELOPE = ("self", "name", "input")


def _given(
    function: Callable[..., Any] | str,
    values: dict[str, Any],
    keys: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The arguments the caller gave: those that are not the parameter's own default
    object (so a left-out key keeps the model's default, whatever the component's kind).
    ``function`` is the function or the name of one in this module."""
    target = globals()[function] if isinstance(function, str) else function
    defaults = {name: p.default for name, p in inspect.signature(target).parameters.items()}
    return {
        (keys or {}).get(name, name): value
        for name, value in values.items()
        if name not in skip and value is not NOT_GIVEN and value is not defaults.get(name)
    }
'''

_STEP_CLASS_HEAD = '''class StepMethods:
    """One method per built-in step, mixed into :class:`tideflow.Pipeline`."""

    def step(
        self,
        type_name: str,
        name: str | None = None,
        input: str | list[str] | None = None,
        **settings: Any,
    ) -> Self:
        """Add a step of any registered type (implemented by :class:`tideflow.Pipeline`)."""
        raise NotImplementedError

'''


def generate(registry: Registry | None = None) -> str:
    """The formatted source of :mod:`tideflow.api`."""
    if registry is None:
        from tideflow.registry import default_registry

        registry = default_registry
    return _ruff_format(Generator(registry).module())


def _ruff_format(text: str) -> str:
    """The project's formatter, so the committed module passes ``ruff format --check``."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
            cwd=root,
        )
    except OSError as exc:
        raise RuntimeError(f"cannot run ruff to format the generated module: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeError(
            "ruff could not format the generated module (install the dev extra: "
            f'pip install -e ".[dev]"): {done.stderr.strip()}'
        )
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    """Write the module, or with ``--check`` report whether it is stale."""
    args = sys.argv[1:] if argv is None else argv
    text = generate()
    if "--check" in args:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run `python -m tideflow.codegen`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
