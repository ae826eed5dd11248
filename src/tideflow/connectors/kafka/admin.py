"""Topic administration on Kafka, for ``tideflow topics`` and the Stream API (the Kafka
implementation of :class:`tideflow.topics.admin.TopicAdmin`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import polars as pl

from tideflow.connectors.kafka.client import confluent
from tideflow.connectors.kafka.consumer import kafka_messages
from tideflow.connectors.kafka.producer import KafkaProducer
from tideflow.errors import PipelineError, TransientError
from tideflow.topics.admin import PartitionLag, checked_topic
from tideflow.topics.codec import RawMessages
from tideflow.topics.partitioner import partitions_of


class KafkaAdmin:
    """Topic operations on the Kafka cluster at ``bootstrap``."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: KafkaProducer | None = None

    def close(self) -> None:
        """Release the producer that :meth:`produce` keeps between calls."""
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    def _admin(self) -> Any:
        ck = confluent()
        return ck.admin.AdminClient({"bootstrap.servers": self.bootstrap})

    def names(self) -> list[str]:
        """Topic names (Kafka's internal ``__`` topics left out)."""
        meta = self._admin().list_topics(timeout=30)
        return sorted(t for t in meta.topics if not t.startswith("__"))

    def create(self, topic: str, partitions: int, retention_ms: int | None = None) -> None:
        """Create a topic (an error if it exists)."""
        checked_topic(topic)
        ck = confluent()
        config = {"retention.ms": str(retention_ms)} if retention_ms else {}
        admin = self._admin()  # must outlive the future, or the request is cancelled
        futures = admin.create_topics(
            [ck.admin.NewTopic(topic, num_partitions=partitions, config=config)]
        )
        try:
            futures[topic].result(30)
        except ck.KafkaException as exc:
            raise PipelineError(f"cannot create topic {topic!r}: {exc}") from exc

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset of every partition: the high watermark, as a fetch response reports it.

        *Why a fetch, not ``ListOffsets``*: tansu 0.6.0 answers a "latest offset" query
        with the base offset of the partition's last record batch plus one (3 messages
        produced in one batch: 1, not 3), while its fetch responses carry the true high
        watermark. Reading from the reported end makes the broker send one fetch response,
        whose high watermark librdkafka caches; on Kafka both agree."""
        ck = confluent()
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "tideflow-admin",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            meta = consumer.list_topics(topic, timeout=30)
            if topic not in meta.topics or meta.topics[topic].error is not None:
                raise PipelineError(f"topic {topic!r} does not exist")
            parts = sorted(meta.topics[topic].partitions)
            consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_END) for p in parts])
            ends: dict[int, int] = {}
            deadline = time.monotonic() + 30
            while len(ends) < len(parts):
                if time.monotonic() > deadline:
                    missing = ", ".join(str(p) for p in parts if p not in ends)
                    raise TransientError(
                        f"topic {topic!r}: no fetch response for partition(s) {missing} in 30 s"
                    )
                consumer.consume(1000, 0.1)  # messages are ignored: only the watermarks count
                for part in parts:
                    marks = consumer.get_watermark_offsets(
                        ck.TopicPartition(topic, part), cached=True
                    )
                    if marks is not None and marks[1] >= 0:
                        ends[part] = int(marks[1])
            return ends
        finally:
            consumer.close()

    def lag(self, topic: str, group: str) -> list[PartitionLag]:
        """The group's committed offset and the end of each partition."""
        ends = self.end_offsets(topic)
        ck = confluent()
        consumer = ck.Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            parts = consumer.committed([ck.TopicPartition(topic, p) for p in ends], timeout=30)
            committed = {p.partition: p.offset for p in parts if p.offset >= 0}
        finally:
            consumer.close()
        return [PartitionLag(topic, p, committed.get(p), e) for p, e in sorted(ends.items())]

    def ensure(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` unless it exists (then it is left alone)."""
        checked_topic(topic)
        if partitions == 1:
            self._kafka_producer().partitions(topic)  # creates a missing topic
            return
        producer = KafkaProducer(self.bootstrap, {}, partitions)
        try:
            producer.partitions(topic)
        finally:
            producer.close()

    def _kafka_producer(self) -> KafkaProducer:
        """One producer for the admin's life: connecting costs a quarter of a second."""
        if self._producer is None:
            self._producer = KafkaProducer(self.bootstrap, {}, 1)
        return self._producer

    def produce(self, topic: str, values: list[bytes], key: str | None = None) -> int:
        """Append messages, visible at once; returns how many.

        The call returns once the broker acknowledged every message (idempotent producer,
        ``acks=all``) and raises if any delivery failed."""
        checked_topic(topic)
        keys = pl.Series("k", [key.encode() if key else None] * len(values), dtype=pl.Binary)
        vals = pl.Series("v", values, dtype=pl.Binary)
        if not values:
            return 0
        producer = self._kafka_producer()
        parts = producer.partitions(topic)
        producer.send(topic, partitions_of(keys, parts), keys, vals, None)
        producer.commit(producer.flush())
        return len(values)

    def read_all(self, topic: str) -> list[bytes | None]:
        """Every message value ``topic`` holds now, partition by partition in offset order.

        Reads up to the end offsets taken at the call (no consumer group, nothing committed);
        the end is decided by those offsets, not by a quiet period."""
        ends = self.end_offsets(checked_topic(topic))
        values: list[bytes | None] = []
        ck = confluent()
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "tideflow-read",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            for part, end in sorted(ends.items()):
                if end <= 0:
                    continue
                partition = ck.TopicPartition(topic, part, ck.OFFSET_BEGINNING)
                consumer.assign([partition])
                while True:
                    messages = consumer.consume(1000, 1.0)
                    eof = any(
                        m.error() is not None and m.error().code() == ck.KafkaError._PARTITION_EOF
                        for m in messages
                    )
                    got = kafka_messages(messages)
                    values.extend(
                        v for o, v in zip(got.offsets, got.values, strict=True) if o < end
                    )
                    # The position moves past transaction markers, which are never delivered.
                    [where] = consumer.position([ck.TopicPartition(topic, part)])
                    if where.offset >= end or eof:
                        break
            return values
        finally:
            consumer.close()

    def tail(self, topic: str, count: int, follow: bool) -> Iterator[RawMessages]:
        """The last ``count`` messages of each partition, then new ones if ``follow``."""
        ends = self.end_offsets(topic)
        start = {p: max(0, e - count) for p, e in ends.items()}
        # A plain assignment at chosen offsets: no group to join, nothing committed.
        ck = confluent()
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "tideflow-tail",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([ck.TopicPartition(topic, p, o) for p, o in start.items()])
        try:
            idle = 0
            while follow or idle < 3:
                got = kafka_messages(consumer.consume(1000, 1.0))
                idle = 0 if len(got) else idle + 1
                if len(got):
                    yield got
        finally:
            consumer.close()
