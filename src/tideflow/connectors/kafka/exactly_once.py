"""Exactly-once into Kafka: a transactional outbox with read-back recovery.

The state store is the single decision point. While records arrive nothing is produced; the
messages wait in an :class:`~tideflow.connectors.kafka.outbox.OutboxBuffer`. At the checkpoint
they are stored *in the checkpoint* (``Staged``: the same state-store transaction as
positions, state and dead letters), with a manifest naming, per partition, an offset before
which none of them can lie. Then the checkpoint's messages are produced in one Kafka
transaction (with the consumed offsets of a Kafka source on the same cluster), committed, and
the outbox is marked delivered.

After a crash, or when a run finds an outbox not marked delivered, the producer's
``init_transactions`` fences every older instance (a zombie's later writes are refused) and
ends its open transaction; the topic is then read back with ``read_committed`` from the
manifest's offsets, and only the messages whose id is not visible are produced, in a new
transaction. A reader therefore sees each message once on real Kafka (which hides the aborted
transaction) and on tansu 0.6.0 (which shows it). See docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from tideflow.connectors.kafka.outbox import (
    MESSAGE_SCHEMA,
    Manifest,
    OutboxBuffer,
    decode_chunk,
)
from tideflow.connectors.kafka.producer import kafka_partitions
from tideflow.connectors.kafka.transactions import (
    KafkaTransactions,
    TransactionOffsets,
    same_cluster,
)
from tideflow.core.contracts import Outbox, Staged
from tideflow.core.faults import crash_point
from tideflow.errors import PipelineError

log = logging.getLogger("tideflow.kafka")


def producer_tag(transactional_id: str) -> str:
    """The short name of a producer in message ids (64 bits of its transactional id)."""
    return hashlib.sha256(transactional_id.encode()).hexdigest()[:16]


def message_ids(tag: str, transaction: int, first: int, count: int) -> pl.Series:
    """The id header values ``tag:transaction:first..first+count-1``, built column-wise."""
    return pl.select(
        pl.concat_str(
            pl.lit(f"{tag}:{transaction}:"),
            pl.int_range(first, first + count, dtype=pl.Int64).cast(pl.String),
        ).alias("id")
    ).to_series()


class ExactlyOnceProducer:
    """A topic sink's backend that delivers each checkpoint's messages exactly once to
    ``read_committed`` readers (the ``Producer`` protocol of :mod:`tideflow.topics.backends`)."""

    def __init__(
        self,
        bootstrap: str,
        options: dict[str, Any],
        create_partitions: int,
        transactional_id: str,
        outbox: Outbox,
        source_offsets: Callable[[], list[Any]] | None,
        spill_dir: Path,
        memory_bytes: int,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options
        self.create_partitions = create_partitions
        self.transactional_id = transactional_id
        self.tag = producer_tag(transactional_id)
        self.outbox = outbox
        self.source_offsets = source_offsets
        self.buffer = OutboxBuffer(spill_dir, memory_bytes)
        # Wait for the broker as long as it waits for a transaction (librdkafka's
        # transaction.timeout.ms, 60 s by default) before calling a step failed.
        timeout = float(options.get("transaction.timeout.ms", 60_000)) / 1000
        self.txn = KafkaTransactions(bootstrap, options, transactional_id, timeout)
        self.transaction = 0
        self._topic: str | None = None
        self._known: dict[str, int] = {}
        self._staged: tuple[Staged, Manifest] | None = None

    def partitions(self, topic: str) -> int:
        """Partition count (the topic is created if missing)."""
        if topic not in self._known:
            self._known[topic] = kafka_partitions(
                self.txn.producer, self.bootstrap, self.options, topic, self.create_partitions
            )
        return self._known[topic]

    def send(
        self,
        topic: str,
        partitions: pl.Series,
        keys: pl.Series,
        values: pl.Series,
        headers: pl.Series | None,
    ) -> None:
        """Keep the messages for the checkpoint (nothing is produced yet)."""
        if self._topic is None:
            self._topic = topic
        elif topic != self._topic:
            raise PipelineError(
                f"an exactly-once Kafka sink writes one topic; got {topic!r} after {self._topic!r}"
            )
        if self._staged is not None:
            raise PipelineError("records written between a checkpoint's flush and its commit")
        height = len(values)
        frame = pl.DataFrame(
            {
                "partition": partitions.cast(pl.Int32),
                "key": keys.cast(pl.Binary),
                "value": values.cast(pl.Binary),
                "headers": headers.cast(pl.String)
                if headers is not None
                else pl.Series("headers", [None] * height, dtype=pl.String),
            },
            schema=MESSAGE_SCHEMA,
        )
        self.buffer.add(frame)

    def flush(self) -> Any:
        """Stage the interval's messages for the checkpoint: the manifest, then the chunks."""
        if self.buffer.messages == 0 or self._topic is None:
            return {"transaction": self.transaction}
        self.transaction += 1
        manifest = Manifest(
            topic=self._topic,
            tag=self.tag,
            transaction=self.transaction,
            messages=self.buffer.messages,
            starts=self.txn.end_offsets(self._topic, self.partitions(self._topic)),
        )
        staged = Staged(
            token={"transaction": self.transaction},
            entries=itertools.chain([manifest.encode()], self.buffer.chunks()),
        )
        self._staged = (staged, manifest)
        return staged

    def commit(self, token: Any) -> None:
        """Produce the stored checkpoint's messages in one transaction, with the consumed
        offsets of a Kafka source on this cluster; then mark the outbox delivered."""
        if self._staged is None:
            return
        staged, manifest = self._staged
        if staged.checkpoint is None:
            raise PipelineError("the engine did not store the exactly-once sink's outbox")
        crash_point("kafka_sink.before_produce")
        self.txn.begin()
        sequence = 0
        for frame in self.buffer.frames():
            ids = message_ids(self.tag, manifest.transaction, sequence, frame.height)
            self.txn.produce(manifest.topic, frame, ids)
            sequence += frame.height
        self.txn.flush()
        crash_point("kafka_sink.after_produce")
        for offsets in self.source_offsets() if self.source_offsets else []:
            if isinstance(offsets, TransactionOffsets) and same_cluster(
                offsets.bootstrap, self.bootstrap
            ):
                self.txn.send_offsets(offsets)
        self.txn.commit()
        crash_point("kafka_sink.after_commit")
        self.outbox.delivered(staged.checkpoint)
        self.buffer.clear()
        self._staged = None

    def recover(self, pending: Any) -> None:
        """Deliver every outbox a checkpoint stored and no run marked delivered: read the
        topic back and produce only what a ``read_committed`` reader does not see."""
        if isinstance(pending, dict):
            self.transaction = int(pending.get("transaction", 0))
        for checkpoint in self.outbox.checkpoints():
            self._deliver_pending(checkpoint)

    def _deliver_pending(self, checkpoint: int) -> None:
        entries = iter(self.outbox.entries(checkpoint))
        first = next(entries, None)
        if first is None:
            return
        manifest = Manifest.decode(first)
        self.transaction = max(self.transaction, manifest.transaction)
        seen = self.txn.read_back(
            manifest.topic, manifest.starts, manifest.tag, manifest.transaction
        )
        missing = manifest.messages - len(seen)
        if missing:
            self.txn.begin()
            sequence = 0
            for data in entries:
                frame = decode_chunk(data)
                ids = message_ids(manifest.tag, manifest.transaction, sequence, frame.height)
                numbers = pl.int_range(sequence, sequence + frame.height, eager=True)
                keep = ~numbers.is_in(pl.Series(list(seen), dtype=pl.Int64))
                self.txn.produce(manifest.topic, frame.filter(keep), ids.filter(keep))
                sequence += frame.height
            self.txn.flush()
            crash_point("kafka_sink.recovery_after_produce")
            self.txn.commit()
        log.info(
            "exactly-once sink: checkpoint %d's transaction %d recovered: %d of %d messages "
            "were visible, %d produced again",
            checkpoint,
            manifest.transaction,
            len(seen),
            manifest.messages,
            missing,
        )
        self.outbox.delivered(checkpoint)

    def close(self) -> None:
        """Release the producer and any spill files."""
        self.buffer.clear()
        self.txn.close()
