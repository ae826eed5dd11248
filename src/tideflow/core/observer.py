"""The hooks a run calls as it goes, for progress displays, health checks, previews,
metrics and test taps."""

from __future__ import annotations

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
