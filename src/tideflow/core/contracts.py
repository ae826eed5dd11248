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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import orjson
import polars as pl
from pydantic import BaseModel

from tideflow.core.delta import StateDelta

JSON = Any
"""A JSON-serialisable value (positions, commit tokens, small state)."""

Kind = Literal["source", "step", "sink"]
"""What a component is: read by the engine, run as a step, or written to."""
KINDS: tuple[Kind, ...] = ("source", "step", "sink")

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


HEAD_EXCERPT = 200
"""Bytes of a record too long to read that its dead letter keeps."""

MAX_RECORD_BYTES = 64 << 20
"""The default of every reader's ``max_record_bytes``: longer records are dead-lettered
unread, so one huge record cannot exhaust memory."""


UNREAD = "skipped unread"
"""How the reason of a record too long to read ends: its letter holds only where it was and
its first bytes, not a record a replay could send on."""


def too_long(size: int, limit: int) -> str:
    """Why a record of ``size`` bytes was not read."""
    return f"{size:,} bytes, longer than max_record_bytes ({limit:,}); {UNREAD}"


def long_record_letter(origin: str, size: int, head: bytes, limit: int) -> tuple[str, str]:
    """The dead letter (record, reason) of a record too long to read (``max_record_bytes``):
    where it was, its size and its first bytes, never the record itself."""
    record = orjson.dumps(
        {"origin": origin, "bytes": size, "head": head[:HEAD_EXCERPT].decode("utf-8", "replace")}
    ).decode()
    return record, f"{origin}: {too_long(size, limit)}"


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
    checkpoint: bool = False
    """Ask for a checkpoint after this batch: a bounded member of a group whose own
    partitions are read, waiting for the rest of the group, has the group see (commit) what
    it read now rather than at its end."""

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


@dataclass
class Staged:
    """What ``Sink.flush`` returns when the output of a checkpoint interval must be stored in
    the checkpoint itself: an *outbox*. The engine writes ``entries`` into the state store in
    the checkpoint's transaction, stores ``token`` like any sink token, and calls
    ``commit(token)`` afterwards. Whatever happens next, the state store holds the decided
    output until the sink marks it delivered (``Context.outbox``), so a sink whose target
    cannot hold output back until a commit (a Kafka broker whose aborted transactions may
    stay visible) can still deliver it exactly once."""

    token: JSON
    entries: Iterable[bytes]
    checkpoint: int | None = None
    """Set by the engine: the checkpoint id the entries are stored under (what
    ``Outbox.delivered`` takes once the sink has delivered them)."""


class Outbox(Protocol):
    """A sink's access to what it staged in earlier checkpoints (see :class:`Staged`)."""

    def checkpoints(self) -> list[int]:
        """Checkpoints whose staged entries are not marked delivered yet, oldest first."""
        ...

    def entries(self, checkpoint: int) -> Iterator[bytes]:
        """The entries staged for ``checkpoint``, in the order the sink gave them."""
        ...

    def delivered(self, checkpoint: int) -> None:
        """The entries of ``checkpoint`` (and of every earlier one) are delivered."""
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
    state_id: str = ""
    """A random id of the run's state store, fixed for its life: a name that must differ
    between deployments sharing an external system (a Kafka transactional id) includes it."""
    outbox: Outbox | None = None
    """Set for sinks: what the sink staged in the checkpoints (see :class:`Staged`)."""
    source_offsets: Callable[[], list[Any]] | None = None
    """Set for sinks: what each source would acknowledge for the checkpoint being taken
    (``Source.transaction_offsets``), for a sink that can commit it in the same
    transaction as its output (Kafka's ``send_offsets_to_transaction``)."""

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


C = TypeVar("C", bound=BaseModel)
"""The config model of a component: ``class MqttSource(Source[MqttSourceConfig])``."""


class Component(ABC, Generic[C]):
    """Common base: every component is built from its validated config model, a ``C``."""

    config_model: type[C]
    """The pydantic model the registry validates the component's settings with."""

    def __init__(self, config: C) -> None:
        self.config: C = config

    def report(self) -> dict[str, JSON] | None:
        """Figures of this component for the run summary, beside its record counts (the
        ``pii`` step's rules fired, an HTTP component's requests and retries). Stored with the
        run, so it is an audit trail. None (the default): nothing to add."""
        return None


class Source(Component[C]):
    """Produces batches. Bounded sources return ``None`` when done."""

    bounded: bool = True
    partitioned: bool = False
    """True for sources a group of workers can split by partition (``Context.partitions``)."""
    replays_without_state: bool = True
    """True when, without a stored position, the source reads its input from the start
    again (files, queries, generated records). False for sources whose upstream remembers
    what was consumed (committed group offsets, acknowledgements): losing the state store
    does not make them read anything twice."""

    @classmethod
    def declared_types(cls, config: Any) -> dict[str, Any]:
        """Column -> Polars dtype the source guarantees (``schema_overrides``), used to check
        expressions downstream when the pipeline is validated. Empty: nothing declared."""
        return {}

    @abstractmethod
    def open(self, ctx: Context, position: JSON | None) -> None:
        """Prepare to read, resuming after ``position`` when it is not None."""

    @abstractmethod
    def read_batch(self) -> SourceBatch | None:
        """Return the next batch; ``None`` when a bounded source is exhausted.

        An unbounded source with nothing to read returns an empty batch after a short wait,
        so the engine can notice a stop request.
        """

    def reparse(self, frame: pl.DataFrame, labels: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Apply this source's parsing settings (column types...) to records replayed from
        its dead letters, which come back as JSON (``tideflow deadletters replay``): the rows
        that now parse, and dead letters (``record``, ``reason``) for those that still do not;
        ``labels`` name each row in those reasons. The default: every row as it is."""
        return frame, empty_dead_letters()

    def expected_records(self) -> int | None:
        """How many records this run will read in all, once opened, when the source knows
        (a count, inline records, file metadata): the total and ETA of the progress line.
        None (the default): unknown, and the line shows only what was read."""
        return None

    def ready(self) -> bool:
        """True once the source reads all it is due to read: a member of a consumer group
        once the group has given it its share of the partitions (which may be none) and
        their state is restored. Asked from another thread (``/readyz`` of ``tideflow run
        --health-port``), so it must not block for long. The default: True."""
        return True

    def transaction_offsets(self, position: JSON | None) -> Any:
        """What this source would acknowledge for ``position``, in a form a sink on the same
        system can commit inside its own transaction (a Kafka source: its group's offsets
        and the consumer's group metadata). None (the default): nothing of the kind."""
        return None

    def checkpointed(self, position: JSON | None) -> None:
        """Called after a checkpoint covering everything up to ``position`` is durable and
        the sinks have committed: the moment to acknowledge upstream (Kafka offsets, XACK,
        AMQP ack, MQTT PUBACK, a webhook's response). Never earlier, or a crash would lose
        acknowledged records. The default does nothing."""

    def awaiting_ack(self) -> bool:
        """True while someone upstream waits for the acknowledgement of records this source
        has handed on (a webhook sender holding its post open, a broker's unacknowledged
        delivery). The engine then checkpoints as soon as ``checkpoint.min_interval``
        allows, instead of at the record and time thresholds, so the wait is about one
        checkpoint long (group commit). Called from the engine's thread while the source's
        thread reads: it must be cheap and thread-safe. The default: nobody waits."""
        return False

    def origin(self) -> tuple[str, str] | None:
        """After ``open``: the identity of the system this source's positions are offsets
        in, and a phrase naming it for people (an embedded log's id and its file; a Kafka
        cluster's id). The engine stores the identity with the pipeline's state and refuses
        to resume positions taken in another system. None (the default): positions that
        name what they point at (file paths) or none at all."""
        return None

    def close(self) -> None:
        """Release resources."""

    def notices(self) -> list[str]:
        """Sentences for the end of the run about what the source did not read and why
        (input read by earlier runs, files that changed since). The default: none."""
        return []

    def partition_keys(self) -> list[str] | None:
        """For a source read by a group of workers: the columns by whose values its records
        were put in partitions (as declared by the user and checked record by record), or
        None (the default) when nothing is known of how records were partitioned."""
        return None

    def incomplete(self) -> str | None:
        """After a bounded read ended: why it ended before it read all it was meant to (a
        bound such as ``max_wait`` ran out), as a sentence naming what is unread and how to
        read it; the run's status is then ``incomplete`` (exit code 3). The default: None."""
        return None


class Step(Component[C]):
    """Transforms batches. Stateless by default."""

    @classmethod
    def ports(cls, config: Any) -> tuple[str, ...]:
        """Names of the output ports; most steps have one, ``out``."""
        return (MAIN_PORT,)

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """Column -> dtype known after this step, given those ``known`` before it. The default
        forgets every type, which is always safe: unknown types are not checked."""
        return {}

    @classmethod
    def type_issues(cls, config: Any, known: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """(field path, problem) pairs for the step's expressions over the ``known`` input types."""
        return []

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

    def state_keys(self) -> list[str] | None:
        """For a step that keeps state: the columns whose values key it (records with the
        same values share state; an empty list: one state for all records), or None when
        the step cannot say. Group workers need every record of a key read by one worker,
        so the engine compares these with the source's partitioning. The default reads a
        ``keys`` setting."""
        keys = getattr(self.config, "keys", None)
        return [str(k) for k in keys] if isinstance(keys, list) else None

    def snapshot_changes(self) -> StateDelta | None:
        """Only what changed in the state since the previous :meth:`snapshot` or
        ``snapshot_changes`` call (each starts a new interval), for an incremental
        checkpoint; the store applies it to what it holds, so a restored step gets the full
        state in :meth:`open` as always. None (the default): the step cannot say, and the
        engine stores :meth:`snapshot`. The engine asks for a full snapshot now and then
        (compaction), and always for the first checkpoint of a run or of a partition."""
        return None

    @classmethod
    def bounded_input_only(cls, config: Any) -> tuple[str, str] | None:
        """When the step with ``config`` only makes sense if every source it reads from ends
        (it emits in ``finish``): the setting that makes it so and why. A pipeline with a
        source upstream that never ends is refused with that message, at that setting's
        line. None (the default): any input."""
        return None

    def close(self) -> None:
        """Release resources."""


@dataclass(frozen=True)
class ExistingOutput:
    """Output a sink committed in an earlier run, found while the state store knew nothing
    of the pipeline (see :meth:`Sink.committed_output`)."""

    found: str
    """What is there, e.g. ``3 committed files named part-*.parquet in /data/out``."""
    clearing: str | None
    """What :meth:`Sink.clear_output` would do (``delete those 3 files``); None when the
    sink cannot take its output back (messages already published)."""
    idempotent: bool = False
    """Writing the same records again leaves the output as it is (an upsert rewrites the
    same keys, a replace rebuilds the table): reading everything again costs time but
    duplicates nothing, so the run goes on, with a notice."""


class Sink(Component[C]):
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

    def committed_output(self, ctx: Context) -> ExistingOutput | None:
        """Output of this pipeline that the target already holds (its files, its table's
        rows, its topic's messages), or None. Called before ``open`` when the state store
        holds nothing of the pipeline: output without state means the state was lost, and a
        run would write its whole input a second time. Must be cheap (a listing, one query);
        the default, for sinks that cannot tell, is None."""
        return None

    def clear_output(self, ctx: Context) -> None:
        """Delete what :meth:`committed_output` found (``tideflow run --from-scratch``);
        called before ``open``. Sinks that cannot take output back do nothing."""

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
