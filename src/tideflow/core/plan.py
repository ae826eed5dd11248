"""What the engine runs: a :class:`RunPlan` holds the wired graph and the few pipeline
settings the run loop reads. ``tideflow.run.plan`` makes one from a validated spec, so the
engine needs nothing from ``spec`` or ``registry``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tideflow.core.graph import Graph, Node
from tideflow.core.settings import CheckpointSpec

ErrorAction = Literal["fail", "skip", "dead_letter"]


@dataclass(frozen=True)
class RunPlan:
    """A pipeline ready to run."""

    name: str
    """The pipeline's name: keys its checkpoints, runs and dead letters."""
    graph: Graph
    checkpoint: CheckpointSpec
    on_error: ErrorAction
    """What happens to a record a step rejects: stop, drop and count, or dead-letter it."""
    dead_letter_sink: Node | None = None
    """Where dead letters go instead of the state store's ledger (``on_error.sink``)."""
    queue_size: int = 4
    """Source batches that may wait for the run loop."""
