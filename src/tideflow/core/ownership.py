"""A group worker's partitions: which it owns, their positions and the step states scoped
to them, claimed and given up as the consumer group rebalances.

A claim bumps the partition's epoch in the shared state store, which fences the previous
owner's later checkpoints of it; the claim returns the position and step states the last
owner stored, so the partition resumes exactly there. Outside a group there is one scope
(``None``) and nothing to claim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tideflow.core.checkpoints import CheckpointStore, GroupCheckpoint, PartitionState
from tideflow.core.delta import StateDelta
from tideflow.core.graph import Graph, Node
from tideflow.core.partitions import HandoverRequest, ScopedStep, keeps_state
from tideflow.errors import ConfigError

log = logging.getLogger("tideflow.engine")

StateKey = tuple[str, str, str]
"""(step, source, partition) of a stored step state (source and partition empty outside a
group of workers)."""
DeltaOf = Callable[[Node, StateKey], StateDelta | None]
"""What changed in a step's state since the last checkpoint (None: store it whole)."""


def unpartitioned_state(step: str, kind: str, keys: list[str] | None, graph: Graph) -> str:
    """Why a stateful step cannot run in a group of workers, and the ways on."""
    by = f"per {', '.join(keys)}" if keys else "over all records" if keys == [] else ""
    source = graph.sources[0].name if graph.sources else "source"
    column = keys[0] if keys else "COLUMN"
    return (
        f"step {step!r} ({kind}) keeps state {by}; with workers each worker reads only "
        "its partitions, so a key whose records are in two partitions would be counted "
        "in two places and its results overwrite each other. Declare how the topic is "
        f"partitioned on source {source!r}, by one of the step's keys: `partitioned_by: "
        f"{{column: {column}, partitioner: murmur2}}` (murmur2: Kafka's Java clients and "
        "tideflow's own topic sink; crc32: librdkafka's default); every record is checked "
        "against it and the run fails at the first that breaks it. Or run one worker."
    )


def check_group_worker(graph: Graph) -> None:
    """Refuse a graph that a group of workers cannot run: every source must split by
    partition, and no sink may keep the (then per-worker) checkpoint with its data."""
    for node in graph.sources:
        if not node.component.partitioned:
            raise ConfigError(
                f"source {node.name!r} ({node.type_name}) cannot be split between "
                "workers: a group of workers needs `topic` or `kafka` sources"
            )
    for node in graph.sinks:
        if node.component.keeps_checkpoint:
            raise ConfigError(
                f"sink {node.name!r} keeps the checkpoint with its data "
                "(`transactional: true`), which holds one worker's partitions only; with "
                "workers use `transactional: false` (an upsert stays exact on replay)"
            )
    for node in graph.steps:
        if needs_repartition(node, graph):
            keys = node.component.state_keys()
            raise ConfigError(unpartitioned_state(node.name, node.type_name, keys, graph))


def needs_repartition(node: Node, graph: Graph) -> bool:
    """Whether step ``node`` keeps state that group workers would split: state per key
    (or over all records) while the sources' partitions do not keep every key in one."""
    if not keeps_state(node.component):
        return False
    keys = node.component.state_keys()
    if keys is None:
        return True
    # Each worker keeps the state of the records it reads: exact only when no key's records
    # are spread over the partitions of two workers, so when every source is partitioned by
    # some of the step's keys ([]: one partition holds all records).
    partitioned = [n.component.partition_keys() for n in graph.sources]
    return not all(p is not None and set(p) <= set(keys) for p in partitioned)


class PartitionOwnership:
    """The partitions group worker ``worker`` of pipeline ``name`` owns (none when
    ``worker`` is None: a run outside a group)."""

    def __init__(
        self,
        name: str,
        worker: str | None,
        graph: Graph,
        store: CheckpointStore,
        positions: dict[str, Any],
        store_whole: Callable[[StateKey], None],
    ) -> None:
        self.name = name
        self.worker = worker
        self.graph = graph
        self.store = store
        self.positions = positions
        """Per source, the position of each owned partition (shared with the engine)."""
        self._store_whole = store_whole
        self.claims: dict[tuple[str, str], PartitionState] = {}

    def owned(self) -> list[str]:
        """``source:partition`` of every partition owned now."""
        return sorted(f"{source}:{part}" for source, part in list(self.claims))

    def scope_steps(self) -> None:
        """A group worker keeps each stateful step's state per partition: wrap them."""
        for node in self.graph.steps:
            if keeps_state(node.component):
                node.component = ScopedStep(node.component)

    def hand_over(self, request: HandoverRequest, checkpoint: Callable[[], None]) -> None:
        """Act on a source's partitions moving (in order with its batches): claim those
        assigned, or ``checkpoint`` and give up those revoked."""
        try:
            if request.assigned:
                request.positions = self.take(request.source, request.partitions)
            else:
                # Checkpoint first: the next owner resumes from what is stored now.
                checkpoint()
                self.give(request.source, request.partitions)
        except BaseException as exc:
            request.error = exc
            raise
        finally:
            request.done.set()

    def take(self, source: str, parts: list[str]) -> dict[str, Any]:
        """Claim ``parts`` of ``source``; the positions to resume them from."""
        assert self.worker is not None
        claims = self.store.claim_partitions(self.name, self.worker, source, parts)
        positions = {}
        for claim in claims:
            self.claims[(source, claim.part)] = claim
            for node in self._scoped_steps():
                node.component.adopt(claim.part, claim.step_states.get(node.name))
                # The first checkpoint of a partition taken over stores its state whole.
                self._store_whole((node.name, source, claim.part))
            if claim.position is not None:
                positions[claim.part] = claim.position
                self.positions[source][claim.part] = claim.position
        log.info("worker %s took partitions %s of %s", self.worker, ", ".join(parts), source)
        return positions

    def give(self, source: str, parts: list[str]) -> None:
        """Forget ``parts`` of ``source`` (checkpointed already)."""
        for part in parts:
            self.claims.pop((source, part), None)
            self.positions[source].pop(part, None)
            for node in self._scoped_steps():
                node.component.drop(part)
                self._store_whole((node.name, source, part))
        log.info("worker %s gave partitions %s of %s up", self.worker, ", ".join(parts), source)

    def owns(self, source: str, part: str) -> bool:
        """Is ``part`` of ``source`` this worker's now?"""
        return (source, part) in self.claims

    def _scoped_steps(self) -> list[Node]:
        return [n for n in self.graph.steps if isinstance(n.component, ScopedStep)]

    def scopes(self) -> Sequence[str | None]:
        """The partitions whose step state is held here (one scope, None, outside a group)."""
        if self.worker is None:
            return [None]
        return sorted({part for _, part in self.claims})

    def enter(self, part: str | None) -> None:
        """The steps work on ``part``'s state from now on."""
        for node in self._scoped_steps():
            node.component.current = part

    def checkpoint(self, delta: DeltaOf) -> GroupCheckpoint | None:
        """Each owned partition's position and step states, for the next checkpoint."""
        if self.worker is None:
            return None
        partitions = []
        for (source, part), claim in sorted(self.claims.items()):
            self.enter(part)
            states = {}
            # A partition's step states are stored all whole or all as deltas (its base is
            # one row): a delta taken and then not stored is covered by the whole state.
            nodes = self._scoped_steps()
            deltas = {n.name: delta(n, (n.name, source, part)) for n in nodes}
            whole = any(d is None for d in deltas.values())
            for node in nodes:
                snap = node.component.snapshot() if whole else deltas[node.name]
                if snap is not None:
                    states[node.name] = snap
            partitions.append(
                PartitionState(
                    source=source,
                    part=part,
                    epoch=claim.epoch,
                    position=self.positions[source].get(part),
                    step_states=states,
                )
            )
        return GroupCheckpoint(self.name, self.worker, partitions)
