"""The small contracts every source, step and sink implements.

Batches are Polars DataFrames. A source returns batches together with the position *after*
the batch, so the engine can record exactly what it has processed even while the source reads
ahead. A sink prepares at checkpoint (``flush``) and makes its output visible only after the
checkpoint is durable (``commit``): a two-phase commit that lets a crash at any moment be
recovered without loss or duplicates.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import polars as pl
from pydantic import BaseModel

JSON = Any
"""A JSON-serialisable value (positions, commit tokens, small state)."""

MAIN_PORT = "out"

DEAD_LETTER_SCHEMA = {"record": pl.String, "reason": pl.String}


def dead_letters(rows: pl.DataFrame, reason: str | pl.Expr) -> pl.DataFrame:
    """Build a dead-letter frame (``record`` as JSON text, ``reason``) from failed rows.

    Vectorised: the rows are JSON-encoded by Polars, not by a Python loop.
    """
    if rows.height == 0:
        return empty_dead_letters()
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    record = pl.lit("{}") if rows.width == 0 else pl.struct(pl.all()).struct.json_encode()
    return rows.select(
        record.cast(pl.String).alias("record"), reason_expr.cast(pl.String).alias("reason")
    )


def raw_dead_letters(records: list[str], reasons: list[str]) -> pl.DataFrame:
    """Dead letters for input that never became a record (unparseable text)."""
    return pl.DataFrame({"record": records, "reason": reasons}, schema=DEAD_LETTER_SCHEMA)


def empty_dead_letters() -> pl.DataFrame:
    """A dead-letter frame with no rows."""
    return pl.DataFrame(schema=DEAD_LETTER_SCHEMA)


@dataclass
class SourceBatch:
    """What a source hands the engine: records, the position after them, unparseable input."""

    data: pl.DataFrame
    position: JSON
    dead: pl.DataFrame | None = None
    partition: str | None = None
    """For a source read by a group of workers: the one partition all records come from
    (its position is then ``{partition: next position}``), so state can follow it."""
    event_time: float | None = None
    """Unix seconds of the oldest record's own timestamp (a message's timestamp), when the
    source knows it; end-to-end latency is measured from there, else from the moment the
    engine received the batch."""

    @property
    def size(self) -> int:
        """Records that entered the pipeline with this batch (good and dead-lettered)."""
        return self.data.height + (self.dead.height if self.dead is not None else 0)


@dataclass
class StepOutput:
    """The result of a step on one batch.

    ``outputs`` maps port name to frame (most steps only have ``out``). Every input record is
    accounted for: emitted on a port, ``filtered`` by a user rule, returned in ``dead`` with a
    reason, or ``consumed`` into state by an aggregating step. A step that creates records
    (an explode, a SQL join) reports them as ``generated``, so that
    ``in + generated == out + filtered + dead + consumed`` always holds.
    """

    outputs: dict[str, pl.DataFrame] = field(default_factory=dict)
    filtered: int = 0
    dead: pl.DataFrame | None = None
    consumed: int = 0
    generated: int = 0

    @classmethod
    def reshaped(cls, frame: pl.DataFrame, records_in: int) -> StepOutput:
        """A result of a step whose output row count is free (SQL, per-batch functions):
        fewer rows than came in count as filtered, more as generated."""
        diff = records_in - frame.height
        return cls(outputs={MAIN_PORT: frame}, filtered=max(diff, 0), generated=max(-diff, 0))

    @classmethod
    def of(cls, frame: pl.DataFrame, filtered: int = 0) -> StepOutput:
        """A result with one frame on the main port."""
        return cls(outputs={MAIN_PORT: frame}, filtered=filtered)


class PartitionHandover(Protocol):
    """How a source read by a group of workers tells the engine its partitions moved.

    Both calls block until the engine has acted, so that a partition's state is
    checkpointed before another worker may take it, and restored before its records are
    processed here."""

    def assigned(self, source: str, partitions: list[str]) -> dict[str, JSON]:
        """This worker now owns ``partitions``: returns the checkpointed position of each
        one that has one (the source resumes there)."""
        ...

    def revoked(self, source: str, partitions: list[str]) -> None:
        """This worker gives ``partitions`` up: returns once everything read from them has
        been checkpointed (the source then drops what it read from them but did not hand
        over)."""
        ...


@dataclass(frozen=True)
class Context:
    """What a component may know about the run it is part of."""

    pipeline: str
    name: str
    base_dir: Path
    state_dir: Path
    stop_event: threading.Event
    scope: str = "main"
    """``main`` for normal runs; replays and tests get their own scope so outputs never clash."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Counters and gauges the component sets while it runs (``retries``,
    ``outage_seconds``; a source's ``lag_records`` and ``lag_seconds``); the engine shows
    them with the component's ``report()`` in the run summary, and the service and
    ``tideflow run --metrics-port`` export them."""
    partitions: PartitionHandover | None = None
    """Set for the sources of a group worker (``tideflow run --workers``): the source
    splits its input by partition and reports assignments through it."""

    @property
    def log(self) -> logging.Logger:
        """The logger for this component."""
        return logging.getLogger(f"tideflow.{self.pipeline}.{self.name}")

    def resolve(self, path: str) -> str:
        """Resolve a relative local path against the pipeline file's folder; URLs pass through."""
        if "://" in path or Path(path).is_absolute():
            return path
        return str(self.base_dir / path)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True as soon as the run is asked to stop."""
        return self.stop_event.wait(seconds)


class Component(ABC):
    """Common base: every component is built from its validated config model."""

    config_model: ClassVar[type[BaseModel]]

    def __init__(self, config: Any) -> None:
        self.config = config

    def report(self) -> dict[str, JSON] | None:
        """Figures of this component for the run summary, beside its record counts (the
        ``pii`` step's rules fired, an HTTP component's requests and retries). Stored with the
        run, so it is an audit trail. None (the default): nothing to add."""
        return None


class Source(Component):
    """Produces batches. Bounded sources return ``None`` when done."""

    bounded: bool = True
    partitioned: bool = False
    """True for sources a group of workers can split by partition (``Context.partitions``)."""

    @abstractmethod
    def open(self, ctx: Context, position: JSON | None) -> None:
        """Prepare to read, resuming after ``position`` when it is not None."""

    @abstractmethod
    def read_batch(self) -> SourceBatch | None:
        """Return the next batch; ``None`` when a bounded source is exhausted.

        An unbounded source with nothing to read returns an empty batch after a short wait,
        so the engine can notice a stop request.
        """

    def checkpointed(self, position: JSON | None) -> None:
        """Called after a checkpoint covering everything up to ``position`` is durable and
        the sinks have committed: the moment to acknowledge upstream (Kafka offsets, XACK,
        AMQP ack, MQTT PUBACK, a webhook's response). Never earlier, or a crash would lose
        acknowledged records. The default does nothing."""

    def close(self) -> None:
        """Release resources."""


class Step(Component):
    """Transforms batches. Stateless by default."""

    @classmethod
    def ports(cls, config: Any) -> tuple[str, ...]:
        """Names of the output ports; most steps have one, ``out``."""
        return (MAIN_PORT,)

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Prepare; ``state`` is the last snapshot when resuming a stateful step."""

    @abstractmethod
    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Transform one batch."""

    def finish(self) -> StepOutput:
        """Called once when every bounded source has ended: emit what state still holds."""
        return StepOutput()

    def idle(self, seconds: float) -> StepOutput:
        """Called while no record has arrived for ``seconds`` of wall time (about twice a
        second): a step that holds records back may let them go (a window's idle timeout).
        The default does nothing."""
        return StepOutput()

    def snapshot(self) -> JSON | None:
        """State to store at a checkpoint; None for stateless steps."""
        return None

    def close(self) -> None:
        """Release resources."""


class Sink(Component):
    """Writes batches; output becomes visible only through ``commit`` after a checkpoint.

    A sink whose target can store the pipeline's checkpoint in the same transaction as the
    data (``keeps_checkpoint``) gives exactly-once delivery without a two-phase commit: the
    engine attaches the encoded checkpoint before ``flush``, the sink commits both together,
    and on start the engine adopts the sink's stored checkpoint when it is newer than the
    state store's.
    """

    keeps_checkpoint: bool = False

    @abstractmethod
    def open(self, ctx: Context, pending: JSON | None) -> None:
        """Prepare to write. ``pending`` is the token of the last durable checkpoint: a sink
        must finish committing it (idempotently) and discard anything written after it."""

    @abstractmethod
    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """Write (or buffer) a batch. Return dead letters for rows the target rejected."""

    def flush(self) -> JSON | None:
        """Make everything written so far durable but not yet visible; return a commit token.

        Called at every checkpoint; an exception aborts the checkpoint.
        """
        return None

    def commit(self, token: JSON | None) -> None:
        """Make the data covered by ``token`` visible. Must be idempotent."""

    def end_of_input(self) -> None:
        """Every bounded source has ended and all records were written; the next checkpoint
        is the run's last (a sink that replaces its target swaps it in then)."""

    def stored_checkpoint(self, ctx: Context) -> bytes | None:
        """The checkpoint last committed with the data (``keeps_checkpoint`` sinks only);
        called before ``open``."""
        return None

    def attach_checkpoint(self, payload: bytes) -> None:
        """Commit ``payload`` (the encoded checkpoint) with the data at the next ``flush``
        (``keeps_checkpoint`` sinks only)."""

    def close(self) -> None:
        """Release resources."""


@runtime_checkable
class PlansSchema(Protocol):
    """A sink that manages its target's schema and can say what DDL it would run."""

    def plan_ddl(self, ctx: Context, schema: pl.Schema) -> list[str]:
        """The statements the sink would run for batches of ``schema``; runs none."""
        ...
