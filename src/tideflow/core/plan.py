"""What the engine runs: a :class:`RunPlan` holds the wired graph and the few pipeline
settings the run loop reads. ``tideflow.run.plan`` makes one from a validated spec, so the
engine needs nothing from ``spec`` or ``registry``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tideflow.core.graph import Graph, Node
from tideflow.core.settings import CheckpointSpec

ErrorAction = Literal["fail", "skip", "dead_letter"]

STAGE_SEPARATOR = "~"
"""Between a pipeline's name and a step's in the name of the stage group workers start at
that step (``totals~per_room``, see ``tideflow.run.stages``): a character no pipeline name
has, so a stage's checkpoints and state never mix with a pipeline's of the same name, and
forgetting a pipeline's state forgets its stages' too."""


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
    """Where dead letters go instead of the state store's ledger (``on_error.sink``; only
    with ``on_error`` ``dead_letter``)."""
    queue_size: int = 4
    """Source batches that may wait for the run loop."""

    def __post_init__(self) -> None:
        if self.dead_letter_sink is not None and self.on_error != "dead_letter":
            raise ValueError(f"a dead-letter sink with on_error {self.on_error!r}")

    def _dead(self) -> list[Node]:
        return [self.dead_letter_sink] if self.dead_letter_sink is not None else []

    def sinks(self) -> list[Node]:
        """Every sink, the dead-letter sink included."""
        return self.graph.sinks + self._dead()

    def nodes(self) -> list[Node]:
        """Every node, sources first, the dead-letter sink last."""
        return self.graph.nodes + self._dead()
