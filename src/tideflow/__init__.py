"""tideflow: declarative data pipelines for Python, as a batch or a live stream.

``import tideflow`` loads neither the web service nor any database driver; connectors import
their optional dependencies when they are used.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from tideflow.core.contracts import Context, Sink, Source, SourceBatch, Step, StepOutput
from tideflow.core.engine import RunObserver, RunResult
from tideflow.errors import (
    ConfigError,
    PipelineError,
    RecordError,
    StateError,
    TerminalError,
    TideflowError,
    TransientError,
)
from tideflow.pipeline import Pipeline, collect, connector, file, generate, records, stdout
from tideflow.registry import Registry, component, default_registry
from tideflow.spec.loader import load_pipeline

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Every registered source or sink type has a constructor of its name: ``tf.kafka(...)``
    is ``tf.connector("kafka", ...)``, so plugins get a Python form for free."""
    registry = default_registry
    if not name.startswith("_") and (
        name in registry.items("source") or name in registry.items("sink")
    ):
        return partial(connector, name)
    raise AttributeError(f"module 'tideflow' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "Context",
    "Pipeline",
    "PipelineError",
    "RecordError",
    "Registry",
    "RunObserver",
    "RunResult",
    "Sink",
    "Source",
    "SourceBatch",
    "StateError",
    "Step",
    "StepOutput",
    "TerminalError",
    "TideflowError",
    "TransientError",
    "__version__",
    "collect",
    "component",
    "connector",
    "default_registry",
    "file",
    "generate",
    "load_pipeline",
    "records",
    "stdout",
]
