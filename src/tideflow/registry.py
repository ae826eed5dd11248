"""The registry of component types: sources, steps and sinks by ``type`` name.

The registry is an object, so tests can build their own; :data:`default_registry` is the one
the CLI and :class:`tideflow.Pipeline` use. Built-in components and third-party packages both
register through the ``tideflow.plugins`` entry point group: each entry point names a function
that receives the registry.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel

from tideflow.core.contracts import KINDS, Component, Kind, Sink, Source, Step
from tideflow.errors import TideflowError, UnknownNameError, suggest

ENTRY_POINT_GROUP = "tideflow.plugins"
BUILTIN_PLUGIN = "tideflow.builtin"
"""The module of the components that ship with tideflow (also its entry point)."""

C = TypeVar("C", bound=type[Component[Any]])


class Registration:
    """One registered component type.

    A built-in type is registered by name and module only; its module is imported when the
    class, its settings or its summary is first needed, so a pipeline imports the
    connectors it uses and no others (each pulls in its own libraries: fsspec and pyarrow,
    HTTP clients, database drivers).

    An unlisted type (``listed=False``, such as the test kit's ``memory``) runs like any
    other but is left out of what users are offered: ``tideflow connectors``, "did you
    mean" suggestions, the generated reference, the typed API and the JSON Schema.
    """

    def __init__(
        self,
        kind: Kind,
        type_name: str,
        cls: type[Component[Any]] | None = None,
        module: str | None = None,
        registry: Registry | None = None,
        listed: bool = True,
    ) -> None:
        if cls is None and (module is None or registry is None):
            raise TypeError("a registration needs its class, or its module and registry")
        self.kind, self.type_name = kind, type_name
        self._cls, self._module, self._registry = cls, module, registry
        self.listed = listed

    @property
    def cls(self) -> type[Component[Any]]:
        """The component class (importing its module on first use)."""
        if self._cls is None:
            assert self._module is not None and self._registry is not None
            self._registry.add_module(importlib.import_module(self._module))
            found = self._registry._items[self.kind].get(self.type_name)
            if found is None or found._cls is None:
                raise TideflowError(
                    f"{self._module} does not define the {self.kind} type {self.type_name!r}"
                )
            self._cls = found._cls
        return self._cls

    @property
    def summary(self) -> str:
        """The docstring's whole first paragraph, never a line cut mid-sentence."""
        return " ".join((self.cls.__doc__ or "").strip().split("\n\n")[0].split())

    @property
    def config_model(self) -> type[BaseModel]:
        """The pydantic model of this component's settings."""
        return self.cls.config_model

    def __repr__(self) -> str:
        return f"Registration({self.kind!r}, {self.type_name!r})"


class Registry:
    """Component types by kind and name."""

    def __init__(self) -> None:
        self._items: dict[Kind, dict[str, Registration]] = {k: {} for k in KINDS}
        self._plugins_loaded = False
        self._loading = False
        self._load_lock = threading.RLock()
        self.version = 0
        """Bumped on each registration so derived models (JSON Schema, spec) can be cached."""

    def register(self, kind: Kind, type_name: str, *, listed: bool = True) -> Callable[[C], C]:
        """Class decorator: register a component class under ``type_name`` (``listed=False``:
        usable by name, but not offered to users; see :class:`Registration`)."""
        expected = {"source": Source, "step": Step, "sink": Sink}[kind]

        def decorate(cls: C) -> C:
            if not issubclass(cls, expected):
                raise TypeError(f"{cls.__name__} must subclass {expected.__name__}")
            known = self._items[kind].get(type_name)
            if known is not None and known._cls is not None and known._cls is not cls:
                raise TideflowError(f"{kind} type {type_name!r} is registered twice")
            if known is not None and known._cls is None:
                known._cls = cls  # a lazy registration, now imported: the same entry
            else:
                self._items[kind][type_name] = Registration(kind, type_name, cls, listed=listed)
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

    def add_lazy(self, kind: Kind, type_name: str, module: str, *, listed: bool = True) -> None:
        """Register ``type_name`` as defined in ``module``, imported when first used."""
        if type_name in self._items[kind]:
            raise TideflowError(f"{kind} type {type_name!r} is registered twice")
        self._items[kind][type_name] = Registration(
            kind, type_name, module=module, registry=self, listed=listed
        )
        self.version += 1

    def add_module(self, module: ModuleType) -> None:
        """Register every class in ``module`` marked with :func:`component`."""
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                kind = getattr(value, "tideflow_kind", None)
                if kind is not None:
                    listed = getattr(value, "tideflow_listed", True)
                    self.register(kind, value.tideflow_type, listed=listed)(value)  # type: ignore[attr-defined]

    def load_plugins(self) -> None:
        """Load built-ins and third-party components from the entry point group, once.
        Thread-safe: the server validates on several request threads at once, and a thread
        that saw "loading" as "loaded" would find a kind with no types."""
        if self._plugins_loaded:
            return
        with self._load_lock:
            if self._plugins_loaded or self._loading:
                return  # loaded meanwhile, or a plugin of this thread looks itself up
            self._loading = True
            try:
                # The built-in plugin first, by name like any entry point (it imports this
                # module, so importing it here would make the two a cycle); then the rest.
                importlib.import_module(BUILTIN_PLUGIN).register(self)
                for ep in entry_points(group=ENTRY_POINT_GROUP):
                    if ep.value == f"{BUILTIN_PLUGIN}:register":
                        continue
                    ep.load()(self)
            finally:
                self._loading = False
                self._plugins_loaded = True  # a failing plugin is not retried on every call

    def items(self, kind: Kind, *, unlisted: bool = False) -> dict[str, Registration]:
        """The registrations of one kind, by name: those offered to users, or with
        ``unlisted=True`` every one (what a pipeline may name)."""
        self.load_plugins()
        return {name: reg for name, reg in self._items[kind].items() if unlisted or reg.listed}

    def get(self, kind: Kind, type_name: str) -> Registration:
        """Look up a registration, listed or not; unknown names raise with a "did you mean"
        among the listed ones."""
        found = self.items(kind, unlisted=True).get(type_name)
        if found is None:
            raise UnknownNameError(
                f"unknown {kind} type {type_name!r}; {suggest(type_name, self.items(kind))}"
            )
        return found

    def find(self, type_name: str) -> list[Registration]:
        """Every registration with this name, of any kind, listed or not."""
        every = [self.items(k, unlisted=True) for k in KINDS]
        return [names[type_name] for names in every if type_name in names]


def component(kind: Kind, type_name: str, *, listed: bool = True) -> Callable[[C], C]:
    """Mark a class as the component ``type_name``; :meth:`Registry.add_module` registers it.

    Marking instead of registering at import keeps registries independent: a test can build
    its own registry from the same modules. ``listed=False`` marks a type pipelines may use
    but users are not offered (see :class:`Registration`).
    """

    def mark(cls: C) -> C:
        cls.tideflow_kind = kind  # type: ignore[attr-defined]
        cls.tideflow_type = type_name  # type: ignore[attr-defined]
        cls.tideflow_listed = listed  # type: ignore[attr-defined]
        return cls

    return mark


default_registry = Registry()
"""The registry used by the CLI and the Python API."""
