"""Group workers: step state scoped to source partitions, and partition hand-over.

When several workers read a topic as one consumer group (``tideflow run --workers N``),
each worker owns some of the topic's partitions, and the owner changes on a rebalance. For a
keyed aggregate to stay exact, the state built from a partition must move with it. So in a
group worker every stateful step is a :class:`ScopedStep`: one instance of the step per
owned partition, checkpointed per partition in the shared state store. Sources report
assignments through :class:`Handover`; the engine's main loop acts on them in order with the
batches already queued, so a revoked partition is checkpointed after its last record and a
newly assigned one restores its state before its first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from tideflow.core.contracts import JSON, C, Context, Step, StepOutput
from tideflow.core.delta import StateDelta


def keeps_state(step: Step[Any]) -> bool:
    """A step keeps state across batches exactly when it snapshots it (nothing else could be
    resumed after a crash, so nothing else needs to move with a partition)."""
    return type(step).snapshot is not Step.snapshot


class ScopedStep(Step[C]):
    """A stateful step split by source partition: one instance per owned partition.

    The engine sets :attr:`current` to the partition of the batch it pushes; every other
    call is made per partition by the engine too."""

    def __init__(self, template: Step[C]) -> None:
        super().__init__(template.config)
        self._make: Callable[[], Step[C]] = lambda: type(template)(template.config)
        self.ctx: Context | None = None
        self.instances: dict[str, Step[C]] = {}
        self.current: str | None = None

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Remember the context; instances open as partitions are assigned."""
        self.ctx = ctx

    def adopt(self, partition: str, state: JSON | None) -> None:
        """Open the instance of a newly assigned partition from its checkpointed state."""
        assert self.ctx is not None
        instance = self._make()
        instance.open(self.ctx, state)
        self.instances[partition] = instance

    def drop(self, partition: str) -> None:
        """Close the instance of a revoked partition (its state is checkpointed)."""
        instance = self.instances.pop(partition, None)
        if instance is not None:
            instance.close()

    def _instance(self) -> Step[C]:
        if self.current is None or self.current not in self.instances:
            raise RuntimeError(
                f"no state for partition {self.current!r}: records arrived for a partition "
                "this worker was not assigned"
            )
        return self.instances[self.current]

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Process with the current partition's instance."""
        return self._instance().process(batch)

    def finish(self) -> StepOutput:
        """Finish the current partition's instance."""
        return self._instance().finish()

    def idle(self, seconds: float) -> StepOutput:
        """Tell the current partition's instance the input is quiet."""
        return self._instance().idle(seconds)

    def snapshot(self) -> JSON | None:
        """The current partition's state."""
        return self._instance().snapshot()

    def snapshot_changes(self) -> StateDelta | None:
        """What changed in the current partition's state since its last snapshot."""
        return self._instance().snapshot_changes()

    def report(self) -> dict[str, JSON] | None:
        """Figures summed over the partitions' instances (numbers only)."""
        total: dict[str, JSON] = {}
        for instance in self.instances.values():
            for key, value in (instance.report() or {}).items():
                if isinstance(value, int | float):
                    total[key] = total.get(key, 0) + value
        return total or None

    def close(self) -> None:
        """Close every instance."""
        for partition in list(self.instances):
            self.drop(partition)


@dataclass
class HandoverRequest:
    """A source's report that partitions moved, waiting for the main loop."""

    source: str
    partitions: list[str]
    assigned: bool
    done: threading.Event = field(default_factory=threading.Event)
    positions: dict[str, JSON] = field(default_factory=dict)
    error: BaseException | None = None


class Handover:
    """The engine's side of :class:`~tideflow.core.contracts.PartitionHandover`.

    A source calls it from its own thread (a Kafka rebalance callback runs inside ``poll``);
    the request is queued behind the batches the source already handed over and the call
    waits until the main loop has handled it. Calls made once the main loop has finished
    (a consumer leaving its group on close) need no action: the final checkpoint covers
    every owned partition."""

    def __init__(self, submit: Callable[[HandoverRequest], bool]) -> None:
        self._submit = submit
        self.closed = False

    def assigned(self, source: str, partitions: list[str]) -> dict[str, JSON]:
        """Queue the assignment; return the partitions' checkpointed positions."""
        return self._request(HandoverRequest(source, list(partitions), assigned=True))

    def revoked(self, source: str, partitions: list[str]) -> None:
        """Queue the revocation; return once the partitions are checkpointed."""
        self._request(HandoverRequest(source, list(partitions), assigned=False))

    def _request(self, request: HandoverRequest) -> dict[str, Any]:
        if self.closed or not request.partitions:
            return {}
        if not self._submit(request):
            raise RuntimeError("the run stopped before it could take the partitions over")
        if request.error is not None:
            raise request.error
        return request.positions
