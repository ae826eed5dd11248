"""tideflow: declarative data pipelines for Python, as a batch or a live stream.

``import tideflow`` loads neither the web service nor any database driver; connectors import
their optional dependencies when they are used.
"""

from __future__ import annotations

from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tideflow.api import (
        amqp,
        file,
        generate,
        http,
        influxdb,
        kafka,
        mqtt,
        redis,
        redis_streams,
        sql,
        stdout,
        topic,
        webhook,
    )
    from tideflow.core.contracts import Context, Sink, Source, SourceBatch, Step, StepOutput
    from tideflow.core.observer import RunObserver
    from tideflow.core.result import RunResult
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

# Where each public name lives. They are imported on first use (PEP 562): importing any
# ``tideflow.*`` module runs this file first, and the ``tideflow`` command, which needs a few
# of them, should not pay for the Python API's (the typed constructors, Stream, Pipeline).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "tideflow.api": (
        "amqp",
        "file",
        "generate",
        "http",
        "influxdb",
        "kafka",
        "mqtt",
        "redis",
        "redis_streams",
        "sql",
        "stdout",
        "topic",
        "webhook",
    ),
    "tideflow.core.contracts": ("Context", "Sink", "Source", "SourceBatch", "Step", "StepOutput"),
    "tideflow.core.observer": ("RunObserver",),
    "tideflow.core.result": ("RunResult",),
    "tideflow.errors": (
        "ConfigError",
        "PipelineError",
        "RecordError",
        "StateError",
        "StateLostError",
        "TerminalError",
        "TideflowError",
        "TransientError",
    ),
    "tideflow.pipeline": ("Pipeline", "collect", "connector", "records"),
    "tideflow.registry": ("Registry", "component", "default_registry"),
    "tideflow.results": ("OutputTruncatedError", "PipelineResult"),
    "tideflow.spec.loader": ("load_pipeline",),
    "tideflow.stream": ("Processor", "Stream"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
_MOVED = {"memory": "tideflow.testing"}
"""Names that moved out of the public surface: still found here, with a DeprecationWarning."""


if not TYPE_CHECKING:
    # Hidden from type checkers, so that a misspelt constructor is an error there.

    def __getattr__(name: str) -> Any:
        """A public name, imported on first use; and every registered source or sink type
        has a constructor of its name: a plugin's ``tf.myqueue(...)`` is
        ``tf.connector("myqueue", ...)`` (built-in types have typed constructors, above)."""
        if name in _MOVED:
            import warnings

            warnings.warn(
                f"tideflow.{name} moved to {_MOVED[name]}.{name} (it is part of the test kit)",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(import_module(_MOVED[name]), name)
        module = _MODULE_OF.get(name)
        if module is not None:
            value = getattr(import_module(module), name)
            globals()[name] = value  # the next look-up is a plain attribute
            return value
        registry = import_module("tideflow.registry").default_registry
        if not name.startswith("_") and (
            name in registry.items("source") or name in registry.items("sink")
        ):
            return partial(import_module("tideflow.pipeline").connector, name)
        raise AttributeError(f"module 'tideflow' has no attribute {name!r}")

    def __dir__() -> list[str]:
        """The public names, imported or not."""
        return sorted(set(globals()) | set(__all__))


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
    "mqtt",
    "records",
    "redis",
    "redis_streams",
    "sql",
    "stdout",
    "topic",
    "webhook",
]
