"""Processors of a :class:`~tideflow.stream.Stream`: functions and :class:`Processor`
objects run record by record (as the ``python`` step in ``mode: value``), and the built-in
ones (:func:`window`, :func:`interpolate`, :func:`outliers`, :func:`normalize`), the steps of
the same names with the same settings as in a pipeline file."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tideflow.errors import ConfigError

MESSAGE_TIME = "message_time"
"""Column that holds the message timestamp for built-in processors given no time column."""

PREFIX = "processor__"
"""What a registered function's attribute of ``tideflow.stream`` starts with."""
FUNCTIONS: dict[str, Callable[[Any], Any]] = {}
"""Registered processor functions by attribute name: the pipelines' ``python`` steps call
``tideflow.stream:processor__<name>``, which ``tideflow.stream.__getattr__`` looks up here."""


class Processor(ABC):
    """A record-at-a-time processor: ``process`` gets each record (any JSON value: a dict,
    a list, a string, a number, ...) and returns the record to pass on (any JSON value), or
    None to drop it. An exception dead-letters that record with the exception as the
    reason; the stream goes on."""

    @abstractmethod
    def process(self, data: Any) -> Any:
        """Handle one record."""


@dataclass(frozen=True)
class BuiltinProcessor:
    """A processor made of tideflow's built-in steps, with the same settings as in a
    pipeline file; registered with :meth:`Stream.register_processor` like a function.

    Made by :func:`window`, :func:`interpolate`, :func:`outliers` and :func:`normalize`.
    Records must be JSON objects (their keys become columns)."""

    step_type: str
    settings: dict[str, Any]
    time_column: str | None = None
    epoch: Literal["s", "ms", "us"] | None = None
    timed: bool = False

    @property
    def needs_message_time(self) -> bool:
        """True when the step's event time is the message timestamp."""
        return self.timed and self.time_column is None

    def steps(self, name: str) -> list[dict[str, Any]]:
        """The pipeline steps, as in a pipeline file; the main step is named ``name``."""
        steps: list[dict[str, Any]] = []
        settings = dict(self.settings)
        if self.timed:
            column = self.time_column or MESSAGE_TIME
            if self.time_column is None:
                steps.append(
                    {"type": "rename", "name": f"{name}_time", "columns": {"_timestamp": column}}
                )
            elif self.epoch is not None:
                factor = {"s": 1_000_000, "ms": 1_000, "us": 1}[self.epoch]
                quoted = '"' + column.replace('"', '""') + '"'
                steps.append(
                    {
                        "type": "with_columns",
                        "name": f"{name}_time_epoch",
                        "columns": {column: f"CAST({quoted} * {factor} AS TIMESTAMP)"},
                    }
                )
                steps.append(
                    {"type": "cast", "name": f"{name}_time", "columns": {column: "datetime_utc"}}
                )
            else:
                # Text first: a number would otherwise be taken for microseconds; as text it
                # does not parse as a time, and its record is dead-lettered saying so.
                steps.append(
                    {"type": "cast", "name": f"{name}_time_text", "columns": {column: "string"}}
                )
                steps.append(
                    {"type": "cast", "name": f"{name}_time", "columns": {column: "datetime_utc"}}
                )
            settings["time_column"] = column
        steps.append({"type": self.step_type, "name": name, **settings})
        return steps


def window(
    time_column: str | None = None,
    *,
    epoch: Literal["s", "ms", "us"] | None = None,
    **settings: Any,
) -> BuiltinProcessor:
    """Windowed aggregation (the ``window`` step): ``kind`` tumbling, sliding or session,
    ``size`` (default ``$WINDOW_SIZE``; a bare number there is seconds), ``slide``, ``keys``,
    ``aggregations`` or ``columns`` aggregated with ``$AGGREGATION_TYPE`` (default mean), and
    every other setting of the step.

    ``time_column`` holds each record's event time as ISO-8601 text, or epoch numbers with
    ``epoch="s"`` (``"ms"``, ``"us"``); without it, the time the message was published is
    used. Output records: ``window_start``, ``window_end``, the keys and the aggregates."""
    return BuiltinProcessor("window", settings, time_column, epoch, timed=True)


def interpolate(
    time_column: str | None = None,
    *,
    epoch: Literal["s", "ms", "us"] | None = None,
    **settings: Any,
) -> BuiltinProcessor:
    """Resampling onto a fixed time grid (the ``interpolate`` step): ``columns``,
    ``interval``, ``keys``, ``method`` (linear, ffill, none), ``max_gap``; the time column
    as for :func:`window` (without one it is the publish time, in ``message_time``)."""
    return BuiltinProcessor("interpolate", settings, time_column, epoch, timed=True)


def outliers(**settings: Any) -> BuiltinProcessor:
    """Outlier detection (the ``outliers`` step): ``column``, ``keys``, ``method`` (zscore,
    mad, iqr), ``window``, ``threshold``, ``mode`` ``flag`` (adds ``is_outlier`` and
    ``score``) or ``drop``."""
    if settings.get("mode") == "route":
        raise ConfigError(
            "outliers: mode `route` sends outliers to a second output, which a processor "
            "(one output topic) would leave unread; use `flag` or `drop`"
        )
    return BuiltinProcessor("outliers", settings)


def normalize(**settings: Any) -> BuiltinProcessor:
    """Normalisation (the ``normalize`` step): ``columns``, ``method`` (minmax, zscore),
    ``fit`` (online per ``keys``, or fixed with ``params``)."""
    return BuiltinProcessor("normalize", settings)


ProcessorLike = Callable[[Any], Any] | Processor | BuiltinProcessor
