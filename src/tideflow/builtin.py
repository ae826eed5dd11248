"""Registers the components that ship with tideflow (the ``builtin`` plugin).

Each type is registered by name and module, and its module is imported when the type is
first used (see :class:`tideflow.registry.Registration`): a run imports the connectors of
its own pipeline only. ``tests/unit/test_registry_lazy.py`` checks this table against the
classes the modules mark with ``@component``.
"""

from __future__ import annotations

from tideflow.core.contracts import Kind
from tideflow.registry import Registry

BUILTIN_MODULES = (
    "tideflow.operators.basic",
    "tideflow.operators.sql",
    "tideflow.operators.python",
    "tideflow.operators.documents",
    "tideflow.operators.timeseries.window",
    "tideflow.operators.timeseries.aggregate",
    "tideflow.operators.timeseries.dedupe",
    "tideflow.operators.timeseries.interpolate",
    "tideflow.operators.timeseries.outliers",
    "tideflow.operators.timeseries.normalize",
    "tideflow.connectors.generate",
    "tideflow.connectors.files.source",
    "tideflow.connectors.files.sink",
    "tideflow.connectors.stdout",
    "tideflow.connectors.memory",
    "tideflow.connectors.sql.source",
    "tideflow.connectors.sql.sink",
    "tideflow.connectors.topic.source",
    "tideflow.connectors.topic.sink",
    "tideflow.connectors.topic.repartition",
    "tideflow.connectors.kafka.source",
    "tideflow.connectors.kafka.sink",
    "tideflow.connectors.http.source",
    "tideflow.connectors.http.sink",
    "tideflow.connectors.http.enrich",
    "tideflow.connectors.http.webhook",
    "tideflow.operators.pii",
    "tideflow.connectors.mqtt",
    "tideflow.connectors.redis",
    "tideflow.connectors.amqp",
    "tideflow.connectors.influxdb",
)

BUILTIN_TYPES: tuple[tuple[Kind, str, str], ...] = (
    ("step", "select", "tideflow.operators.basic"),
    ("step", "rename", "tideflow.operators.basic"),
    ("step", "drop", "tideflow.operators.basic"),
    ("step", "cast", "tideflow.operators.basic"),
    ("step", "filter", "tideflow.operators.basic"),
    ("step", "with_columns", "tideflow.operators.basic"),
    ("step", "route", "tideflow.operators.basic"),
    ("step", "sql", "tideflow.operators.sql"),
    ("step", "python", "tideflow.operators.python"),
    ("step", "flatten", "tideflow.operators.documents"),
    ("step", "window", "tideflow.operators.timeseries.window"),
    ("step", "aggregate", "tideflow.operators.timeseries.aggregate"),
    ("step", "dedupe", "tideflow.operators.timeseries.dedupe"),
    ("step", "interpolate", "tideflow.operators.timeseries.interpolate"),
    ("step", "resample", "tideflow.operators.timeseries.interpolate"),
    ("step", "outliers", "tideflow.operators.timeseries.outliers"),
    ("step", "normalize", "tideflow.operators.timeseries.normalize"),
    ("source", "generate", "tideflow.connectors.generate"),
    ("source", "file", "tideflow.connectors.files.source"),
    ("sink", "file", "tideflow.connectors.files.sink"),
    ("sink", "stdout", "tideflow.connectors.stdout"),
    ("source", "memory", "tideflow.connectors.memory"),
    ("sink", "memory", "tideflow.connectors.memory"),
    ("source", "sql", "tideflow.connectors.sql.source"),
    ("sink", "sql", "tideflow.connectors.sql.sink"),
    ("source", "topic", "tideflow.connectors.topic.source"),
    ("sink", "topic", "tideflow.connectors.topic.sink"),
    ("source", "repartition", "tideflow.connectors.topic.repartition"),
    ("sink", "repartition", "tideflow.connectors.topic.repartition"),
    ("source", "kafka", "tideflow.connectors.kafka.source"),
    ("sink", "kafka", "tideflow.connectors.kafka.sink"),
    ("source", "http", "tideflow.connectors.http.source"),
    ("sink", "http", "tideflow.connectors.http.sink"),
    ("step", "http_enrich", "tideflow.connectors.http.enrich"),
    ("source", "webhook", "tideflow.connectors.http.webhook"),
    ("step", "pii", "tideflow.operators.pii"),
    ("source", "mqtt", "tideflow.connectors.mqtt"),
    ("sink", "mqtt", "tideflow.connectors.mqtt"),
    ("sink", "redis", "tideflow.connectors.redis"),
    ("source", "redis_streams", "tideflow.connectors.redis"),
    ("sink", "redis_streams", "tideflow.connectors.redis"),
    ("source", "amqp", "tideflow.connectors.amqp"),
    ("sink", "amqp", "tideflow.connectors.amqp"),
    ("sink", "influxdb", "tideflow.connectors.influxdb"),
)
"""(kind, type, module) of every built-in component."""

UNLISTED_TYPES: frozenset[tuple[Kind, str]] = frozenset(
    {("source", "memory"), ("sink", "memory"), ("source", "repartition"), ("sink", "repartition")}
)
"""(kind, type) of built-in components registered but not offered to users (``tideflow
connectors``, suggestions, reference, typed API, JSON Schema): the test kit's (:mod:`tideflow.
testing`), which back ``tf.records``/``tf.collect``, ``tideflow test`` and replays, and the
repartition topic's ends, which the stage planner of group workers puts in (:mod:`tideflow.
run.stages`)."""


def register(registry: Registry) -> None:
    """Add every built-in source, step and sink to ``registry`` (imported when used)."""
    for kind, type_name, module in BUILTIN_TYPES:
        registry.add_lazy(kind, type_name, module, listed=(kind, type_name) not in UNLISTED_TYPES)
