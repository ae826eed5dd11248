"""Built-in components are registered by name and imported when first used: the table in
``tideflow.builtin`` must name exactly the classes the modules mark, and a lookup must not
import the modules of other components."""

from __future__ import annotations

import importlib
import subprocess
import sys

from tideflow.builtin import BUILTIN_MODULES, BUILTIN_TYPES, UNLISTED_TYPES
from tideflow.core.contracts import KINDS
from tideflow.registry import Registry


def test_the_lazy_table_names_every_marked_class_and_nothing_else() -> None:
    marked = set()
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name:
                kind = getattr(value, "tideflow_kind", None)
                if kind is not None:
                    marked.add((kind, value.tideflow_type, name))
    assert set(BUILTIN_TYPES) == marked
    assert {m for _, _, m in BUILTIN_TYPES} == set(BUILTIN_MODULES)


def test_the_lazy_table_lists_what_the_classes_list() -> None:
    # A lazy registration decides before import whether a type is offered to users, so the
    # table's unlisted types must be exactly the classes marked `listed=False`.
    unlisted = {
        (kind, type_name)
        for kind, type_name, name in BUILTIN_TYPES
        for value in vars(importlib.import_module(name)).values()
        if getattr(value, "tideflow_kind", None) == kind
        and getattr(value, "tideflow_type", None) == type_name
        and getattr(value, "tideflow_listed", True) is False
    }
    assert (
        unlisted
        == UNLISTED_TYPES
        == {
            ("source", "memory"),
            ("sink", "memory"),
            ("source", "repartition"),
            ("sink", "repartition"),
        }
    )


def test_a_lazy_registration_resolves_to_the_class_its_module_marks() -> None:
    registry = Registry()
    for kind in KINDS:
        for type_name, reg in registry.items(kind).items():
            cls = reg.cls
            assert (cls.tideflow_kind, cls.tideflow_type) == (kind, type_name)  # type: ignore[attr-defined]
            assert reg.summary and reg.config_model is cls.config_model


def test_validating_a_pipeline_imports_only_its_own_connectors() -> None:
    # A fresh interpreter: this one has imported every module already.
    code = (
        "import sys\n"
        "from tideflow.spec.loader import load_pipeline_text\n"
        "load_pipeline_text('name: p\\nsource: {type: generate, count: 3}\\n"
        "sink: {type: stdout}\\n', 'p.yaml')\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('tideflow.connectors'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "tideflow.connectors.generate" in out
    assert "tideflow.connectors.stdout" in out
    for other in ("files.source", "sql.sink", "http.source", "topics", "mqtt", "amqp"):
        assert f"tideflow.connectors.{other}" not in out
