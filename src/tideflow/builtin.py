"""Registers the components that ship with tideflow (the ``builtin`` plugin)."""

from __future__ import annotations

import importlib

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
    "tideflow.connectors.topics",
    "tideflow.connectors.http.source",
    "tideflow.connectors.http.sink",
    "tideflow.connectors.http.enrich",
    "tideflow.connectors.http.webhook",
    "tideflow.operators.pii",
    "tideflow.connectors.mqtt",
    "tideflow.connectors.redis_connector",
    "tideflow.connectors.amqp",
    "tideflow.connectors.influxdb",
)


def register(registry: Registry) -> None:
    """Add every built-in source, step and sink to ``registry``."""
    for name in BUILTIN_MODULES:
        registry.add_module(importlib.import_module(name))
