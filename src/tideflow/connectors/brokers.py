"""Connection and batching pieces the message-broker connectors (AMQP, MQTT, Redis Streams)
share; their payloads and acknowledgements are in :mod:`tideflow.connectors.messages`.

- :class:`Retrying` runs an operation on a broker connection through outages with
  :func:`tideflow.core.retry.with_retries` (backoff, metrics, ``give_up_after``), reconnecting
  between attempts when given a ``recover``, and turns the client library's other errors into
  one clear :class:`~tideflow.errors.PipelineError`.
- :func:`gather` pumps a connection until a batch is full or the connection goes quiet (the
  source hands a batch on as soon as no more messages wait, not when ``max_wait`` runs out).
- :class:`IdleEnd` ends a source once ``stop_after_idle`` has passed without a message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import polars as pl

from tideflow.core.contracts import Context, SourceBatch
from tideflow.core.retry import RetryPolicy, with_retries
from tideflow.errors import PipelineError

T = TypeVar("T")


class Retrying:
    """Broker operations retried through outages.

    ``is_transient`` says which failures are worth a retry; ``failure(what, exc)`` turns any
    other error of the client library into the failure the run reports (None: raise it as
    it is).
    """

    def __init__(
        self,
        ctx: Context,
        policy: RetryPolicy,
        is_transient: Callable[[BaseException], bool],
        failure: Callable[[str, Exception], PipelineError | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.is_transient = is_transient
        self.failure = failure

    def call(
        self, operation: Callable[[], T], what: str, recover: Callable[[], None] | None = None
    ) -> T:
        """Run ``operation``; after a transient failure wait, run ``recover`` (reconnect) and
        try again. ``what`` names the operation in logs and errors."""
        try:
            return with_retries(operation, self.is_transient, self.ctx, self.policy, what, recover)
        except Exception as exc:
            error = self.failure(what, exc) if self.failure is not None else None
            if error is None:
                raise
            raise error from exc


def gather(
    waiting: Callable[[], int],
    pump: Callable[[float], None],
    batch_size: int,
    deadline: float,
    stop: threading.Event,
    quiet: Callable[[], float] = lambda: 0.05,
    polled: bool = False,
) -> None:
    """Pump the connection until ``batch_size`` messages wait, or it goes quiet, or the
    ``deadline`` (a :func:`time.monotonic` time, ``max_wait`` ahead) passes, or the run stops.

    ``waiting()`` counts the messages received so far; ``pump(timeout)`` reads from the
    connection for at most ``timeout`` seconds. While messages keep arriving it pumps without
    waiting; once a pump brings nothing new while some wait, the connection is quiet and the
    batch is handed on. With nothing received yet, each pump waits up to ``quiet()`` seconds.
    ``polled``: the caller has just pumped without waiting, so an empty connection is waited
    on at once.
    """
    had = 0 if polled else -1
    while True:
        have = waiting()
        if have >= batch_size or (have and have == had):
            return  # full, or the last pump brought nothing new: hand on what is here
        now = time.monotonic()
        if now >= deadline or stop.is_set():
            return
        pump(0 if have > had else min(quiet(), deadline - now))
        had = have


class IdleEnd:
    """When a message source last handed on a message; it ends once ``stop_after_idle``
    seconds pass without one (never when that is None)."""

    def __init__(self, stop_after_idle: float | None) -> None:
        self.stop_after_idle = stop_after_idle
        self.last = time.monotonic()

    def restart(self) -> None:
        """A message arrived (or the source opened): the idle time starts again."""
        self.last = time.monotonic()

    def empty(self, position: int) -> SourceBatch | None:
        """The batch when no message came: None (the source ends) once ``stop_after_idle``
        has passed since the last message, else an empty batch at ``position``."""
        idle = self.stop_after_idle
        if idle is not None and time.monotonic() - self.last >= idle:
            return None
        return SourceBatch(pl.DataFrame(), position)
