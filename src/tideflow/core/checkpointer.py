"""Checkpoints: the two-phase commit of one run, and what it needs between checkpoints.

A checkpoint flushes the sinks (durable, invisible), stores source positions, step states,
sink tokens and dead letters in one state-store transaction, then commits the sinks
(visible) and acknowledges the sources. A sink that keeps the checkpoint with its own data
(``keeps_checkpoint``, a transactional SQL sink) commits first, holding the checkpoint; after
a crash between its commit and the state store's, the next run adopts the newer one it holds.
Between checkpoints the :class:`Checkpointer` counts what is due (records, seconds, senders
waiting for a group commit) and which step states changed since they were stored whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from tideflow.core.checkpoints import CheckpointStore, GroupCheckpoint, Lease, SinkOutbox
from tideflow.core.codec import decode_state, encode_state
from tideflow.core.contracts import Context, Staged
from tideflow.core.delta import StateDelta
from tideflow.core.faults import crash_point
from tideflow.core.graph import Graph, Node
from tideflow.core.ownership import DeltaOf, StateKey
from tideflow.core.partitions import ScopedStep
from tideflow.core.plan import RunPlan
from tideflow.errors import PipelineError, TideflowError
from tideflow.secrets import redact

log = logging.getLogger("tideflow.engine")


@dataclass
class _StoredState:
    """What the state store holds of one step's state since this run stored it whole."""

    base: int
    """Bytes of the whole state (the base)."""
    deltas: int = 0
    """Deltas stored after the base."""
    delta_bytes: int = 0
    """Their bytes."""


class Checkpointer:
    """Takes one run's checkpoints into ``store`` under ``state_key``."""

    def __init__(
        self,
        plan: RunPlan,
        store: CheckpointStore,
        state_key: str,
        run_id: str,
        positions: dict[str, Any],
        on_visible: Callable[[str, float], None],
    ) -> None:
        self.plan = plan
        self.graph: Graph = plan.graph
        self.store = store
        self.state_key = state_key
        self.run_id = run_id
        self.positions = positions
        """The position of the last batch processed, per source (per partition in a group):
        shared with the engine, which moves them."""
        self._on_visible = on_visible
        self.lease: Lease | None = None
        """This run's claim on the checkpoint row: a run started later fences this one."""
        self.dead_letter_ledger: str | None = None
        """Where this run's dead letters are kept, when not under its state key (a replay
        keeps them in its pipeline's ledger, so they show in `tideflow deadletters list`)."""
        self.dead_letters: list[tuple[str, pl.DataFrame]] = []
        """(step, records) rejected since the last checkpoint, stored with the next one."""
        self.checkpoint_id = 0
        self.checkpoints = 0
        """Checkpoints this run committed."""
        self.pending_records = 0
        """Records read since the last checkpoint (not yet covered by one)."""
        self.last_monotonic = 0.0
        self.last_at = 0.0
        """Unix time of the last committed checkpoint (the run's start before the first)."""
        self.fresh: set[str] = set()
        """Sources whose records the engine took since the last checkpoint."""
        self._began = float("-inf")
        self._outboxes: dict[str, SinkOutbox] = {}
        self._unseen: list[tuple[str, float]] = []
        """(source, start of its latency) per batch processed since the last checkpoint."""
        self._stored: dict[StateKey, _StoredState] = {}
        """What the store holds of each step state since this run stored it whole; none:
        store it whole."""

    # -- between checkpoints -------------------------------------------------------------

    def started(self) -> None:
        """The run starts: the checkpoint clocks start with it."""
        self.last_monotonic = time.monotonic()
        self.last_at = time.time()

    def took(self, source: str, records: int) -> None:
        """The engine processed a batch of ``records`` from ``source``."""
        self.pending_records += records
        if records:
            self.fresh.add(source)

    def unseen(self, source: str, began: float) -> None:
        """A batch whose end-to-end latency ends when the next checkpoint commits (then
        reported to ``on_visible``)."""
        self._unseen.append((source, began))

    def outbox(self, sink: str) -> SinkOutbox:
        """The outbox of ``sink`` in this run's checkpoints."""
        if sink not in self._outboxes:
            self._outboxes[sink] = SinkOutbox(self.store, self.state_key, sink)
        return self._outboxes[sink]

    def source_offsets(self) -> list[Any]:
        """What each source would acknowledge for the positions of the checkpoint being
        taken, for sinks that commit it in their own transaction."""
        offsets = []
        for node in self.graph.sources:
            position = self.positions.get(node.name)
            if position:
                offered = node.component.transaction_offsets(position)
                if offered is not None:
                    offsets.append(offered)
        return offsets

    def group_commit_in(self) -> float | None:
        """Seconds until the group commit falls due (0: now), or None when nobody waits.

        A record whose sender waits is checkpointed as soon as the previous checkpoint is
        done and ``min_interval`` has passed since it began: a sender waits about one
        checkpoint, and under load every checkpoint takes all that arrived during the last.
        """
        gap = self.plan.checkpoint.min_interval
        if gap is None or not self.fresh or not self._senders_waiting():
            return None
        return max(0.0, self._began + float(gap) - time.monotonic())

    def _senders_waiting(self) -> bool:
        """Some source whose records the engine took since the last checkpoint has senders
        waiting for their acknowledgement."""
        return any(
            node.name in self.fresh and node.component.awaiting_ack() for node in self.graph.sources
        )

    def due(self) -> bool:
        """``every_records`` or ``every_seconds`` (with records read) has passed."""
        cp = self.plan.checkpoint
        due_records = cp.every_records and self.pending_records >= cp.every_records
        due_time = cp.every_seconds and (time.monotonic() - self.last_monotonic >= cp.every_seconds)
        return bool(due_records or (due_time and self.pending_records))

    def delta(self, node: Node, key: StateKey) -> StateDelta | None:
        """What changed in ``node``'s state (of one partition in a group) since the last
        checkpoint, or None when the state is due to be stored whole: the first checkpoint
        of the run (or of a partition taken over), a step that cannot say what changed, and
        compaction, after ``compact_every`` checkpoints or once the deltas stored since the
        last whole state outweigh it."""
        stored = self._stored.get(key)
        if stored is None:
            return None
        if stored.deltas + 1 >= self.plan.checkpoint.compact_every:
            return None
        if stored.delta_bytes > stored.base:
            return None
        changes: StateDelta | None = node.component.snapshot_changes()
        return changes

    def store_whole(self, key: StateKey) -> None:
        """The next checkpoint stores this state whole (a partition taken over or given up)."""
        self._stored.pop(key, None)

    # -- a sink that keeps the checkpoint ------------------------------------------------

    def keeper(self) -> Node | None:
        """The sink that stores checkpoints with its data, if any (at most one may)."""
        keepers = [n for n in self.graph.sinks if n.component.keeps_checkpoint]
        if len(keepers) > 1:
            raise PipelineError(
                "only one sink can keep the checkpoint with its data (transactional); found "
                + ", ".join(repr(n.name) for n in keepers)
            )
        return keepers[0] if keepers else None

    def adopt_stored_checkpoint(self, keeper: Node, ctx: Context) -> None:
        """After a crash between the keeper's commit and the state store's, the keeper holds
        the newer checkpoint: copy it into the state store before anything opens."""
        payload = keeper.component.stored_checkpoint(ctx)
        current = self.store.load_checkpoint(self.state_key)
        if payload is None:
            if current is not None:
                raise PipelineError(
                    f"sink {keeper.name!r} holds no checkpoint, but the state store holds "
                    f"checkpoint {current.id}: the target was changed outside tideflow; reset "
                    f"the pipeline's state (`tideflow state reset`) to load it again"
                )
            return
        stored = decode_state(payload)
        if current is not None and current.id > stored["id"]:
            raise PipelineError(
                f"sink {keeper.name!r} holds checkpoint {stored['id']}, older than the state "
                f"store's {current.id}: the target was changed outside tideflow; reset the "
                f"pipeline's state (`tideflow state reset`) to load it again"
            )
        if current is None or current.id < stored["id"]:
            log.info("adopting checkpoint %d stored by sink %s", stored["id"], keeper.name)
            self.store.commit_checkpoint(
                self.state_key,
                stored["id"],
                stored["positions"],
                stored["states"],
                stored["tokens"],
                [(step, frame) for step, frame in stored["dead"]],
                self.run_id,
                lease=self.lease,
            )

    # -- the checkpoint ------------------------------------------------------------------

    def take(self, group: Callable[[DeltaOf], GroupCheckpoint | None]) -> float:
        """Flush sinks, then store positions, state, tokens and dead letters atomically,
        then commit the sinks and acknowledge the sources; the seconds it took. ``group``
        gives a group worker's partitions (positions and states) for the same transaction."""
        began = time.perf_counter()
        sinks = self.plan.sinks()
        keepers = [n for n in sinks if n.component.keeps_checkpoint]
        started = time.monotonic()  # group commits are spaced from a checkpoint's start
        tokens = {}
        outbox = {}
        staged = []
        for node in [n for n in sinks if n not in keepers]:
            token = self._flush(node)
            if isinstance(token, Staged):
                staged.append(token)
                outbox[node.name], token = token.entries, token.token
            tokens[node.name] = token
        crash_point("checkpoint.after_flush")
        states: dict[str, Any] = {}
        for node in self.graph.steps:
            if isinstance(node.component, ScopedStep):
                continue  # stored per partition, below
            # A keeper stores the checkpoint with its data, whole: never deltas.
            delta = None if keepers else self.delta(node, (node.name, "", ""))
            snap = node.component.snapshot() if delta is None else delta
            if snap is not None:
                states[node.name] = snap
        partitions = group(self.delta)
        self.checkpoint_id += 1
        for entry in staged:
            entry.checkpoint = self.checkpoint_id
        if outbox and keepers:
            # The keeper commits the checkpoint before the state store does: the outbox
            # must be durable first (an outbox of a checkpoint that then fails to commit is
            # dropped at the next start).
            assert self.lease is not None
            self.store.store_outbox(self.state_key, self.checkpoint_id, outbox, self.lease)
            outbox = {}
        for node in keepers:
            payload = {
                "id": self.checkpoint_id,
                "positions": self.positions,
                "states": states,
                "tokens": tokens,
                "dead": [[step, frame] for step, frame in self.dead_letters],
            }
            node.component.attach_checkpoint(encode_state(payload))
            tokens[node.name] = self._flush(node)
            crash_point("checkpoint.after_keeper_commit")
        written: dict[StateKey, int] = {}
        try:
            self.store.commit_checkpoint(
                self.state_key,
                self.checkpoint_id,
                self.positions,
                states,
                tokens,
                self.dead_letters,
                self.run_id,
                partitions,
                lease=self.lease,
                ledger=self.dead_letter_ledger,
                outbox=outbox,
                delivered={
                    name: done
                    for name, box in self._outboxes.items()
                    if (done := box.take_delivered())
                },
                written=written,
            )
        except BaseException:
            # The steps started new intervals of changes for a checkpoint that is not
            # stored: whatever checkpoint comes next must store their states whole.
            self._stored.clear()
            raise
        self._track_stored(written, states, partitions)
        totals: dict[str, int] = {}
        for (step, _, _), stored in self._stored.items():
            totals[step] = totals.get(step, 0) + stored.base + stored.delta_bytes
        for node in self.graph.steps:
            if node.name in totals:
                # Reported with the run: state that keeps growing is a bug or a missing TTL.
                node.counts.metrics["state_bytes"] = totals[node.name]
        crash_point("checkpoint.after_state")
        self.dead_letters = []
        for node in sinks:
            node.component.commit(tokens[node.name])
            crash_point("checkpoint.after_first_sink_commit")
        for node in self.graph.sources:
            # The data is durable: an acknowledgement that fails only means the upstream
            # redelivers records the positions already cover, so the run goes on.
            try:
                node.component.checkpointed(self.positions.get(node.name))
            except Exception as exc:  # noqa: BLE001 - any failure: warn, resume from positions
                log.warning(
                    "source %s could not acknowledge checkpoint %d: %s",
                    node.name,
                    self.checkpoint_id,
                    redact(str(exc)),
                )
        self._began = started
        self.fresh.clear()
        self.checkpoints += 1
        self.pending_records = 0
        self.last_monotonic = time.monotonic()
        self.last_at = time.time()
        self._report_visible()
        return time.perf_counter() - began

    def _track_stored(
        self,
        written: dict[StateKey, int],
        states: dict[str, Any],
        group: GroupCheckpoint | None,
    ) -> None:
        """Remember, per step state stored by the checkpoint just committed, its size and
        whether it was a delta (for :meth:`delta`)."""
        kinds = {(step, "", ""): state for step, state in states.items()}
        for part in group.partitions if group is not None else []:
            for step, state in part.step_states.items():
                kinds[(step, part.source, part.part)] = state
        for key, size in written.items():
            if isinstance(kinds.get(key), StateDelta):
                stored = self._stored[key]
                stored.deltas += 1
                stored.delta_bytes += size
            else:
                self._stored[key] = _StoredState(base=size)

    def _report_visible(self) -> None:
        """The sinks have committed: every batch since the last checkpoint is visible now."""
        unseen, self._unseen = self._unseen, []
        now = time.time()
        for source, began in unseen:
            self._on_visible(source, max(now - began, 0.0))

    def _flush(self, node: Node) -> Any:
        try:
            return node.component.flush()
        except TideflowError:
            raise
        except Exception as exc:
            raise PipelineError(
                redact(f"sink {node.name!r} could not flush at checkpoint: {exc}")
            ) from exc

    def settle(self, failed: bool) -> None:
        """The run ends: forget outbox entries marked delivered since the last checkpoint."""
        for outbox in self._outboxes.values():
            try:
                outbox.settle()
            except Exception as exc:
                if not failed:
                    raise
                log.warning("forgetting delivered outbox entries failed: %s", redact(str(exc)))
