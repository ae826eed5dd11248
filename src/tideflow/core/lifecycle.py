"""Opening and closing the sources, steps and sinks of one run.

Every component is given a :class:`Context` of the run. Opening hands each what the
checkpoint the run resumes from kept of it: sinks their tokens, steps their state, sources
their positions, whose origin is checked first (:func:`~tideflow.core.resume.check_origin`).
A group worker's positions and step states are not restored here but per partition, as the
partitions are assigned (:mod:`tideflow.core.ownership`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tideflow.core.checkpointer import Checkpointer
from tideflow.core.checkpoints import Checkpoint, CheckpointStore
from tideflow.core.contracts import Context
from tideflow.core.graph import Node
from tideflow.core.ownership import PartitionOwnership
from tideflow.core.partitions import Handover
from tideflow.core.plan import RunPlan
from tideflow.core.resume import check_origin
from tideflow.secrets import redact

log = logging.getLogger("tideflow.engine")


class RunComponents:
    """The sources, steps and sinks of one run of ``plan`` (as ``worker`` of a group, or
    alone when it is None); ``positions`` is the run's, shared with the checkpointer."""

    def __init__(
        self,
        plan: RunPlan,
        store: CheckpointStore,
        checkpointer: Checkpointer,
        ownership: PartitionOwnership,
        positions: dict[str, Any],
        base_dir: Path,
        scope: str,
        stop_event: threading.Event,
        handover: Handover,
        worker: str | None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.checkpointer = checkpointer
        self.ownership = ownership
        self.positions = positions
        self.base_dir = base_dir
        self.scope = scope
        self.stop_event = stop_event
        self.handover = handover
        self.worker = worker

    def context(self, node: Node) -> Context:
        """What ``node`` may know of the run."""
        sink = node.kind == "sink"
        return Context(
            pipeline=self.plan.name,
            name=node.name,
            base_dir=self.base_dir,
            state_dir=self.store.path.parent,
            stop_event=self.stop_event,
            scope=self.scope,
            metrics=node.counts.metrics,
            partitions=self.handover if self.worker and node.kind == "source" else None,
            state_id=self.store.identity(),
            outbox=self.checkpointer.outbox(node.name) if sink else None,
            source_offsets=self.checkpointer.source_offsets if sink else None,
        )

    def open(self, checkpoint: Checkpoint | None) -> None:
        """Open sinks, steps and sources, in that order, where ``checkpoint`` left them
        (None: at the start)."""
        tokens = checkpoint.sink_tokens if checkpoint else {}
        states = checkpoint.step_states if checkpoint else {}
        if checkpoint:
            self.checkpointer.checkpoint_id = checkpoint.id
            self.positions.update(checkpoint.positions)
            log.info("resuming %s from checkpoint %d", self.plan.name, checkpoint.id)
        if self.worker is not None:
            # Positions and step state belong to partitions, restored as they are assigned.
            self.ownership.scope_steps()
        for node in self.plan.sinks():
            node.component.open(self.context(node), tokens.get(node.name))
        for node in self.plan.graph.steps:
            node.component.open(self.context(node), states.get(node.name))
        held = {name for name, position in self.positions.items() if position}
        if self.worker is not None:
            # A group's positions live per partition, under the pipeline's name.
            held = {row[0] for row in self.store.partition_states(self.plan.name) if row[4]}
            self.positions.clear()
            self.positions.update({node.name: {} for node in self.plan.graph.sources})
        origins = self.plan.name if self.worker is not None else self.checkpointer.state_key
        for node in self.plan.graph.sources:
            node.component.open(self.context(node), self.positions.get(node.name))
            check_origin(node, node.name in held, self.store, self.plan.name, origins)

    def close(self, failed: bool) -> None:
        """Settle the checkpoint, then close every component. After a failure a close that
        fails too is logged, not raised: the run's own error is the one to report."""
        self.checkpointer.settle(failed)
        for node in self.plan.nodes():
            try:
                node.component.close()
            except Exception as exc:
                if not failed:
                    raise
                log.warning("closing %s failed: %s", node.name, redact(str(exc)))
