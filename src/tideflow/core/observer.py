"""The hooks a run calls as it goes (:class:`RunObserver`), for progress displays, health
checks, previews, metrics and test taps, and what calls them (:class:`RunReporter`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from tideflow.core.status import RunStatus


@dataclass
class RunObserver:
    """Hooks for progress displays, previews and test taps; every hook is optional."""

    on_output: Callable[[str, str, pl.DataFrame], None] | None = None
    on_progress: Callable[[RunStatus], None] | None = None
    on_checkpoint: Callable[[int], None] | None = None
    on_batch: Callable[[str, int, float], None] | None = None
    """Called after each source batch has gone through the whole graph, with the source's
    name, the batch's record count and the seconds it took (for latency histograms)."""
    on_visible: Callable[[str, float], None] | None = None
    """Called when a checkpoint has committed, once per source batch it made visible, with
    the source's name and the seconds from the batch's oldest record timestamp (or the moment
    the engine received the batch) to that commit: the end-to-end latency."""
    on_checkpoint_seconds: Callable[[int, float], None] | None = None
    """Called after each checkpoint has committed, with its id and the seconds it took
    (sink flushes, the state store commit, sink commits and source acknowledgements)."""
    on_start: Callable[[RunStatus], None] | None = None
    """Called once when a run starts, before anything is opened (health endpoints read the
    run's :attr:`RunStatus.phase` from then on)."""
    on_sink_input: Callable[[str, pl.DataFrame], None] | None = None
    """Called with a sink's name and each batch handed to it to write (after its ``when``
    condition), before the write: what a notebook's ``result.to_polars(sink)`` shows."""


class RunReporter:
    """Calls the hooks of ``run``'s observer as the run goes. ``observer`` gives the observer
    of the moment, and each hook is looked up when it is called: a test or preview may set a
    hook, or the whole observer, after the run is made."""

    def __init__(
        self, run: RunStatus, observer: Callable[[], RunObserver], progress_interval: float
    ) -> None:
        self.run = run
        self._observer = observer
        self._progress_interval = progress_interval
        self._last_progress = 0.0

    def started(self) -> None:
        """The run started; nothing is opened yet."""
        if (hook := self._observer().on_start) is not None:
            hook(self.run)

    def output(self, node: str, port: str, frame: pl.DataFrame) -> None:
        """``node`` put ``frame`` out on ``port``."""
        if (hook := self._observer().on_output) is not None:
            hook(node, port, frame)

    def sink_input(self, sink: str, frame: pl.DataFrame) -> None:
        """``sink`` is about to write ``frame``."""
        if (hook := self._observer().on_sink_input) is not None:
            hook(sink, frame)

    def batch(self, source: str, records: int, seconds: float) -> None:
        """A batch of ``source`` went through the whole graph in ``seconds``."""
        if (hook := self._observer().on_batch) is not None:
            hook(source, records, seconds)

    def wants_visible(self) -> bool:
        """Whether the observer listens for batches becoming visible (else the checkpointer
        need not track them)."""
        return self._observer().on_visible is not None

    def visible(self, source: str, seconds: float) -> None:
        """A checkpoint made a batch of ``source`` visible, ``seconds`` after it began."""
        if (hook := self._observer().on_visible) is not None:
            hook(source, seconds)

    def checkpointed(self, checkpoint_id: int, seconds: float) -> None:
        """Checkpoint ``checkpoint_id`` committed; it took ``seconds``."""
        observer = self._observer()
        if observer.on_checkpoint is not None:
            observer.on_checkpoint(checkpoint_id)
        if observer.on_checkpoint_seconds is not None:
            observer.on_checkpoint_seconds(checkpoint_id, seconds)

    def progress_if_due(self) -> None:
        """:meth:`progress`, when it was last shown ``progress_interval`` seconds ago."""
        if time.monotonic() - self._last_progress >= self._progress_interval:
            self.progress()

    def progress(self) -> None:
        """Show the run's progress."""
        self._last_progress = time.monotonic()
        if (hook := self._observer().on_progress) is not None:
            hook(self.run)
