"""The Stream/Processor API, for people used to PyDataStream-style stream processors.

    from tideflow import Stream

    def double(data):
        return data * 2

    s = Stream("MyPipeline")      # the embedded log; Kafka with broker= or KAFKA_BROKER
    s.register_processor("double_numbers", double, input_topic="input", output_topic="double")
    s.stream_data(data=[1, 2, 3], stream_name="input")
    s.start(stop_at_end=True)     # without stop_at_end: runs until stop() or Ctrl-C
    s.read_data("double")         # [2, 4, 6]

Every processor is an ordinary tideflow pipeline named ``<stream>-<processor>``: a ``topic``
source (consumer group ``<stream>.<processor>``), the processor's steps, a ``topic`` sink (or
any sink given with ``sink=``). It therefore has what every pipeline has: checkpoints, group
offsets committed after them, the dead-letter ledger (a processor that raises sends that
record there with the exception, and the stream goes on), exactly-once output into the
embedded log, metrics and alert rules.

- A function or :class:`Processor` gets each record as the JSON value it was published as
  (an object, a list, a string, a number, ...) and returns one (``None`` drops the record):
  the ``python`` step in ``mode: value``.
- Built-in processors (:func:`window`, :func:`interpolate`, :func:`outliers`,
  :func:`normalize`) are the steps of the same names with the same settings as in a
  pipeline file; they read records that are JSON objects, as columns.
- :meth:`Stream.stream_data` is a producer call: every call appends every record given,
  visible at once.
- A processor that dies (not a bad record: a broker error, a failing sink, a bug outside
  the per-record path) stops the stream, and :meth:`Stream.start` (blocking) or
  :meth:`Stream.join`/:meth:`Stream.stop` raise it; ``results`` records it.

Configuration comes from the arguments, else a YAML file (``config=``, keys ``name``,
``broker``, ``topic``, ``state_dir``, ``checkpoint_seconds``, ``metrics_port``), else the
environment: ``STREAM_NAME``, ``KAFKA_BROKER``, ``TOPIC``; ``WINDOW_SIZE`` and
``AGGREGATION_TYPE`` set the defaults of :func:`window` (``WINDOW_SIZE=60`` is 60 seconds).
The guide is ``docs/stream.md``.
"""

from __future__ import annotations

from typing import Any

from tideflow.stream.processors import (
    FUNCTIONS,
    MESSAGE_TIME,
    PREFIX,
    BuiltinProcessor,
    Processor,
    interpolate,
    normalize,
    outliers,
    window,
)
from tideflow.stream.streams import DEFAULT_CHECKPOINT_SECONDS, Stream

__all__ = [
    "DEFAULT_CHECKPOINT_SECONDS",
    "MESSAGE_TIME",
    "BuiltinProcessor",
    "Processor",
    "Stream",
    "interpolate",
    "normalize",
    "outliers",
    "window",
]


def __getattr__(name: str) -> Any:
    """Registered processors, by the name the pipelines' ``python`` steps refer to them."""
    if name.startswith(PREFIX) and name[len(PREFIX) :] in FUNCTIONS:
        return FUNCTIONS[name[len(PREFIX) :]]
    raise AttributeError(name)
