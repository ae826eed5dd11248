"""One batch through the graph: steps in topological order, sinks with their ``when``, and
every record counted where it goes (out, filtered, consumed, generated or dead-lettered);
and what steps release without a batch (when the input is quiet, when it has ended).

Runs on the engine's main thread only, one batch at a time, so nothing is in flight inside
the graph at a checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable

import polars as pl

from tideflow.core.contracts import StepOutput
from tideflow.core.expressions import condition_mask
from tideflow.core.graph import Graph, Node
from tideflow.core.ownership import PartitionOwnership
from tideflow.core.plan import RunPlan
from tideflow.errors import PipelineError, TideflowError
from tideflow.secrets import redact, redact_frame

Frames = dict[tuple[str, str], pl.DataFrame]
"""Frames by the (node, port) that produced them."""


class Dataflow:
    """Pushes frames through ``plan``'s graph; dead letters go to the plan's dead-letter
    sink, or to ``dead_letters`` for the next checkpoint to store. ``ownership`` points the
    steps at each partition's state in turn when they release without a batch."""

    def __init__(
        self,
        plan: RunPlan,
        dead_letters: Callable[[], list[tuple[str, pl.DataFrame]]],
        tap: Callable[[str, str, pl.DataFrame], None],
        sink_input: Callable[[str, pl.DataFrame], None],
        ownership: PartitionOwnership,
    ) -> None:
        self.plan = plan
        self.graph: Graph = plan.graph
        self._dead_letters = dead_letters
        self._tap_output = tap
        self._sink_input = sink_input
        self._ownership = ownership

    def push(self, produced: Frames) -> None:
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
                self.write_sink(node, frame)

    def _tap(self, ref: tuple[str, str], frame: pl.DataFrame) -> None:
        if frame.height:
            self._tap_output(ref[0], ref[1], frame)

    def _run_step(self, node: Node, frame: pl.DataFrame) -> Frames:
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
        out = self.account(node, result)
        node.counts.seconds += time.perf_counter() - started
        return out

    def account(self, node: Node, result: StepOutput) -> Frames:
        """Count what a step made of its input; its non-empty outputs."""
        counts = node.counts
        counts.filtered += result.filtered
        counts.consumed += result.consumed
        counts.generated += result.generated
        if result.dead is not None and result.dead.height:
            self.dead_letter(node, result.dead)
        out = {}
        for port, frame in result.outputs.items():
            counts.out += frame.height
            if frame.height:
                out[(node.name, port)] = frame
        return out

    def write_sink(self, node: Node, frame: pl.DataFrame) -> None:
        """Hand ``frame`` to a sink (what its ``when`` keeps); count what it took."""
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
            self._sink_input(node.name, frame)
            dead = node.component.write_batch(frame)
            dead_n = dead.height if dead is not None else 0
            counts.out += frame.height - dead_n
            if dead is not None and dead_n:
                self.dead_letter(node, dead)
        counts.seconds += time.perf_counter() - started

    def idle(self, quiet: float) -> None:
        """Tell the steps the input has been quiet for ``quiet`` seconds (a window with an
        idle timeout closes its last windows) and push on what they release."""
        for part in self._ownership.scopes():
            self._ownership.enter(part)
            self.emit(lambda node: node.component.idle(quiet))

    def finish(self) -> None:
        """Every bounded source ended: let stateful steps emit what they hold, in order."""
        for part in self._ownership.scopes():
            self._ownership.enter(part)
            self.emit(lambda node: node.component.finish())

    def emit(self, call: Callable[[Node], StepOutput]) -> None:
        """Ask every step, in order, for what it releases now (``idle``, ``finish``) and
        push that on."""
        for node in self.graph.steps:
            out = self.account(node, call(node))
            if out:
                self.push(out)

    def dead_letter(self, node: Node, dead: pl.DataFrame) -> None:
        """Records ``node`` rejected: stop, drop, or keep them with their reason, as the
        pipeline's ``on_error`` says."""
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
        if self.plan.dead_letter_sink is not None:
            stamped = dead.with_columns(
                pl.lit(self.plan.name).alias("pipeline"),
                pl.lit(node.name).alias("step"),
                pl.lit(time.time()).alias("failed_at"),
            )
            self.write_sink(self.plan.dead_letter_sink, stamped)
        else:
            self._dead_letters().append((node.name, dead))
