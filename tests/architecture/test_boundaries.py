"""The architecture rules that keep the core small and the import light."""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import tideflow

SRC = Path(tideflow.__file__).parent
WEB = ("tideflow.service", "fastapi", "starlette", "uvicorn")
"""The web service and its framework: `tideflow serve` needs them, a plain run does not."""


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_tideflow_loads_no_driver_or_web_framework() -> None:
    code = (
        "import sys, tideflow; heavy = [m for m in ('duckdb', 'fastapi', 'uvicorn', 'psycopg', "
        "'pymysql', 'confluent_kafka', 's3fs', 'tideflow.cli') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_observe_imports_nothing_of_the_web_service() -> None:
    offenders = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in (SRC / "observe").rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(WEB)
    }
    assert not offenders, sorted(offenders)


RUN_AND_LIST_MODULES = """
import atexit, json, sys
out, argv = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from tideflow.cli.entry import main
sys.argv = ["tideflow", *argv]
main()
"""
"""Runs the `tideflow` command in this fresh interpreter and writes, when it exits, the names
of every module it imported."""


def test_run_with_metrics_port_loads_no_web_service_or_framework(tmp_path: Path) -> None:
    """A real `tideflow run --metrics-port` in a fresh interpreter (this one may have imported
    the service): it serves /metrics while it runs, and imports neither `tideflow.service`
    nor a web framework."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "name: light\n"
        "source: {type: generate, count: 40, rate: 20, batch_size: 2}\n"
        "sink: {type: file, path: out, format: ndjson}\n",
        encoding="utf-8",
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    modules = tmp_path / "modules.json"
    command = [sys.executable, "-c", RUN_AND_LIST_MODULES, str(modules)]
    command += ["run", str(pipeline), "--metrics-port", str(port), "-q"]
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scraped = ""
    try:
        while run.poll() is None and "tideflow_records_total{" not in scraped:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    scraped = r.read().decode()
            except OSError:
                time.sleep(0.05)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr.decode()
    assert re.search(r'^tideflow_records_total\{[^}]*pipeline="light"', scraped, re.MULTILINE)
    loaded = set(json.loads(modules.read_text(encoding="utf-8")))
    assert "tideflow.observe.metrics" in loaded
    assert sorted(m for m in loaded if m in WEB or m.startswith(tuple(f"{w}." for w in WEB))) == []


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
