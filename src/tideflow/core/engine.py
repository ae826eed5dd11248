"""The engine: pulls batches from sources, pushes them through steps to sinks, checkpoints.

Each source runs in its own thread and hands batches to the main loop through a bounded
queue, which gives back-pressure and bounds memory. The main loop processes one batch at a
time through the whole graph, so at a checkpoint nothing is in flight inside the graph: the
position recorded for each source is that of the last batch fully processed, however far the
source has read ahead.

A checkpoint is a two-phase commit: sinks ``flush`` (durable, invisible), then source
positions, step state, sink tokens and dead letters are stored in one transaction, then sinks
``commit`` (visible). On start, sinks are handed the last stored token to finish or discard.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import polars as pl

from tideflow.core.contracts import MAIN_PORT, Context, SourceBatch, StepOutput
from tideflow.core.expressions import condition_mask
from tideflow.core.faults import crash_point
from tideflow.core.graph import Graph, Node, build_graph
from tideflow.core.partitions import Handover, HandoverRequest, ScopedStep, keeps_state
from tideflow.errors import ConfigError, PipelineError, TideflowError
from tideflow.registry import Registry, default_registry
from tideflow.secrets import redact, redact_frame
from tideflow.state.codec import decode_state, encode_state
from tideflow.state.store import GroupCheckpoint, PartitionState, StateStore, open_state_store

log = logging.getLogger("tideflow.engine")

_END = object()


@dataclass
class RunObserver:
    """Hooks for progress displays, previews and test taps; every hook is optional."""

    on_output: Callable[[str, str, pl.DataFrame], None] | None = None
    on_progress: Callable[[Engine], None] | None = None
    on_checkpoint: Callable[[int], None] | None = None
    on_batch: Callable[[str, int, float], None] | None = None
    """Called after each source batch has gone through the whole graph, with the source's
    name, the batch's record count and the seconds it took (for latency histograms)."""
    on_visible: Callable[[str, float], None] | None = None
    """Called when a checkpoint has committed, once per source batch it made visible, with
    the source's name and the seconds from the batch's oldest record timestamp (or the moment
    the engine received the batch) to that commit: the end-to-end latency."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: str
    pipeline: str
    status: str
    seconds: float
    checkpoints: int
    counts: dict[str, dict[str, Any]]
    stopped: bool = False
    unbalanced: list[str] = field(default_factory=list)

    @property
    def records_in(self) -> int:
        """Records read by all sources."""
        return sum(
            c["out"] + c["dead_lettered"]
            for n, c in self.counts.items()
            if c.get("kind") == "source"
        )


@dataclass
class _SourceItem:
    source: Node
    batch: SourceBatch | None = None
    error: BaseException | None = None
    ended: bool = False
    handover: HandoverRequest | None = None
    received: float = 0.0
    """Unix time the source thread got the batch (end-to-end latency starts there)."""


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


class Engine:
    """Runs one pipeline spec once.

    With ``worker`` set, the run is one worker of a consumer group (``tideflow run
    --workers``): its sources are split by partition between the group's workers, stateful
    steps keep their state per partition in the shared state store, and the worker's own
    checkpoint (sink tokens) is kept under ``NAME#worker-ID``.
    """

    def __init__(
        self,
        spec: Any,
        base_dir: str | Path = ".",
        registry: Registry | None = None,
        state: StateStore | None = None,
        observer: RunObserver | None = None,
        scope: str = "main",
        graph: Graph | None = None,
        progress_interval: float = 0.5,
        worker: str | None = None,
    ) -> None:
        self.spec = spec
        self.registry = registry or default_registry
        self.base_dir = Path(base_dir).resolve()
        self.graph = graph or build_graph(spec, self.registry)
        self.state = state or open_state_store(spec.state, self.base_dir)
        self._owns_state = state is None
        self.observer = observer or RunObserver()
        self.worker = worker
        if worker is not None and scope == "main":
            scope = f"worker-{worker}"  # output file names and staging never clash
        self.scope = scope
        self.state_key = spec.name if scope == "main" else f"{spec.name}#{scope}"
        self.stop_event = threading.Event()
        self.run_id = uuid.uuid4().hex[:12]
        self.started = 0.0
        self.checkpoints = 0
        self.checkpoint_id = 0
        self._queue: queue.Queue[_SourceItem] = queue.Queue(maxsize=max(spec.queue_size, 1))
        self._abort = threading.Event()
        self._positions: dict[str, Any] = {}
        self._dead_buffer: list[tuple[str, pl.DataFrame]] = []
        self._dead_sink: Node | None = None
        self._records_since_checkpoint = 0
        self._last_checkpoint = 0.0
        self._progress_interval = progress_interval
        self._last_record_at = time.monotonic()
        self._last_idle_call = 0.0
        self._last_progress = 0.0
        self._handover = Handover(self._submit_handover)
        self._claims: dict[tuple[str, str], PartitionState] = {}
        self._unseen: list[tuple[str, float]] = []
        """(source, start of its latency) per batch processed since the last checkpoint."""
        self._init_dead_letter_sink()
        if worker is not None:
            check_group_worker(self.graph)

    def _init_dead_letter_sink(self) -> None:
        cfg = self.spec.on_error.sink
        if self.spec.on_error.action == "dead_letter" and cfg is not None:
            component = self.registry.get("sink", cfg.type).cls(cfg)
            self._dead_sink = Node(cfg.name or "dead_letters", "sink", cfg.type, component)

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the run to drain, checkpoint and finish (what SIGINT/SIGTERM do)."""
        self.stop_event.set()

    def run(self, handle_signals: bool = False) -> RunResult:
        """Run to the end of bounded sources, or until :meth:`stop`; return the counts."""
        self.started = self._last_checkpoint = time.monotonic()
        self.state.start_run(self.run_id, self.state_key)
        with self._signals(handle_signals):
            try:
                self._open()
                threads = self._start_sources()
                self._main_loop()
                self._checkpoint()
                self._handover.closed = True
                for thread in threads:
                    thread.join()
            except BaseException as exc:
                self._abort.set()
                self._handover.closed = True
                self._close(failed=True)
                self.state.end_run(self.run_id, "failed", self.counts(), redact(str(exc)))
                if self._owns_state:
                    self.state.close()
                if isinstance(exc, TideflowError | KeyboardInterrupt):
                    raise
                raise PipelineError(redact(f"{type(exc).__name__}: {exc}")) from exc
        self._close(failed=False)
        result = self._result()
        self.state.end_run(self.run_id, result.status, result.counts)
        if self._owns_state:
            self.state.close()
        return result

    def counts(self) -> dict[str, dict[str, Any]]:
        """Counts per node, with its kind and type."""
        nodes = self.graph.nodes + ([self._dead_sink] if self._dead_sink else [])
        counts = {}
        for n in nodes:
            counts[n.name] = {"kind": n.kind, "type": n.type_name, **n.counts.as_dict()}
            # Counters a component bumped through its context (retries, outage seconds) and
            # the figures it reports at the end share one place in the summary.
            # (list() copies in one step: a source thread may add a key meanwhile)
            report = {k: round(v, 6) for k, v in list(n.counts.metrics.items())}
            report.update(n.component.report() or {})
            if report:
                counts[n.name]["report"] = report
        return counts

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started if self.started else 0.0

    # -- lifecycle -----------------------------------------------------------------------

    @contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stop_event.is_set():  # a second Ctrl-C means "now"
                raise KeyboardInterrupt
            log.warning("stopping: draining in-flight batches and checkpointing")
            self.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _context(self, node: Node) -> Context:
        return Context(
            pipeline=self.spec.name,
            name=node.name,
            base_dir=self.base_dir,
            state_dir=self.state.path.parent,
            stop_event=self.stop_event,
            scope=self.scope,
            metrics=node.counts.metrics,
            partitions=self._handover if self.worker and node.kind == "source" else None,
        )

    def _keeper(self) -> Node | None:
        """The sink that stores checkpoints with its data, if any (at most one may)."""
        keepers = [n for n in self.graph.sinks if n.component.keeps_checkpoint]
        if len(keepers) > 1:
            raise PipelineError(
                "only one sink can keep the checkpoint with its data (transactional); found "
                + ", ".join(repr(n.name) for n in keepers)
            )
        return keepers[0] if keepers else None

    def _adopt_stored_checkpoint(self, keeper: Node) -> None:
        """After a crash between the keeper's commit and the state store's, the keeper holds
        the newer checkpoint: copy it into the state store before anything opens."""
        payload = keeper.component.stored_checkpoint(self._context(keeper))
        current = self.state.load_checkpoint(self.state_key)
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
            self.state.commit_checkpoint(
                self.state_key,
                stored["id"],
                stored["positions"],
                stored["states"],
                stored["tokens"],
                [(step, frame) for step, frame in stored["dead"]],
                self.run_id,
            )

    def _open(self) -> None:
        keeper = self._keeper()
        if keeper is not None:
            self._adopt_stored_checkpoint(keeper)
        checkpoint = self.state.load_checkpoint(self.state_key)
        tokens = checkpoint.sink_tokens if checkpoint else {}
        states = checkpoint.step_states if checkpoint else {}
        if checkpoint:
            self.checkpoint_id = checkpoint.id
            self._positions = dict(checkpoint.positions)
            log.info("resuming %s from checkpoint %d", self.spec.name, checkpoint.id)
        if self.worker is not None:
            # Positions and step state belong to partitions, restored as they are assigned.
            self._positions = {node.name: {} for node in self.graph.sources}
            for node in self.graph.steps:
                if keeps_state(node.component):
                    node.component = ScopedStep(node.component)
        sinks = self.graph.sinks + ([self._dead_sink] if self._dead_sink else [])
        for node in sinks:
            node.component.open(self._context(node), tokens.get(node.name))
        for node in self.graph.steps:
            node.component.open(self._context(node), states.get(node.name))
        for node in self.graph.sources:
            node.component.open(self._context(node), self._positions.get(node.name))

    def _close(self, failed: bool) -> None:
        nodes = self.graph.nodes + ([self._dead_sink] if self._dead_sink else [])
        for node in nodes:
            try:
                node.component.close()
            except Exception as exc:
                if not failed:
                    raise
                log.warning("closing %s failed: %s", node.name, redact(str(exc)))

    def _start_sources(self) -> list[threading.Thread]:
        threads = []
        for node in self.graph.sources:
            thread = threading.Thread(
                target=self._pump, args=(node,), name=f"source-{node.name}", daemon=True
            )
            thread.start()
            threads.append(thread)
        return threads

    def _pump(self, node: Node) -> None:
        """Source thread: read batches into the queue until the end or a stop request."""
        source = node.component
        try:
            while not self.stop_event.is_set() and not self._abort.is_set():
                batch = source.read_batch()
                if batch is None:
                    break
                # A group worker's positions move per partition, with records.
                moved = self.worker is None and batch.position != self._positions.get(node.name)
                if batch.size or moved:
                    self._put(_SourceItem(node, batch=batch, received=time.time()))
            self._put(_SourceItem(node, ended=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the main loop to raise
            self._put(_SourceItem(node, error=exc))

    def _put(self, item: _SourceItem) -> None:
        while not self._abort.is_set():
            with suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def _main_loop(self) -> None:
        running = {n.name for n in self.graph.sources}
        bounded_end = all(n.component.bounded for n in self.graph.sources)
        while running:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._maybe_idle()
                self._maybe_checkpoint()
                self._maybe_progress()
                continue
            if item.error is not None:
                err = item.error
                if isinstance(err, TideflowError):
                    raise err
                raise PipelineError(
                    redact(f"source {item.source.name!r} failed: {type(err).__name__}: {err}")
                ) from err
            if item.ended:
                running.discard(item.source.name)
                continue
            if item.handover is not None:
                self._hand_over(item.handover)
                continue
            assert item.batch is not None
            self._process_source_batch(item.source, item.batch)
            if item.batch.size and self.observer.on_visible is not None:
                began = item.batch.event_time
                self._unseen.append((item.source.name, began or item.received))
            self._maybe_idle()  # unbounded sources send empty batches while quiet
            self._maybe_checkpoint()
            self._maybe_progress()
        if bounded_end and not self.stop_event.is_set():
            self._finish_steps()
            for node in self.graph.sinks:
                node.component.end_of_input()
        self._emit_progress()

    # -- group workers -------------------------------------------------------------------

    def _submit_handover(self, request: HandoverRequest) -> bool:
        """Source thread: queue a hand-over behind the batches already read; wait for it."""
        node = next(n for n in self.graph.sources if n.name == request.source)
        self._put(_SourceItem(node, handover=request))
        while not request.done.wait(0.1):
            if self._abort.is_set() or self._handover.closed:
                return False
        return True

    def _hand_over(self, request: HandoverRequest) -> None:
        """Main loop: act on a source's partitions moving, in order with its batches."""
        try:
            if request.assigned:
                request.positions = self._take_partitions(request.source, request.partitions)
            else:
                self._give_partitions(request.source, request.partitions)
        except BaseException as exc:
            request.error = exc
            raise
        finally:
            request.done.set()

    def _take_partitions(self, source: str, parts: list[str]) -> dict[str, Any]:
        assert self.worker is not None
        claims = self.state.claim_partitions(self.spec.name, self.worker, source, parts)
        positions = {}
        for claim in claims:
            self._claims[(source, claim.part)] = claim
            for node in self._scoped_steps():
                node.component.adopt(claim.part, claim.step_states.get(node.name))
            if claim.position is not None:
                positions[claim.part] = claim.position
                self._positions[source][claim.part] = claim.position
        log.info("worker %s took partitions %s of %s", self.worker, ", ".join(parts), source)
        return positions

    def _give_partitions(self, source: str, parts: list[str]) -> None:
        # Checkpoint first: the next owner resumes from what is stored now.
        self._checkpoint()
        for part in parts:
            self._claims.pop((source, part), None)
            self._positions[source].pop(part, None)
            for node in self._scoped_steps():
                node.component.drop(part)
        log.info("worker %s gave partitions %s of %s up", self.worker, ", ".join(parts), source)

    def _scoped_steps(self) -> list[Node]:
        return [n for n in self.graph.steps if isinstance(n.component, ScopedStep)]

    def _partition_scopes(self) -> Sequence[str | None]:
        """The partitions whose step state is held here (one scope, None, outside a group)."""
        if self.worker is None:
            return [None]
        return sorted({part for _, part in self._claims})

    def _enter_partition(self, part: str | None) -> None:
        for node in self._scoped_steps():
            node.component.current = part

    def _group_checkpoint(self) -> GroupCheckpoint | None:
        if self.worker is None:
            return None
        partitions = []
        for (source, part), claim in sorted(self._claims.items()):
            self._enter_partition(part)
            states = {}
            for node in self._scoped_steps():
                snap = node.component.snapshot()
                if snap is not None:
                    states[node.name] = snap
            partitions.append(
                PartitionState(
                    source=source,
                    part=part,
                    epoch=claim.epoch,
                    position=self._positions[source].get(part),
                    step_states=states,
                )
            )
        return GroupCheckpoint(self.spec.name, self.worker, partitions)

    # -- processing ----------------------------------------------------------------------

    def _process_source_batch(self, node: Node, batch: SourceBatch) -> None:
        started = time.perf_counter()
        counts = node.counts
        counts.batches += 1
        counts.records_in += batch.size
        counts.out += batch.data.height
        if batch.dead is not None and batch.dead.height:
            self._dead_letter(node, batch.dead)
        counts.seconds += time.perf_counter() - started
        if self.worker is None:
            self._positions[node.name] = batch.position
        elif batch.partition is not None:
            if (node.name, batch.partition) not in self._claims:
                raise PipelineError(
                    f"source {node.name!r} handed over records of partition "
                    f"{batch.partition}, which this worker does not own"
                )
            self._positions[node.name].update(batch.position)
            self._enter_partition(batch.partition)
        self._records_since_checkpoint += batch.size
        if batch.size:
            self._last_record_at = time.monotonic()
        if batch.data.height:
            self._push({(node.name, MAIN_PORT): batch.data})
        if self.observer.on_batch is not None:
            self.observer.on_batch(node.name, batch.size, time.perf_counter() - started)

    def _push(self, produced: dict[tuple[str, str], pl.DataFrame]) -> None:
        """Send frames produced on (node, port) through the rest of the graph, in order."""
        pending: dict[str, list[pl.DataFrame]] = {}
        for ref, frame in produced.items():
            self._tap(ref, frame)
            for consumer in self.graph.consumers.get(ref, ()):
                pending.setdefault(consumer.name, []).append(frame)
        for node in [*self.graph.steps, *self.graph.sinks]:
            frames = pending.pop(node.name, None)
            if not frames:
                continue
            frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
            if node.kind == "step":
                for ref, out in self._run_step(node, frame).items():
                    self._tap(ref, out)
                    for consumer in self.graph.consumers.get(ref, ()):
                        pending.setdefault(consumer.name, []).append(out)
            else:
                self._write_sink(node, frame)

    def _tap(self, ref: tuple[str, str], frame: pl.DataFrame) -> None:
        if self.observer.on_output is not None and frame.height:
            self.observer.on_output(ref[0], ref[1], frame)

    def _run_step(self, node: Node, frame: pl.DataFrame) -> dict[tuple[str, str], pl.DataFrame]:
        started = time.perf_counter()
        try:
            result = node.component.process(frame)
        except TideflowError:
            raise
        except Exception as exc:
            raise PipelineError(
                redact(f"step {node.name!r} ({node.type_name}) failed: {type(exc).__name__}: {exc}")
            ) from exc
        node.counts.records_in += frame.height
        node.counts.batches += 1
        out = self._account(node, result)
        node.counts.seconds += time.perf_counter() - started
        return out

    def _account(self, node: Node, result: StepOutput) -> dict[tuple[str, str], pl.DataFrame]:
        counts = node.counts
        counts.filtered += result.filtered
        counts.consumed += result.consumed
        counts.generated += result.generated
        if result.dead is not None and result.dead.height:
            self._dead_letter(node, result.dead)
        out = {}
        for port, frame in result.outputs.items():
            counts.out += frame.height
            if frame.height:
                out[(node.name, port)] = frame
        return out

    def _write_sink(self, node: Node, frame: pl.DataFrame) -> None:
        started = time.perf_counter()
        counts = node.counts
        counts.records_in += frame.height
        counts.batches += 1
        if node.when is not None:
            mask = condition_mask(frame, node.when)
            kept = frame.filter(mask)
            counts.filtered += frame.height - kept.height
            frame = kept
        if frame.height:
            dead = node.component.write_batch(frame)
            dead_n = dead.height if dead is not None else 0
            counts.out += frame.height - dead_n
            if dead is not None and dead_n:
                self._dead_letter(node, dead)
        counts.seconds += time.perf_counter() - started

    def _maybe_idle(self) -> None:
        """No batch came: tell the steps how long the input has been quiet (twice a second),
        so a window with an idle timeout can close its last windows."""
        now = time.monotonic()
        if not self.graph.steps or now - self._last_idle_call < 0.5:
            return
        self._last_idle_call = now
        quiet = now - self._last_record_at
        for part in self._partition_scopes():
            self._enter_partition(part)
            for node in self.graph.steps:
                out = self._account(node, node.component.idle(quiet))
                if out:
                    self._push(out)

    def _finish_steps(self) -> None:
        """Every bounded source ended: let stateful steps emit what they hold, in order."""
        for part in self._partition_scopes():
            self._enter_partition(part)
            for node in self.graph.steps:
                out = self._account(node, node.component.finish())
                if out:
                    self._push(out)

    def _dead_letter(self, node: Node, dead: pl.DataFrame) -> None:
        node.counts.dead += dead.height
        action = self.spec.on_error.action
        if action == "fail":
            reason = dead.get_column("reason")[0]
            raise PipelineError(
                redact(
                    f"{node.kind} {node.name!r} rejected {dead.height} record(s): {reason} "
                    "(on_error is `fail`; use `dead_letter` to keep going)"
                )
            )
        if action == "skip":
            return
        # A reason quotes an exception, and an exception may quote a secret from the config.
        dead = redact_frame(dead, ("record", "reason"))
        if self._dead_sink is not None:
            stamped = dead.with_columns(
                pl.lit(self.spec.name).alias("pipeline"),
                pl.lit(node.name).alias("step"),
                pl.lit(time.time()).alias("failed_at"),
            )
            self._write_sink(self._dead_sink, stamped)
        else:
            self._dead_buffer.append((node.name, dead))

    # -- checkpoints ---------------------------------------------------------------------

    def _maybe_checkpoint(self) -> None:
        cp = self.spec.checkpoint
        due_records = cp.every_records and self._records_since_checkpoint >= cp.every_records
        due_time = cp.every_seconds and (
            time.monotonic() - self._last_checkpoint >= cp.every_seconds
        )
        if due_records or (due_time and self._records_since_checkpoint):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Flush sinks, then store positions, state, tokens and dead letters atomically."""
        sinks = self.graph.sinks + ([self._dead_sink] if self._dead_sink else [])
        keepers = [n for n in sinks if n.component.keeps_checkpoint]
        tokens = {}
        for node in [n for n in sinks if n not in keepers]:
            tokens[node.name] = self._flush(node)
        crash_point("checkpoint.after_flush")
        states = {}
        for node in self.graph.steps:
            if isinstance(node.component, ScopedStep):
                continue  # stored per partition, below
            snap = node.component.snapshot()
            if snap is not None:
                states[node.name] = snap
        group = self._group_checkpoint()
        self.checkpoint_id += 1
        for node in keepers:
            payload = {
                "id": self.checkpoint_id,
                "positions": self._positions,
                "states": states,
                "tokens": tokens,
                "dead": [[step, frame] for step, frame in self._dead_buffer],
            }
            node.component.attach_checkpoint(encode_state(payload))
            tokens[node.name] = self._flush(node)
            crash_point("checkpoint.after_keeper_commit")
        sizes = self.state.commit_checkpoint(
            self.state_key,
            self.checkpoint_id,
            self._positions,
            states,
            tokens,
            self._dead_buffer,
            self.run_id,
            group,
        )
        for node in self.graph.steps:
            if node.name in sizes:
                # Reported with the run: state that keeps growing is a bug or a missing TTL.
                node.counts.metrics["state_bytes"] = sizes[node.name]
        crash_point("checkpoint.after_state")
        self._dead_buffer = []
        for node in sinks:
            node.component.commit(tokens[node.name])
            crash_point("checkpoint.after_first_sink_commit")
        for node in self.graph.sources:
            # The data is durable: an acknowledgement that fails only means the upstream
            # redelivers records the positions already cover, so the run goes on.
            try:
                node.component.checkpointed(self._positions.get(node.name))
            except Exception as exc:  # noqa: BLE001 - any failure: warn, resume from positions
                log.warning(
                    "source %s could not acknowledge checkpoint %d: %s",
                    node.name,
                    self.checkpoint_id,
                    redact(str(exc)),
                )
        self.checkpoints += 1
        self._records_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._report_visible()
        if self.observer.on_checkpoint is not None:
            self.observer.on_checkpoint(self.checkpoint_id)

    def _report_visible(self) -> None:
        """The sinks have committed: every batch since the last checkpoint is visible now."""
        unseen, self._unseen = self._unseen, []
        if self.observer.on_visible is None:
            return
        now = time.time()
        for source, began in unseen:
            self.observer.on_visible(source, max(now - began, 0.0))

    # -- reporting -----------------------------------------------------------------------

    def _flush(self, node: Node) -> Any:
        try:
            return node.component.flush()
        except TideflowError:
            raise
        except Exception as exc:
            raise PipelineError(
                redact(f"sink {node.name!r} could not flush at checkpoint: {exc}")
            ) from exc

    def _maybe_progress(self) -> None:
        if time.monotonic() - self._last_progress >= self._progress_interval:
            self._emit_progress()

    def _emit_progress(self) -> None:
        self._last_progress = time.monotonic()
        if self.observer.on_progress is not None:
            self.observer.on_progress(self)

    def _result(self) -> RunResult:
        counts = self.counts()
        unbalanced = [
            name for name, node in self._all_nodes().items() if not node.counts.balanced()
        ]
        for name in unbalanced:
            log.error("record accounting does not balance for %s: %s", name, counts[name])
        return RunResult(
            run_id=self.run_id,
            pipeline=self.spec.name,
            status="stopped" if self.stop_event.is_set() else "succeeded",
            seconds=self.elapsed,
            checkpoints=self.checkpoints,
            counts=counts,
            stopped=self.stop_event.is_set(),
            unbalanced=unbalanced,
        )

    def _all_nodes(self) -> dict[str, Node]:
        nodes = self.graph.nodes + ([self._dead_sink] if self._dead_sink else [])
        return {n.name: n for n in nodes}
