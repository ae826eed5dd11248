"""tideflow: declarative data pipelines for Python, as a batch or a live stream.

``import tideflow`` loads neither the web service nor any database driver; connectors import
their optional dependencies when they are used.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from tideflow.api import (
    amqp,
    file,
    generate,
    http,
    influxdb,
    kafka,
    memory,
    mqtt,
    redis,
    redis_streams,
    sql,
    stdout,
    topic,
    webhook,
)
from tideflow.core.contracts import Context, Sink, Source, SourceBatch, Step, StepOutput
from tideflow.core.engine import RunObserver, RunResult
from tideflow.errors import (
    ConfigError,
    PipelineError,
    RecordError,
    StateError,
    StateLostError,
    TerminalError,
    TideflowError,
    TransientError,
)
from tideflow.pipeline import Pipeline, collect, connector, records
from tideflow.registry import Registry, component, default_registry
from tideflow.results import OutputTruncatedError, PipelineResult
from tideflow.spec.loader import load_pipeline
from tideflow.stream import Processor, Stream

__version__ = "0.1.0"


if not TYPE_CHECKING:
    # Hidden from type checkers, so that a misspelt constructor is an error there.

    def __getattr__(name: str) -> Any:
        """Every registered source or sink type has a constructor of its name: a plugin's
        ``tf.myqueue(...)`` is ``tf.connector("myqueue", ...)`` (built-in types have typed
        constructors, imported above)."""
        registry = default_registry
        if not name.startswith("_") and (
            name in registry.items("source") or name in registry.items("sink")
        ):
            return partial(connector, name)
        raise AttributeError(f"module 'tideflow' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "Context",
    "OutputTruncatedError",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
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
    "memory",
    "mqtt",
    "records",
    "redis",
    "redis_streams",
    "sql",
    "stdout",
    "topic",
    "webhook",
]
