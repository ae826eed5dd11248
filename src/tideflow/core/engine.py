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

from tideflow.core.checkpoints import (
    CheckpointStore,
    GroupCheckpoint,
    Lease,
    PartitionState,
    SinkOutbox,
)
from tideflow.core.codec import decode_state, encode_state
from tideflow.core.contracts import (
    MAIN_PORT,
    Context,
    ExistingOutput,
    SourceBatch,
    Staged,
    StepOutput,
)
from tideflow.core.delta import StateDelta
from tideflow.core.expressions import condition_mask
from tideflow.core.faults import crash_point
from tideflow.core.graph import Graph, Node
from tideflow.core.partitions import Handover, HandoverRequest, ScopedStep, keeps_state
from tideflow.core.plan import RunPlan
from tideflow.errors import (
    ConfigError,
    PipelineError,
    SourceMovedError,
    StateLostError,
    TideflowError,
)
from tideflow.secrets import redact, redact_frame

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
    on_checkpoint_seconds: Callable[[int, float], None] | None = None
    """Called after each checkpoint has committed, with its id and the seconds it took
    (sink flushes, the state store commit, sink commits and source acknowledgements)."""
    on_start: Callable[[Engine], None] | None = None
    """Called once when a run starts, before anything is opened (health endpoints read the
    engine's :attr:`Engine.phase` from then on)."""
    on_sink_input: Callable[[str, pl.DataFrame], None] | None = None
    """Called with a sink's name and each batch handed to it to write (after its ``when``
    condition), before the write: what a notebook's ``result.to_polars(sink)`` shows."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: str
    pipeline: str
    status: str
    seconds: float
    checkpoints: int
    counts: dict[str, dict[str, Any]]
    notices: list[str] = field(default_factory=list)
    """What the run did not read and why, what changed since, what was cleared: sentences
    for the person who ran it (printed under the summary, in ``--json``)."""
    stopped: bool = False
    unbalanced: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the run failed (status ``failed``), as the exception said it; None otherwise."""

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


def _coalesce(items: list[_SourceItem]) -> list[_SourceItem]:
    """The items in order, with consecutive batches of one source (and partition) whose
    frames have the same schema merged into one (the last one's position)."""
    out: list[_SourceItem] = []
    for item in items:
        last = out[-1] if out else None
        if last is not None and _mergeable(last, item):
            assert last.batch is not None and item.batch is not None
            a, b = last.batch, item.batch
            dead = [d for d in (a.dead, b.dead) if d is not None]
            times = [t for t in (a.event_time, b.event_time) if t is not None]
            merged = SourceBatch(
                pl.concat([a.data, b.data]),
                b.position,
                pl.concat(dead) if dead else None,
                b.partition,
                min(times) if times else None,
            )
            out[-1] = _SourceItem(last.source, batch=merged, received=last.received)
        else:
            out.append(item)
    return out


def _mergeable(a: _SourceItem, b: _SourceItem) -> bool:
    if a.batch is None or b.batch is None or a.source is not b.source:
        return False
    x, y = a.batch.data, b.batch.data
    # A frame without columns may still count records (`{}` messages): not merged.
    return (
        a.batch.partition == b.batch.partition
        and not a.batch.checkpoint
        and x.width > 0
        and x.schema == y.schema
        and (a.batch.event_time is None) == (b.batch.event_time is None)
    )


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
    partitioned = [set(n.component.partition_keys() or ()) for n in graph.sources]
    for node in graph.steps:
        if not keeps_state(node.component):
            continue
        keys = node.component.state_keys()
        # Each worker keeps the state of the records it reads: exact only when no key's
        # records are spread over the partitions of two workers.
        if keys is None or not all(p and p <= set(keys) for p in partitioned):
            raise ConfigError(unpartitioned_state(node.name, node.type_name, keys, graph))


@dataclass
class _StoredState:
    """What the state store holds of one step's state since this run stored it whole."""

    base: int
    """Bytes of the whole state (the base)."""
    deltas: int = 0
    """Deltas stored after the base."""
    delta_bytes: int = 0
    """Their bytes."""


class Engine:
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
    ) -> None:
        self.plan = plan
        self.base_dir = Path(base_dir).resolve()
        self.graph = plan.graph
        self.state = state
        self._owns_state = owns_state
        """Close the store when the run ends (the engine was handed one opened for it)."""
        self.observer = observer or RunObserver()
        self.from_scratch = from_scratch
        self._notices: list[str] = []
        self._run_recorded = False
        self.worker = worker
        if worker is not None and scope == "main":
            scope = f"worker-{worker}"  # output file names and staging never clash
        self.scope = scope
        self.state_key = plan.name if scope == "main" else f"{plan.name}#{scope}"
        self.dead_letter_ledger: str | None = None
        """Where this run's dead letters are kept, when not under its state key (a replay
        keeps them in its pipeline's ledger, so they show in `tideflow deadletters list`)."""
        self.stop_event = threading.Event()
        self.run_id = uuid.uuid4().hex[:12]
        self._phase = "created"
        self.last_turn = time.monotonic()
        """Monotonic time of the main loop's latest turn (it turns at least every 0.1 s
        unless a step or sink holds it): what a liveness check looks at."""
        self.started = 0.0
        self.checkpoints = 0
        self.checkpoint_id = 0
        self._queue: queue.Queue[_SourceItem] = queue.Queue(maxsize=max(plan.queue_size, 1))
        self._abort = threading.Event()
        self._positions: dict[str, Any] = {}
        self._dead_buffer: list[tuple[str, pl.DataFrame]] = []
        self._dead_sink = plan.dead_letter_sink if plan.on_error == "dead_letter" else None
        self._records_since_checkpoint = 0
        self._last_checkpoint = 0.0
        self.last_checkpoint_at = 0.0
        """Unix time of the last committed checkpoint (the run's start before the first)."""
        self._progress_interval = progress_interval
        self._last_record_at = time.monotonic()
        self._last_idle_call = 0.0
        self._last_progress = 0.0
        self._handover = Handover(self._submit_handover)
        self._claims: dict[tuple[str, str], PartitionState] = {}
        self._lease: Lease | None = None
        self._outboxes: dict[str, SinkOutbox] = {}
        self._unseen: list[tuple[str, float]] = []
        """(source, start of its latency) per batch processed since the last checkpoint."""
        self._checkpoint_began = float("-inf")
        self._fresh: set[str] = set()
        """Sources whose records the engine took since the last checkpoint."""
        self._running: set[str] = set()
        """Sources that have not ended."""
        self._stored: dict[tuple[str, str, str], _StoredState] = {}
        """(step, source, partition) -> what the store holds of that state since this run
        stored it whole (source and partition empty outside a group); none: store it whole."""
        if worker is not None:
            check_group_worker(self.graph)

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the run to drain, checkpoint and finish (what SIGINT/SIGTERM do)."""
        self.stop_event.set()

    @property
    def phase(self) -> str:
        """Where the run is: ``created``, ``opening`` (connecting sources and sinks, restoring
        the checkpoint), ``running``, ``stopping`` (asked to stop: draining and taking the
        final checkpoint), ``ended`` or ``failed``."""
        if self._phase == "running" and self.stop_event.is_set():
            return "stopping"
        return self._phase

    def run(self, handle_signals: bool = False) -> RunResult:
        """Run to the end of bounded sources, or until :meth:`stop`; return the counts."""
        self.started = self._last_checkpoint = time.monotonic()
        self.last_checkpoint_at = time.time()
        if self.observer.on_start is not None:
            self.observer.on_start(self)
        with self._signals(handle_signals):
            try:
                self._phase = "opening"
                self._open()
                threads = self._start_sources()
                self._phase = "running"
                self._main_loop()
                self._checkpoint()
                if self.stop_event.is_set():
                    log.info("stopped: final checkpoint %d taken", self.checkpoint_id)
                self._handover.closed = True
                for thread in threads:
                    thread.join()
            except BaseException as exc:
                self._phase = "failed"
                self._abort.set()
                self._handover.closed = True
                self._close(failed=True)
                # A refused run does not count as one the state store knows of.
                status = "refused" if isinstance(exc, StateLostError) else "failed"
                self._record_start()
                self.state.end_run(self.run_id, status, self.counts(), redact(str(exc)))
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
        self._phase = "ended"
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

    def owned_partitions(self) -> list[str]:
        """``source:partition`` of every partition this group worker owns now (none outside a
        group)."""
        return sorted(f"{source}:{part}" for source, part in list(self._claims))

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
        sink = node.kind == "sink"
        return Context(
            pipeline=self.plan.name,
            name=node.name,
            base_dir=self.base_dir,
            state_dir=self.state.path.parent,
            stop_event=self.stop_event,
            scope=self.scope,
            metrics=node.counts.metrics,
            partitions=self._handover if self.worker and node.kind == "source" else None,
            state_id=self.state.identity(),
            outbox=self._outbox(node.name) if sink else None,
            source_offsets=self._source_offsets if sink else None,
        )

    def _outbox(self, sink: str) -> SinkOutbox:
        if sink not in self._outboxes:
            self._outboxes[sink] = SinkOutbox(self.state, self.state_key, sink)
        return self._outboxes[sink]

    def _source_offsets(self) -> list[Any]:
        """What each source would acknowledge for the positions of the checkpoint being
        taken, for sinks that commit it in their own transaction."""
        offsets = []
        for node in self.graph.sources:
            position = self._positions.get(node.name)
            if position:
                offered = node.component.transaction_offsets(position)
                if offered is not None:
                    offsets.append(offered)
        return offsets

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
                lease=self._lease,
            )

    def _record_start(self) -> None:
        """Write this run into the run history (once)."""
        if not self._run_recorded:
            self._run_recorded = True
            self.state.start_run(self.run_id, self.state_key)

    def _owns_main_output(self) -> bool:
        """Whether this run writes the pipeline's real output (not a preview, test or
        replay, which have scopes of their own)."""
        return self.scope == "main" or self.worker is not None

    def _all_sinks(self) -> list[Node]:
        return self.graph.sinks + ([self._dead_sink] if self._dead_sink else [])

    def existing_output(self) -> list[tuple[Node, ExistingOutput]]:
        """What each sink already holds of this pipeline's output (see
        :meth:`Sink.committed_output`); opens nothing."""
        found = []
        for node in self._all_sinks():
            try:
                output = node.component.committed_output(self._context(node))
            except TideflowError:
                raise
            except Exception as exc:
                raise PipelineError(
                    redact(f"sink {node.name!r} could not tell what output it holds: {exc}")
                ) from exc
            if output is not None:
                found.append((node, output))
        return found

    def _prepare_state(self) -> None:
        """Before anything opens: start over if asked, adopt a checkpoint a sink kept, and
        refuse to read everything again when the state is gone but the output is not."""
        known = self.state.knows(self.plan.name)
        if self.from_scratch:
            if not self._owns_main_output():
                raise ConfigError("from_scratch applies to a pipeline's main run only")
            self._start_over()
        keeper = self._keeper()
        if keeper is not None:
            self._adopt_stored_checkpoint(keeper)
        if (
            self.from_scratch
            or known
            or not self._owns_main_output()
            or self.state.load_checkpoint(self.state_key) is not None
        ):
            return
        rereading = [n for n in self.graph.sources if n.component.replays_without_state]
        if not rereading:
            return
        found = self.existing_output()
        if any(not output.idempotent for _, output in found):
            raise StateLostError(self._state_lost_message(rereading, found))
        for node, output in found:
            self._notices.append(
                f"the state store held nothing of this pipeline, so every input is read "
                f"from the start; sink {node.name!r} already held {output.found} and "
                "writes the same records again without duplicating them"
            )

    def _state_lost_message(
        self, rereading: list[Node], found: list[tuple[Node, ExistingOutput]]
    ) -> str:
        sources = ", ".join(f"{n.name!r} ({n.type_name})" for n in rereading)
        lines = [
            f"pipeline {self.plan.name!r}: the state store holds no checkpoint of it, but "
            "its output of an earlier run is there; its state was lost.",
            f"  state store: {self.state.describe()}",
            "  output found:",
        ]
        lines += [f"    sink {n.name!r} ({n.type_name}): {out.found}" for n, out in found]
        lines.append(
            f"A run now would read the input of source(s) {sources} again from the start "
            "and write all of it a second time. Nothing was read or written. Ways on:"
        )
        lines.append("  - restore the state store from a backup and run again;")
        clearing = [f"{n.name!r}: {out.clearing}" for n, out in found if out.clearing]
        keeping = [f"{n.name!r}" for n, out in found if not out.clearing]
        what = "; ".join(clearing) if clearing else "nothing"
        lines.append(
            "  - `tideflow run PIPELINE_FILE --from-scratch` (Python: `.run(from_scratch="
            f"True)`) starts over: it clears the output first ({what}) and the dead letters"
            + (f"; sink(s) {', '.join(keeping)} cannot take output back" if keeping else "")
            + ";"
        )
        lines.append(
            "  - `tideflow state reset --yes PIPELINE_FILE` accepts that the input is read "
            "again and written beside the output already there."
        )
        return "\n".join(lines)

    def _start_over(self) -> None:
        """``from_scratch``: forget the state and the dead letters, then clear what the sinks
        can clear. The run is recorded as ``clearing`` meanwhile: interrupted, it leaves the
        store knowing nothing of the pipeline, so the next run refuses again (rather than
        reading everything beside half-cleared output)."""
        self.state.start_run(self.run_id, self.state_key, "clearing")
        self._run_recorded = True
        self.state.reset(self.plan.name, dead_letters=True)
        # The reset forgot the leases too: this run claims its own again.
        self._lease = self.state.claim_lease(self.state_key, self.run_id)
        crash_point("from_scratch.mid_clear")
        for node, output in self.existing_output():
            if output.clearing is None:
                self._notices.append(
                    f"from scratch: sink {node.name!r} keeps what it holds ({output.found}): "
                    "it cannot take output back"
                )
                continue
            node.component.clear_output(self._context(node))
            self._notices.append(
                f"from scratch: sink {node.name!r} was cleared first ({output.clearing}), "
                "with the checkpoint and the dead letters"
            )
            log.info("from scratch: sink %s: %s", node.name, output.clearing)
        self.state.start_run(self.run_id, self.state_key, "running")

    def _open(self) -> None:
        # From here on, a run of this pipeline (or this worker id) started before is
        # fenced: its next checkpoint fails instead of overwriting ours.
        self._lease = self.state.claim_lease(self.state_key, self.run_id)
        self._prepare_state()
        self._record_start()
        checkpoint = self.state.load_checkpoint(self.state_key)
        # Output staged for a checkpoint that never committed (stored ahead of a keeper's
        # commit that did not happen) was never decided: forget it.
        dropped = self.state.drop_outbox_after(self.state_key, checkpoint.id if checkpoint else 0)
        if dropped:
            log.info("dropped %d outbox entries of a checkpoint that did not commit", dropped)
        tokens = checkpoint.sink_tokens if checkpoint else {}
        states = checkpoint.step_states if checkpoint else {}
        if checkpoint:
            self.checkpoint_id = checkpoint.id
            self._positions = dict(checkpoint.positions)
            log.info("resuming %s from checkpoint %d", self.plan.name, checkpoint.id)
        if self.worker is not None:
            # Positions and step state belong to partitions, restored as they are assigned.
            for node in self.graph.steps:
                if keeps_state(node.component):
                    node.component = ScopedStep(node.component)
        sinks = self.graph.sinks + ([self._dead_sink] if self._dead_sink else [])
        for node in sinks:
            node.component.open(self._context(node), tokens.get(node.name))
        for node in self.graph.steps:
            node.component.open(self._context(node), states.get(node.name))
        held = {name for name, position in self._positions.items() if position}
        if self.worker is not None:
            # A group's positions live per partition, under the pipeline's name.
            held = {row[0] for row in self.state.partition_states(self.plan.name) if row[4]}
            self._positions = {node.name: {} for node in self.graph.sources}
        for node in self.graph.sources:
            node.component.open(self._context(node), self._positions.get(node.name))
            self._check_origin(node, node.name in held)

    def _check_origin(self, node: Node, has_positions: bool) -> None:
        """Refuse to resume positions taken in another system than the one ``node`` reads
        now (a log created anew, another Kafka cluster): they would skip records, or read
        some twice, without a word. Otherwise remember where they are taken."""
        found = node.component.origin()
        if found is None:
            return
        identity, described = found
        key = self.plan.name if self.worker is not None else self.state_key
        stored = self.state.source_origin(key, node.name)
        if stored is not None and stored[0] != identity and has_positions:
            raise SourceMovedError(
                f"pipeline {self.plan.name!r}, source {node.name!r}: the stored positions are "
                f"offsets in {stored[1]}, but the source now reads {described}. Resuming "
                "from them would skip records, or read some twice, without a word. Nothing "
                "was read or written. Ways on:\n"
                "  - point the source back at the system it read before;\n"
                "  - `tideflow state reset --yes PIPELINE_FILE` forgets the positions and "
                "reads the new one from its start (or `start: latest` for its end);\n"
                "  - `tideflow run PIPELINE_FILE --from-scratch` (Python: "
                "`.run(from_scratch=True)`) also clears the output first."
            )
        if stored is None or stored[0] != identity:
            self.state.record_source_origin(key, node.name, identity, described)

    def _close(self, failed: bool) -> None:
        nodes = self.graph.nodes + ([self._dead_sink] if self._dead_sink else [])
        for outbox in self._outboxes.values():
            try:
                outbox.settle()
            except Exception as exc:
                if not failed:
                    raise
                log.warning("forgetting delivered outbox entries failed: %s", redact(str(exc)))
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
                if batch.size or moved or batch.partition is not None or batch.checkpoint:
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
        self._running = running  # what `_handle` takes ended sources out of
        while running:
            self.last_turn = time.monotonic()
            try:
                item = self._queue.get(timeout=self._queue_timeout())
            except queue.Empty:
                self._maybe_idle()
                self._maybe_checkpoint()
                self._maybe_progress()
                continue
            if item.batch is not None and item.source.component.awaiting_ack():
                # Its senders wait: take what else is queued now with it (one write per
                # sink for all of it, and all of it in the next checkpoint).
                if not self._handle_all([item, *self._queued()]):
                    continue
            elif not self._handle(item):
                continue
            self._maybe_idle()  # unbounded sources send empty batches while quiet
            self._maybe_checkpoint()
            self._maybe_progress()
        if bounded_end and not self.stop_event.is_set():
            self._finish_steps()
            for node in self.graph.sinks:
                node.component.end_of_input()
        self._emit_progress()

    def _handle(self, item: _SourceItem) -> bool:
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
            self._hand_over(item.handover)
            return False
        assert item.batch is not None
        self._process_source_batch(item.source, item.batch)
        if item.batch.checkpoint:
            self._checkpoint()
        if item.batch.size and self.observer.on_visible is not None:
            began = item.batch.event_time
            self._unseen.append((item.source.name, began or item.received))
        return True

    def _queued(self) -> list[_SourceItem]:
        """The items queued now (not those that arrive meanwhile: the queue is bounded,
        but a source may keep it full)."""
        items: list[_SourceItem] = []
        for _ in range(self._queue.qsize()):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _handle_all(self, items: list[_SourceItem]) -> bool:
        """Act on items in order; True when one was a batch.

        Consecutive batches of one source are taken as one where they have the same
        columns: a group commit then costs each sink one write, however many small
        batches (webhook posts, messages) the source read while the last checkpoint ran."""
        batches = False
        for item in _coalesce(items):
            batches |= self._handle(item)
        return batches

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
        claims = self.state.claim_partitions(self.plan.name, self.worker, source, parts)
        positions = {}
        for claim in claims:
            self._claims[(source, claim.part)] = claim
            for node in self._scoped_steps():
                node.component.adopt(claim.part, claim.step_states.get(node.name))
                # The first checkpoint of a partition taken over stores its state whole.
                self._stored.pop((node.name, source, claim.part), None)
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
                self._stored.pop((node.name, source, part), None)
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
            # A partition's step states are stored all whole or all as deltas (its base is
            # one row): a delta taken and then not stored is covered by the whole state.
            nodes = self._scoped_steps()
            deltas = {n.name: self._delta(n, (n.name, source, part)) for n in nodes}
            whole = any(delta is None for delta in deltas.values())
            for node in nodes:
                snap = node.component.snapshot() if whole else deltas[node.name]
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
        return GroupCheckpoint(self.plan.name, self.worker, partitions)

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
            self._fresh.add(node.name)
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
            if self.observer.on_sink_input is not None:
                self.observer.on_sink_input(node.name, frame)
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
        action = self.plan.on_error
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
                pl.lit(self.plan.name).alias("pipeline"),
                pl.lit(node.name).alias("step"),
                pl.lit(time.time()).alias("failed_at"),
            )
            self._write_sink(self._dead_sink, stamped)
        else:
            self._dead_buffer.append((node.name, dead))

    # -- checkpoints ---------------------------------------------------------------------

    def _senders_waiting(self) -> bool:
        """Some source whose records the engine took since the last checkpoint has senders
        waiting for their acknowledgement."""
        return any(
            node.name in self._fresh and node.component.awaiting_ack()
            for node in self.graph.sources
        )

    def _group_commit_in(self) -> float | None:
        """Seconds until the group commit falls due (0: now), or None when nobody waits.

        A record whose sender waits is checkpointed as soon as the previous checkpoint is
        done and ``min_interval`` has passed since it began: a sender waits about one
        checkpoint, and under load every checkpoint takes all that arrived during the last.
        """
        gap = self.plan.checkpoint.min_interval
        if gap is None or not self._fresh or not self._senders_waiting():
            return None
        return max(0.0, self._checkpoint_began + float(gap) - time.monotonic())

    def _queue_timeout(self) -> float:
        """How long the main loop waits for a batch: 0.1 s, or until a group commit."""
        due = self._group_commit_in()
        return 0.1 if due is None else min(0.1, due)

    def _maybe_checkpoint(self) -> None:
        if self._group_commit_in() == 0.0:
            # Batches already read while the last checkpoint ran share this one.
            self._handle_all(self._queued())
            self._checkpoint()
            return
        cp = self.plan.checkpoint
        due_records = cp.every_records and self._records_since_checkpoint >= cp.every_records
        due_time = cp.every_seconds and (
            time.monotonic() - self._last_checkpoint >= cp.every_seconds
        )
        if due_records or (due_time and self._records_since_checkpoint):
            self._checkpoint()

    @property
    def pending_records(self) -> int:
        """Records read since the last checkpoint (not yet covered by one)."""
        return self._records_since_checkpoint

    def _checkpoint(self) -> None:
        """Flush sinks, then store positions, state, tokens and dead letters atomically."""
        began = time.perf_counter()
        sinks = self.graph.sinks + ([self._dead_sink] if self._dead_sink else [])
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
            delta = None if keepers else self._delta(node, (node.name, "", ""))
            snap = node.component.snapshot() if delta is None else delta
            if snap is not None:
                states[node.name] = snap
        group = self._group_checkpoint()
        self.checkpoint_id += 1
        for entry in staged:
            entry.checkpoint = self.checkpoint_id
        if outbox and keepers:
            # The keeper commits the checkpoint before the state store does: the outbox
            # must be durable first (an outbox of a checkpoint that then fails to commit is
            # dropped at the next start).
            assert self._lease is not None
            self.state.store_outbox(self.state_key, self.checkpoint_id, outbox, self._lease)
            outbox = {}
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
        written: dict[tuple[str, str, str], int] = {}
        try:
            self.state.commit_checkpoint(
                self.state_key,
                self.checkpoint_id,
                self._positions,
                states,
                tokens,
                self._dead_buffer,
                self.run_id,
                group,
                lease=self._lease,
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
        self._track_stored(written, states, group)
        totals: dict[str, int] = {}
        for (step, _, _), stored in self._stored.items():
            totals[step] = totals.get(step, 0) + stored.base + stored.delta_bytes
        for node in self.graph.steps:
            if node.name in totals:
                # Reported with the run: state that keeps growing is a bug or a missing TTL.
                node.counts.metrics["state_bytes"] = totals[node.name]
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
        self._checkpoint_began = started
        self._fresh.clear()
        self.checkpoints += 1
        self._records_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.last_checkpoint_at = time.time()
        self._report_visible()
        if self.observer.on_checkpoint is not None:
            self.observer.on_checkpoint(self.checkpoint_id)
        if self.observer.on_checkpoint_seconds is not None:
            self.observer.on_checkpoint_seconds(self.checkpoint_id, time.perf_counter() - began)

    def _delta(self, node: Node, key: tuple[str, str, str]) -> StateDelta | None:
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

    def _track_stored(
        self,
        written: dict[tuple[str, str, str], int],
        states: dict[str, Any],
        group: GroupCheckpoint | None,
    ) -> None:
        """Remember, per step state stored by the checkpoint just committed, its size and
        whether it was a delta (for :meth:`_delta`)."""
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
        incomplete = [
            f"source {node.name!r}: {why}"
            for node in self.graph.sources
            if (why := node.component.incomplete())
        ]
        status = "stopped" if self.stop_event.is_set() else "succeeded"
        return RunResult(
            run_id=self.run_id,
            pipeline=self.plan.name,
            status="incomplete" if incomplete and status == "succeeded" else status,
            seconds=self.elapsed,
            checkpoints=self.checkpoints,
            counts=counts,
            stopped=self.stop_event.is_set(),
            unbalanced=unbalanced,
            notices=self._notices + self._source_notices() + incomplete,
        )

    def _source_notices(self) -> list[str]:
        notices = []
        for node in self.graph.sources:
            notices += [f"source {node.name!r}: {text}" for text in node.component.notices()]
        return notices

    def _all_nodes(self) -> dict[str, Node]:
        nodes = self.graph.nodes + ([self._dead_sink] if self._dead_sink else [])
        return {n.name: n for n in nodes}
