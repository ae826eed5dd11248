"""Log output of the ``tideflow`` command: plain text, or one JSON object per line.

JSON lines are for log collectors (a container's stdout and stderr, Kubernetes, journald):
each record is one object with ``time`` (UTC, ISO 8601), ``level``, ``pipeline``,
``worker``, ``step``, ``logger`` and ``message``, plus ``error`` (the traceback, when there is
one) and any ``fields`` a record carries (the run summary, progress figures). Every string
goes through :func:`tideflow.secrets.redact` first, as in text mode.

A component's logger is ``tideflow.<pipeline>.<step>`` (:attr:`Context.log`), so ``step``
comes from the logger's name; the engine passes ``extra={"step": ...}`` where it logs about a
node.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from tideflow.secrets import RedactingFilter, redact

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_json_enabled = False


def json_enabled() -> bool:
    """True once :func:`configure` set up JSON lines (messages of the CLI follow it)."""
    return _json_enabled


class JsonFormatter(logging.Formatter):
    """One JSON object per record, secrets redacted."""

    def __init__(self, pipeline: str | None = None, worker: str | None = None) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.worker = worker

    def _step(self, record: logging.LogRecord) -> str | None:
        step = getattr(record, "step", None)
        if step is not None:
            return str(step)
        if self.pipeline:
            prefix = f"tideflow.{self.pipeline}."
            if record.name.startswith(prefix):
                return record.name[len(prefix) :]
        return None

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "pipeline": getattr(record, "pipeline", None) or self.pipeline,
            "worker": getattr(record, "worker", None) or self.worker,
            "step": self._step(record),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line.setdefault(key, value)
        # Values a record carries may be anything; what JSON cannot hold is shown as text.
        text = orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return redact(text) if fields else text


def configure(
    verbose: int = 0,
    fmt: LogFormat = "text",
    pipeline: str | None = None,
    worker: str | None = None,
) -> None:
    """Log to stderr with secrets redacted.

    Text logs warnings by default (``-v`` info, ``-vv`` debug); JSON lines, meant for log
    collectors, log info by default (``-v`` debug): a worker's partitions, its checkpoints on
    stop, outages and recoveries are what an operator reads there.
    """
    global _json_enabled  # noqa: PLW0603 - one process-wide logging setup, as logging's own
    _json_enabled = fmt == "json"
    base = logging.INFO if _json_enabled else logging.WARNING
    level = max(base - 10 * verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    formatter: logging.Formatter = (
        JsonFormatter(pipeline, worker) if _json_enabled else logging.Formatter(TEXT_FORMAT)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
