"""Rendering of the whole module: its header and imports, the support code every generated
function uses, the TypedDicts, functions and ``StepMethods`` class in order, and ``__all__``."""

from __future__ import annotations

from tideflow.codegen.common import HAND_WRITTEN_STEPS, _isort_key
from tideflow.codegen.render_functions import FunctionRenderer
from tideflow.core.settings import CheckpointSpec
from tideflow.registry import Registration, Registry
from tideflow.spec.models import AlertSpec, OnErrorSpec


class Generator(FunctionRenderer):
    """Renders the typed API module for the components of one registry."""

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
