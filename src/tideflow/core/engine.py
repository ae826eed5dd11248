"""The engine: the run loop, which pulls batches from sources, pushes them through steps to
sinks and checkpoints.

Each source runs in its own thread and hands batches to the main loop through a bounded
queue (:mod:`tideflow.core.source_queue`), which gives back-pressure and bounds memory. The
main loop takes one batch at a time through the whole graph (:mod:`tideflow.core.dataflow`),
so at a checkpoint nothing is in flight inside the graph: the position recorded for each
source is that of the last batch fully processed, however far the source has read ahead.

The rest has modules of its own: the two-phase commit of a checkpoint (``checkpointer``), a
group worker's partitions (``ownership``), what a run checks before it resumes (``resume``),
opening and closing its components (``lifecycle``), SIGINT/SIGTERM (``signals``), the
observer's hooks (``observer``) and the result (``result``). What a run shows of itself
while it runs is :class:`~tideflow.core.status.RunStatus`, which the engine is.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tideflow.core.checkpointer import Checkpointer
from tideflow.core.checkpoints import CheckpointStore
from tideflow.core.contracts import MAIN_PORT, SourceBatch
from tideflow.core.dataflow import Dataflow
from tideflow.core.graph import Node
from tideflow.core.lifecycle import RunComponents
from tideflow.core.observer import RunObserver, RunReporter
from tideflow.core.ownership import PartitionOwnership, check_group_worker
from tideflow.core.plan import RunPlan
from tideflow.core.result import RunResult, run_result
from tideflow.core.resume import Resumption
from tideflow.core.signals import stop_on_signals
from tideflow.core.source_queue import SourceItem, SourceQueue, SourceThreads, coalesce
from tideflow.core.status import RunStatus
from tideflow.errors import PipelineError, StateLostError, TideflowError
from tideflow.secrets import redact

log = logging.getLogger("tideflow.engine")


class Engine(RunStatus):
    """Runs one :class:`RunPlan` once against a checkpoint store (``tideflow.run.plan.
    engine_for`` makes both from a pipeline spec).

    With ``worker`` set, the run is one worker of a consumer group (``tideflow run
    --workers``): its sources are split by partition between the group's workers, stateful
    steps keep their state per partition in the shared state store, and the worker's own
    checkpoint (sink tokens) is kept under ``NAME#worker-ID``.
    """

    def __init__(
        self,
        plan: RunPlan,
        state: CheckpointStore,
        base_dir: str | Path = ".",
        observer: RunObserver | None = None,
        scope: str = "main",
        progress_interval: float = 0.5,
        worker: str | None = None,
        from_scratch: bool = False,
        owns_state: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.plan = plan
        self.base_dir = Path(base_dir).resolve()
        self.graph = plan.graph
        self.state = state
        self._owns_state = owns_state
        """Close the store when the run ends (the engine was handed one opened for it)."""
        self.observer = observer or RunObserver()
        self.worker = worker
        if worker is not None and scope == "main":
            scope = f"worker-{worker}"  # output file names and staging never clash
        self.scope = scope
        self.state_key = plan.name if scope == "main" else f"{plan.name}#{scope}"
        self.stop_event = threading.Event()
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._phase = "created"
        self.last_turn = time.monotonic()
        self.started = 0.0
        self.reporter = RunReporter(self, lambda: self.observer, progress_interval)
        self._abort = threading.Event()
        self._queue = SourceQueue(plan.queue_size, self._abort)
        self._positions: dict[str, Any] = {}
        self.sources = SourceThreads(
            self.graph.sources,
            self._queue,
            self.stop_event,
            self._abort,
            self._positions,
            grouped=worker is not None,
        )
        self.checkpointer = Checkpointer(
            plan, state, self.state_key, self.run_id, self._positions, self.reporter.visible
        )
        self.ownership = PartitionOwnership(
            plan.name, worker, self.graph, state, self._positions, self.checkpointer.store_whole
        )
        self.components = RunComponents(
            plan,
            state,
            self.checkpointer,
            self.ownership,
            self._positions,
            self.base_dir,
            scope,
            self.stop_event,
            self.sources.handover,
            worker,
        )
        self.resumption = Resumption(
            plan,
            state,
            self.state_key,
            self.run_id,
            self.checkpointer,
            self.components.context,
            main_output=scope == "main" or worker is not None,
            from_scratch=from_scratch,
        )
        self.flow = Dataflow(
            plan,
            lambda: self.checkpointer.dead_letters,
            self.reporter.output,
            self.reporter.sink_input,
            self.ownership,
        )
        self._last_record_at = time.monotonic()
        self._last_idle_call = 0.0
        self._running: set[str] = set()
        """Sources that have not ended (:meth:`_handle` takes those that end out)."""
        if worker is not None:
            check_group_worker(self.graph)

    def stop(self) -> None:
        """Ask the run to drain, checkpoint and finish (what SIGINT/SIGTERM do)."""
        self.stop_event.set()

    def run(self, handle_signals: bool = False) -> RunResult:
        """Run to the end of bounded sources, or until :meth:`stop`; return the counts."""
        self.started = time.monotonic()
        self.checkpointer.started()
        self.reporter.started()
        with stop_on_signals(self.stop_event, handle_signals):
            try:
                self._phase = "opening"
                self.components.open(self.resumption.begin())
                self.sources.start()
                self._phase = "running"
                self._main_loop()
                self._checkpoint()
                if self.stop_event.is_set():
                    log.info("stopped: final checkpoint %d taken", self.checkpoint_id)
                self.sources.handover.closed = True
                self.sources.join()
            except BaseException as exc:
                self._phase = "failed"
                self._abort.set()
                self.sources.handover.closed = True
                self.components.close(failed=True)
                # A refused run does not count as one the state store knows of.
                status = "refused" if isinstance(exc, StateLostError) else "failed"
                self.resumption.record_start()
                self.state.end_run(self.run_id, status, self.counts(), redact(str(exc)))
                if self._owns_state:
                    self.state.close()
                if isinstance(exc, TideflowError | KeyboardInterrupt):
                    raise
                raise PipelineError(redact(f"{type(exc).__name__}: {exc}")) from exc
        self.components.close(failed=False)
        result = run_result(self)
        self.state.end_run(self.run_id, result.status, result.counts)
        if self._owns_state:
            self.state.close()
        self._phase = "ended"
        return result

    # -- the loop ------------------------------------------------------------------------

    def _main_loop(self) -> None:
        self._running = {n.name for n in self.graph.sources}
        bounded_end = all(n.component.bounded for n in self.graph.sources)
        while self._running:
            self.last_turn = time.monotonic()
            try:
                item = self._queue.get(timeout=self._queue_timeout())
            except queue.Empty:
                self._maybe_idle()
                self._maybe_checkpoint()
                self.reporter.progress_if_due()
                continue
            if item.batch is not None and item.source.component.awaiting_ack():
                # Its senders wait: take what else is queued now with it (one write per
                # sink for all of it, and all of it in the next checkpoint).
                if not self._handle_all([item, *self._queue.queued()]):
                    continue
            elif not self._handle(item):
                continue
            self._maybe_idle()  # unbounded sources send empty batches while quiet
            self._maybe_checkpoint()
            self.reporter.progress_if_due()
        if bounded_end and not self.stop_event.is_set():
            self.flow.finish()
            for node in self.graph.sinks:
                node.component.end_of_input()
        self.reporter.progress()

    def _handle(self, item: SourceItem) -> bool:
        """Act on one item of the queue; True when it was a batch."""
        if item.error is not None:
            err = item.error
            if isinstance(err, TideflowError):
                raise err
            raise PipelineError(
                redact(f"source {item.source.name!r} failed: {type(err).__name__}: {err}")
            ) from err
        if item.ended:
            self._running.discard(item.source.name)
            return False
        if item.handover is not None:
            self.ownership.hand_over(item.handover, self._checkpoint)
            return False
        assert item.batch is not None
        self._process_source_batch(item.source, item.batch)
        if item.batch.checkpoint:
            self._checkpoint()
        if item.batch.size and self.reporter.wants_visible():
            self.checkpointer.unseen(item.source.name, item.batch.event_time or item.received)
        return True

    def _handle_all(self, items: list[SourceItem]) -> bool:
        """Act on items in order; True when one was a batch.

        Consecutive batches of one source are taken as one where they have the same
        columns: a group commit then costs each sink one write, however many small
        batches (webhook posts, messages) the source read while the last checkpoint ran."""
        batches = False
        for item in coalesce(items):
            batches |= self._handle(item)
        return batches

    def _process_source_batch(self, node: Node, batch: SourceBatch) -> None:
        started = time.perf_counter()
        counts = node.counts
        counts.batches += 1
        counts.records_in += batch.size
        counts.out += batch.data.height
        if batch.dead is not None and batch.dead.height:
            self.flow.dead_letter(node, batch.dead)
        counts.seconds += time.perf_counter() - started
        if self.worker is None:
            self._positions[node.name] = batch.position
        elif batch.partition is not None:
            if not self.ownership.owns(node.name, batch.partition):
                raise PipelineError(
                    f"source {node.name!r} handed over records of partition "
                    f"{batch.partition}, which this worker does not own"
                )
            self._positions[node.name].update(batch.position)
            self.ownership.enter(batch.partition)
        self.checkpointer.took(node.name, batch.size)
        if batch.size:
            self._last_record_at = time.monotonic()
        if batch.data.height:
            self.flow.push({(node.name, MAIN_PORT): batch.data})
        self.reporter.batch(node.name, batch.size, time.perf_counter() - started)

    def _maybe_idle(self) -> None:
        """No batch came: tell the steps how long the input has been quiet (twice a second)."""
        now = time.monotonic()
        if self.graph.steps and now - self._last_idle_call >= 0.5:
            self._last_idle_call = now
            self.flow.idle(now - self._last_record_at)

    # -- checkpoints ---------------------------------------------------------------------

    def _queue_timeout(self) -> float:
        """How long the main loop waits for a batch: 0.1 s, or until a group commit."""
        due = self.checkpointer.group_commit_in()
        return 0.1 if due is None else min(0.1, due)

    def _maybe_checkpoint(self) -> None:
        if self.checkpointer.group_commit_in() == 0.0:
            # Batches already read while the last checkpoint ran share this one.
            self._handle_all(self._queue.queued())
            self._checkpoint()
        elif self.checkpointer.due():
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Take a checkpoint (see :meth:`Checkpointer.take`) and tell the observer."""
        seconds = self.checkpointer.take(self.ownership.checkpoint)
        self.reporter.checkpointed(self.checkpoint_id, seconds)
