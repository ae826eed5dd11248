"""Checkpoints as the engine sees them: what a checkpoint holds, the lease and partition
claims that fence zombies, a sink's outbox, and the :class:`CheckpointStore` protocol the
engine runs against (implemented by ``tideflow.state.store``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from tideflow.errors import StateError


@dataclass
class Checkpoint:
    """The last durable checkpoint of a pipeline."""

    id: int
    created_at: float
    positions: dict[str, Any]
    sink_tokens: dict[str, Any]
    step_states: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionState:
    """One source partition's share of a group worker's checkpoint: its position and the
    states of the steps scoped to it, fenced by the ``epoch`` of the worker's claim."""

    source: str
    part: str
    epoch: int
    position: Any
    step_states: dict[str, Any]


@dataclass(frozen=True)
class GroupCheckpoint:
    """The partitions a group worker (``owner``) of ``pipeline`` checkpoints."""

    pipeline: str
    owner: str
    partitions: list[PartitionState]


class PartitionLostError(StateError):
    """A worker tried to checkpoint a partition that another worker has claimed since."""


class FencedError(StateError):
    """A run tried to store a checkpoint after another run of the same pipeline (or the same
    group worker id) took the pipeline's checkpoint over: this run is a zombie."""


@dataclass(frozen=True)
class Lease:
    """A run's claim on a pipeline's checkpoint row: only the holder of the latest ``epoch``
    may store checkpoints (optimistic concurrency against a paused-then-resumed run)."""

    pipeline: str
    epoch: int
    owner: str


class CheckpointStore(Protocol):
    """What the engine needs of a state store (``tideflow.state.store`` implements it in
    SQLite, ``tideflow.state.postgres`` in PostgreSQL): checkpoints committed atomically
    with dead letters and sink outboxes, runs recorded, a lease per pipeline, and partitions
    claimed by group workers."""

    path: Path
    """A local path naming the store (its file, or a folder for a server-backed one)."""

    def describe(self) -> str:
        """Where the store is, for messages."""

    def identity(self) -> str:
        """A stable id of the store's content (stored positions name the store they came from)."""

    def close(self) -> None:
        """Release the store's connections."""

    def knows(self, pipeline: str) -> bool:
        """Has ``pipeline`` ever run against this store?"""

    def load_checkpoint(self, pipeline: str) -> Checkpoint | None:
        """The pipeline's last durable checkpoint."""

    def commit_checkpoint(
        self,
        pipeline: str,
        checkpoint_id: int,
        positions: dict[str, Any],
        step_states: dict[str, Any],
        sink_tokens: dict[str, Any],
        dead_letters: list[tuple[str, pl.DataFrame]],
        run_id: str,
        group: GroupCheckpoint | None = None,
        *,
        lease: Lease | None = None,
        outbox: dict[str, Iterable[bytes]] | None = None,
        delivered: dict[str, int] | None = None,
        ledger: str | None = None,
        written: dict[tuple[str, str, str], int] | None = None,
    ) -> dict[str, int]:
        """Store a checkpoint and what it covers atomically; the stored size of each state."""

    def reset(self, pipeline: str, dead_letters: bool = False) -> None:
        """Forget the pipeline's checkpoints (and its dead letters when asked)."""

    def start_run(self, run_id: str, pipeline: str, status: str = "running") -> None:
        """Record that a run began."""

    def end_run(self, run_id: str, status: str, counts: Any, error: str | None = None) -> None:
        """Record how a run ended."""

    def claim_lease(self, pipeline: str, owner: str) -> Lease:
        """Take the pipeline's checkpoint over, fencing an earlier holder."""

    def store_outbox(
        self, pipeline: str, checkpoint_id: int, outbox: dict[str, Iterable[bytes]], lease: Lease
    ) -> None:
        """Stage sink outbox entries for a checkpoint about to commit."""

    def drop_outbox_after(self, pipeline: str, checkpoint_id: int) -> int:
        """Forget outbox entries of checkpoints after ``checkpoint_id`` (never committed)."""

    def outbox_checkpoints(self, pipeline: str, sink: str) -> list[int]:
        """Checkpoints with outbox entries of ``sink``, oldest first."""

    def outbox_entries(self, pipeline: str, sink: str, checkpoint_id: int) -> Iterator[bytes]:
        """The entries ``sink`` staged for ``checkpoint_id``, in order."""

    def outbox_delivered(self, pipeline: str, sink: str, checkpoint_id: int) -> None:
        """Forget the entries of ``checkpoint_id`` and earlier ones."""

    def source_origin(self, pipeline: str, source: str) -> tuple[str, str] | None:
        """(identity, description) of where the source's stored positions were taken."""

    def record_source_origin(
        self, pipeline: str, source: str, identity: str, described: str
    ) -> None:
        """Remember where the source's positions are taken."""

    def claim_partitions(
        self, pipeline: str, owner: str, source: str, parts: list[str]
    ) -> list[PartitionState]:
        """Take partitions over for a group worker; their stored positions and states."""

    def partition_states(self, pipeline: str) -> list[tuple[str, str, str, int, Any]]:
        """Every claimed partition of the pipeline's group."""


class SinkOutbox:
    """One sink's outbox in one pipeline's checkpoints (``core.contracts.Outbox``).

    Marking entries delivered costs no transaction of its own: the mark is applied by the
    next checkpoint's transaction (``take_delivered``) or when the run ends (``settle``).
    Until then a crash leaves them in place, and the sink's next start finds them delivered
    (a Kafka sink reads its topic back and produces nothing)."""

    def __init__(self, store: CheckpointStore, pipeline: str, sink: str) -> None:
        self.store = store
        self.pipeline = pipeline
        self.sink = sink
        self._delivered = 0

    def checkpoints(self) -> list[int]:
        """Checkpoints whose entries this sink has not marked delivered, oldest first."""
        return [
            c
            for c in self.store.outbox_checkpoints(self.pipeline, self.sink)
            if c > self._delivered
        ]

    def entries(self, checkpoint: int) -> Iterator[bytes]:
        """The entries this sink staged for ``checkpoint``, in order."""
        return self.store.outbox_entries(self.pipeline, self.sink, checkpoint)

    def delivered(self, checkpoint: int) -> None:
        """The entries of ``checkpoint`` and earlier ones are delivered: forget them."""
        self._delivered = max(self._delivered, checkpoint)

    def take_delivered(self) -> int:
        """The latest checkpoint marked delivered since the last call (0: none), for the
        next checkpoint's transaction to forget."""
        done, self._delivered = self._delivered, 0
        return done

    def settle(self) -> None:
        """Forget what was marked delivered now, in a transaction of its own."""
        done = self.take_delivered()
        if done:
            self.store.outbox_delivered(self.pipeline, self.sink, done)
