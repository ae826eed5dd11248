"""A Kafka transactional producer for one ``transactional.id``, and the read-back that tells
which of its messages a ``read_committed`` reader sees.

Why a read-back: a checkpoint's messages are produced in one transaction after the checkpoint
is stored; after a crash the new producer's ``init_transactions`` fences the old one and ends
its open transaction. Real Kafka hides an aborted transaction's messages from
``read_committed`` readers; tansu 0.6.0 shows them (its fetch responses never list aborted
transactions). Reading the topic back with ``read_committed`` from an offset taken before the
transaction began, and producing only the messages whose id header is not there, is exact on
both: whatever a reader sees is never produced again, whatever it does not see is.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import polars as pl

from tideflow.connectors.kafka.client import confluent, kafka_config
from tideflow.connectors.kafka.outbox import ID_HEADER, new_reader_group, parse_id
from tideflow.errors import PipelineError
from tideflow.secrets import redact
from tideflow.topics.codec import Offsets, split_tp

log = logging.getLogger("tideflow.kafka")

PRODUCER_ONLY = (
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.type",
    "delivery.timeout.ms",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "request.required.acks",
    "retries",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
    "transactional.id",
)
"""librdkafka settings a read-back consumer must not be given (it would warn about each)."""


class FencedProducerError(PipelineError):
    """Another instance took this producer's ``transactional.id`` over."""


@dataclass(frozen=True)
class TransactionOffsets:
    """What a Kafka source acknowledges for a checkpoint, for a sink on the same cluster
    to commit in its transaction: the group's next offsets and the consumer's group
    metadata (``send_offsets_to_transaction``)."""

    bootstrap: str
    offsets: Offsets
    group_metadata: Any


def same_cluster(a: str, b: str) -> bool:
    """True when two bootstrap lists name the same brokers (order and scheme aside)."""

    def norm(value: str) -> set[str]:
        return {s.strip() for s in value.removeprefix("kafka://").split(",") if s.strip()}

    return norm(a) == norm(b)


def _fenced(err: Any, ck: Any) -> bool:
    code = err.code()
    return bool(
        err.fatal()
        or code
        in (
            ck.KafkaError.PRODUCER_FENCED,
            ck.KafkaError.INVALID_PRODUCER_EPOCH,
            ck.KafkaError._FENCED,
        )
    )


class KafkaTransactions:
    """A transactional producer; creating it fences every older producer of the same id
    and ends (commits if decided, else aborts) the transaction one of them left open."""

    def __init__(
        self,
        bootstrap: str,
        options: dict[str, Any],
        transactional_id: str,
        timeout: float = 60.0,
    ) -> None:
        ck = confluent()
        self._ck = ck
        self.bootstrap = bootstrap
        self.options = options
        self.transactional_id = transactional_id
        self.timeout = timeout
        config = {
            **kafka_config(bootstrap, options),
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": options.get("linger.ms", 5),
            # A checkpoint's messages are handed over at once: room for a whole one (the
            # default, 100,000, made the producing loop wait for deliveries).
            "queue.buffering.max.messages": options.get("queue.buffering.max.messages", 1_000_000),
        }
        self.producer = ck.Producer(config)
        self._call("start", lambda: self.producer.init_transactions(timeout))

    def _call(self, what: str, action: Any) -> Any:
        try:
            return action()
        except self._ck.KafkaException as exc:
            err = exc.args[0]
            if _fenced(err, self._ck):
                raise FencedProducerError(
                    f"kafka producer {self.transactional_id!r} was fenced: another instance "
                    f"of this pipeline's sink took its transactional id over ({err.str()}); "
                    "this one stops without committing"
                ) from exc
            raise PipelineError(
                redact(f"kafka transaction ({what}) of {self.transactional_id!r} failed: {err}")
            ) from exc

    # -- producing ----------------------------------------------------------------------

    def begin(self) -> None:
        """Open a transaction."""
        self._call("begin", self.producer.begin_transaction)

    def produce(self, topic: str, frame: pl.DataFrame, ids: pl.Series) -> None:
        """Queue ``frame``'s messages (columns of ``outbox.MESSAGE_SCHEMA``), each with its
        id header, in the open transaction.

        No delivery callback: a transaction's commit fails if any of its messages failed.
        The cyclic garbage collector is paused meanwhile: a header list per message is a
        million small containers per checkpoint, and each collection would walk them all
        (it took as long as the producing)."""
        produce = self.producer.produce
        user_headers = frame.get_column("headers")
        plain = user_headers.null_count() == frame.height
        if not plain:
            import orjson
        collecting = gc.isenabled()
        gc.disable()
        try:
            for part, key, value, ident, extra in zip(
                frame.get_column("partition").to_list(),
                frame.get_column("key").to_list(),
                frame.get_column("value").to_list(),
                ids.to_list(),
                repeat(None) if plain else user_headers.to_list(),
                strict=False,
            ):
                headers = [(ID_HEADER, ident)]
                if extra:
                    headers[:0] = orjson.loads(extra).items()
                while True:
                    try:
                        produce(topic, value=value, key=key, partition=part, headers=headers)
                        break
                    except BufferError:
                        self.producer.poll(0.1)  # the local queue is full: let it drain
        finally:
            if collecting:
                gc.enable()
        self.producer.poll(0)

    def flush(self) -> None:
        """Wait until every queued message reached the broker (still uncommitted)."""
        remaining = self.producer.flush(self.timeout)
        if remaining:
            raise PipelineError(
                f"kafka producer {self.transactional_id!r}: {remaining} message(s) not "
                f"delivered in {self.timeout:.0f} s"
            )

    def send_offsets(self, offsets: TransactionOffsets) -> None:
        """Commit a source's group offsets with this transaction."""
        parts = [
            self._ck.TopicPartition(topic, part, offset)
            for topic, part, offset in ((*split_tp(k), o) for k, o in offsets.offsets.items())
        ]
        if parts:
            self._call(
                "send offsets",
                lambda: self.producer.send_offsets_to_transaction(
                    parts, offsets.group_metadata, self.timeout
                ),
            )

    def commit(self) -> None:
        """Commit the open transaction (it flushes first)."""
        self._call("commit", lambda: self.producer.commit_transaction(self.timeout))

    def close(self) -> None:
        """Release the producer; an open transaction is left for the next instance's
        ``init_transactions`` to end (aborting it here would show its messages on tansu)."""
        self.producer.flush(0)

    # -- offsets and read-back ----------------------------------------------------------

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        """An offset per partition at or before the end of the log now (read-uncommitted
        ends; tansu may report less than its true end, which is still a valid start for a
        read-back)."""
        ck = self._ck
        admin = self._admin()
        specs = {
            ck.TopicPartition(topic, p): ck.admin.OffsetSpec.latest() for p in range(partitions)
        }
        try:
            futures = admin.list_offsets(
                specs, isolation_level=ck.IsolationLevel.READ_UNCOMMITTED, request_timeout=30
            )
            return {tp.partition: max(int(f.result().offset), 0) for tp, f in futures.items()}
        except ck.KafkaException as exc:
            raise PipelineError(
                redact(f"kafka: cannot read the end offsets of {topic!r}: {exc}")
            ) from exc

    def _admin(self) -> Any:
        if not hasattr(self, "_admin_client"):
            config = {
                k: v
                for k, v in kafka_config(self.bootstrap, self.options).items()
                if k not in PRODUCER_ONLY
            }
            self._admin_client = self._ck.admin.AdminClient(config)
        return self._admin_client

    def read_back(self, topic: str, starts: dict[int, int], tag: str, transaction: int) -> set[int]:
        """Sequence numbers of ``tag``'s ``transaction`` that a ``read_committed`` reader
        sees in ``topic``, reading every partition from ``starts`` to its end.

        The end is the partition's high watermark as the first fetch after this producer
        was created reports it: every message of an earlier instance lies below it. A
        partition is done when reading reaches that offset; until then the last stable
        offset may hold it (another producer's open transaction), which is waited for up
        to ``timeout`` seconds per stall."""
        ck = self._ck
        config = {
            **{
                k: v
                for k, v in kafka_config(self.bootstrap, self.options).items()
                if k not in PRODUCER_ONLY
            },
            "group.id": new_reader_group(),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
        consumer = ck.Consumer(config)
        seen: set[int] = set()
        try:
            consumer.assign([ck.TopicPartition(topic, p, o) for p, o in starts.items()])
            targets: dict[int, int] = {}
            reached: dict[int, int] = dict(starts)
            waiting = set(starts)
            progress = time.monotonic()
            while waiting:
                for message in consumer.consume(10_000, 0.5):
                    err = message.error()
                    part = message.partition()
                    if err is not None:
                        if err.code() != ck.KafkaError._PARTITION_EOF:
                            raise PipelineError(redact(f"kafka read-back of {topic!r}: {err}"))
                        reached[part] = max(reached[part], message.offset())
                        continue
                    reached[part] = max(reached[part], message.offset() + 1)
                    for name, value in message.headers() or ():
                        if name == ID_HEADER:
                            sequence = parse_id(value, tag, transaction)
                            if sequence is not None:
                                seen.add(sequence)
                    progress = time.monotonic()
                for part in list(waiting):
                    if part not in targets:
                        _, high = consumer.get_watermark_offsets(
                            ck.TopicPartition(topic, part), cached=True
                        )
                        if high >= 0:
                            targets[part] = high
                    if part in targets and reached[part] >= targets[part]:
                        waiting.discard(part)
                        progress = time.monotonic()
                if waiting and time.monotonic() - progress > self.timeout:
                    stuck = {p: (reached[p], targets.get(p)) for p in sorted(waiting)}
                    raise PipelineError(
                        f"kafka read-back of {topic!r} made no progress for "
                        f"{self.timeout:.0f} s (partition: (read to, end) {stuck}): a "
                        "transaction of another producer holds the last stable offset (a "
                        "crashed exactly-once pipeline writing this topic that was not "
                        "started again?)"
                    )
        finally:
            consumer.close()
        return seen
