"""What a run shows of itself while it runs: its phase, how long it has run, when its main
loop last turned, the checkpoints it took, the counts per node and the partitions a group
worker owns.

Health checks, progress displays and the observer's hooks read a run through
:class:`RunStatus`; :class:`~tideflow.core.engine.Engine` is one and keeps it current.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tideflow.core.checkpointer import Checkpointer
from tideflow.core.contracts import ExistingOutput
from tideflow.core.graph import Graph, Node
from tideflow.core.ownership import PartitionOwnership
from tideflow.core.plan import RunPlan
from tideflow.core.resume import Resumption


class RunStatus:
    """A run as those watching it see it. The engine sets the attributes below and keeps
    them current; everything else here only reads them."""

    plan: RunPlan
    graph: Graph
    run_id: str
    """The run's id in the run history (given by a server that started the run)."""
    worker: str | None
    """The group worker's id (``tideflow run --workers``); None outside a group."""
    stop_event: threading.Event
    """Set when the run is asked to stop."""
    started: float
    """Monotonic time the run started (0.0 before)."""
    last_turn: float
    """Monotonic time of the main loop's latest turn (it turns at least every 0.1 s
    unless a step or sink holds it): what a liveness check looks at."""
    checkpointer: Checkpointer
    ownership: PartitionOwnership
    resumption: Resumption
    _phase: str

    @property
    def phase(self) -> str:
        """Where the run is: ``created``, ``opening`` (connecting sources and sinks, restoring
        the checkpoint), ``running``, ``stopping`` (asked to stop: draining and taking the
        final checkpoint), ``ended`` or ``failed``."""
        if self._phase == "running" and self.stop_event.is_set():
            return "stopping"
        return self._phase

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started if self.started else 0.0

    @property
    def checkpoints(self) -> int:
        """Checkpoints this run committed."""
        return self.checkpointer.checkpoints

    @property
    def checkpoint_id(self) -> int:
        """The id of the last checkpoint (stored before this run, or by it)."""
        return self.checkpointer.checkpoint_id

    @property
    def last_checkpoint_at(self) -> float:
        """Unix time of the last committed checkpoint (the run's start before the first)."""
        return self.checkpointer.last_at

    @property
    def pending_records(self) -> int:
        """Records read since the last checkpoint (not yet covered by one)."""
        return self.checkpointer.pending_records

    @property
    def dead_letter_ledger(self) -> str | None:
        """Where this run's dead letters are kept, when not under its state key (a replay
        keeps them in its pipeline's ledger, so they show in `tideflow deadletters list`)."""
        return self.checkpointer.dead_letter_ledger

    @dead_letter_ledger.setter
    def dead_letter_ledger(self, ledger: str | None) -> None:
        self.checkpointer.dead_letter_ledger = ledger

    def counts(self) -> dict[str, dict[str, Any]]:
        """Counts per node, with its kind and type."""
        counts = {}
        for n in self.plan.nodes():
            counts[n.name] = {"kind": n.kind, "type": n.type_name, **n.counts.as_dict()}
            # Counters a component bumped through its context (retries, outage seconds) and
            # the figures it reports at the end share one place in the summary.
            # (list() copies in one step: a source thread may add a key meanwhile)
            report = {k: round(v, 6) for k, v in list(n.counts.metrics.items())}
            report.update(n.component.report() or {})
            if report:
                counts[n.name]["report"] = report
        return counts

    def owned_partitions(self) -> list[str]:
        """``source:partition`` of every partition this group worker owns now (none outside a
        group)."""
        return self.ownership.owned()

    def existing_output(self) -> list[tuple[Node, ExistingOutput]]:
        """What each sink already holds of this pipeline's output (see
        :meth:`Sink.committed_output`); opens nothing."""
        return self.resumption.existing_output()
