"""The registry of component types: sources, steps and sinks by ``type`` name.

The registry is an object, so tests can build their own; :data:`default_registry` is the one
the CLI and :class:`tideflow.Pipeline` use. Built-in components and third-party packages both
register through the ``tideflow.plugins`` entry point group: each entry point names a function
that receives the registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Literal, TypeVar

from pydantic import BaseModel

from tideflow.core.contracts import Component, Sink, Source, Step
from tideflow.errors import TideflowError, UnknownNameError

Kind = Literal["source", "step", "sink"]
KINDS: tuple[Kind, ...] = ("source", "step", "sink")
ENTRY_POINT_GROUP = "tideflow.plugins"

C = TypeVar("C", bound=type[Component])


@dataclass(frozen=True)
class Registration:
    """One registered component type."""

    kind: Kind
    type_name: str
    cls: type[Component]
    summary: str

    @property
    def config_model(self) -> type[BaseModel]:
        """The pydantic model of this component's settings."""
        return self.cls.config_model


def suggest(name: str, known: Iterable[str]) -> str:
    """A "did you mean" hint listing the closest known names, or all of them if none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "valid names: " + ", ".join(known)


class Registry:
    """Component types by kind and name."""

    def __init__(self) -> None:
        self._items: dict[Kind, dict[str, Registration]] = {k: {} for k in KINDS}
        self._plugins_loaded = False
        self.version = 0
        """Bumped on each registration so derived models (JSON Schema, spec) can be cached."""

    def register(self, kind: Kind, type_name: str) -> Callable[[C], C]:
        """Class decorator: register a component class under ``type_name``."""
        expected = {"source": Source, "step": Step, "sink": Sink}[kind]

        def decorate(cls: C) -> C:
            if not issubclass(cls, expected):
                raise TypeError(f"{cls.__name__} must subclass {expected.__name__}")
            if type_name in self._items[kind] and self._items[kind][type_name].cls is not cls:
                raise TideflowError(f"{kind} type {type_name!r} is registered twice")
            doc = (cls.__doc__ or "").strip().splitlines()
            self._items[kind][type_name] = Registration(kind, type_name, cls, doc[0] if doc else "")
            self.version += 1
            return cls

        return decorate

    def source(self, type_name: str) -> Callable[[C], C]:
        """Register a source class."""
        return self.register("source", type_name)

    def step(self, type_name: str) -> Callable[[C], C]:
        """Register a step class."""
        return self.register("step", type_name)

    def sink(self, type_name: str) -> Callable[[C], C]:
        """Register a sink class."""
        return self.register("sink", type_name)

    def add_module(self, module: ModuleType) -> None:
        """Register every class in ``module`` marked with :func:`component`."""
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                kind = getattr(value, "tideflow_kind", None)
                if kind is not None:
                    self.register(kind, value.tideflow_type)(value)  # type: ignore[attr-defined]

    def load_plugins(self) -> None:
        """Load built-ins and third-party components from the entry point group, once."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from tideflow import builtin

        builtin.register(self)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.value == "tideflow.builtin:register":
                continue
            ep.load()(self)

    def items(self, kind: Kind) -> dict[str, Registration]:
        """All registrations of one kind, by name."""
        self.load_plugins()
        return dict(self._items[kind])

    def get(self, kind: Kind, type_name: str) -> Registration:
        """Look up a registration; unknown names raise with a "did you mean"."""
        items = self.items(kind)
        if type_name not in items:
            raise UnknownNameError(
                f"unknown {kind} type {type_name!r}; {suggest(type_name, items)}"
            )
        return items[type_name]

    def find(self, type_name: str) -> list[Registration]:
        """Every registration with this name, of any kind."""
        return [self.items(k)[type_name] for k in KINDS if type_name in self.items(k)]


def component(kind: Kind, type_name: str) -> Callable[[C], C]:
    """Mark a class as the component ``type_name``; :meth:`Registry.add_module` registers it.

    Marking instead of registering at import keeps registries independent: a test can build
    its own registry from the same modules.
    """

    def mark(cls: C) -> C:
        cls.tideflow_kind = kind  # type: ignore[attr-defined]
        cls.tideflow_type = type_name  # type: ignore[attr-defined]
        return cls

    return mark


default_registry = Registry()
"""The registry used by the CLI and the Python API."""
