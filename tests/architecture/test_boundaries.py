"""The architecture rules that keep the core small and the import light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tideflow

SRC = Path(tideflow.__file__).parent


def test_import_tideflow_loads_no_driver_or_web_framework() -> None:
    code = (
        "import sys, tideflow; heavy = [m for m in ('duckdb', 'fastapi', 'uvicorn', 'psycopg', "
        "'pymysql', 'confluent_kafka', 's3fs', 'tideflow.cli') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_surface_is_pinned() -> None:
    assert sorted(tideflow.__all__) == sorted(
        [
            "ConfigError",
            "Context",
            "OutputTruncatedError",
            "Pipeline",
            "PipelineResult",
            "PipelineError",
            "Processor",
            "RecordError",
            "Registry",
            "RunObserver",
            "RunResult",
            "Sink",
            "Source",
            "SourceBatch",
            "StateError",
            "StateLostError",
            "Step",
            "StepOutput",
            "Stream",
            "TerminalError",
            "TideflowError",
            "TransientError",
            "__version__",
            "amqp",
            "collect",
            "component",
            "connector",
            "default_registry",
            "file",
            "generate",
            "http",
            "influxdb",
            "kafka",
            "load_pipeline",
            "mqtt",
            "records",
            "redis",
            "redis_streams",
            "sql",
            "stdout",
            "topic",
            "webhook",
        ]
    )
    for name in tideflow.__all__:
        assert hasattr(tideflow, name), name


def test_every_public_module_function_and_class_has_a_docstring() -> None:
    missing = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            named = isinstance(node, ast.FunctionDef | ast.ClassDef)
            public = named and not node.name.startswith("_")
            if public and ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(SRC)}:{node.name}")
    assert not missing, missing


def test_every_builtin_component_module_registers_something() -> None:
    import importlib

    from tideflow.builtin import BUILTIN_MODULES
    from tideflow.registry import Registry

    for name in BUILTIN_MODULES:
        registry = Registry()
        registry.add_module(importlib.import_module(name))
        assert any(registry._items[k] for k in ("source", "step", "sink")), name
