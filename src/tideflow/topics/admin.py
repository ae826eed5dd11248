"""Topic administration for ``tideflow topics``, on the embedded log or Kafka."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tideflow.errors import PipelineError
from tideflow.topics.backends import EmbeddedProducer, KafkaProducer, _confluent, kafka_messages
from tideflow.topics.codec import RawMessages
from tideflow.topics.embedded import open_log
from tideflow.topics.partitioner import partitions_of


@dataclass(frozen=True)
class PartitionLag:
    """How far a group is behind on one partition."""

    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        """Messages not yet committed by the group."""
        return self.end - (self.committed or 0)


class Admin:
    """Topic operations on one backend: ``bootstrap`` for Kafka, else the log in
    ``state_dir``."""

    def __init__(self, bootstrap: str | None, state_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.state_dir = state_dir

    def _log(self) -> Any:
        return open_log(self.state_dir / "topics.db")

    def _admin(self) -> Any:
        ck = _confluent()
        return ck.admin.AdminClient({"bootstrap.servers": self.bootstrap})

    def names(self) -> list[str]:
        """Topic names."""
        if self.bootstrap is None:
            return list(self._log().topics())
        meta = self._admin().list_topics(timeout=30)
        return sorted(t for t in meta.topics if not t.startswith("__"))

    def create(self, topic: str, partitions: int, retention_ms: int | None = None) -> None:
        """Create a topic (an error if it exists)."""
        if self.bootstrap is None:
            self._log().create_topic(topic, partitions, retention_ms=retention_ms, exist_ok=False)
            return
        ck = _confluent()
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
        """Next offset of every partition."""
        if self.bootstrap is None:
            return dict(self._log().describe(topic).end_offsets)
        ck = _confluent()
        consumer = ck.Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tideflow-admin"})
        try:
            meta = consumer.list_topics(topic, timeout=30)
            if topic not in meta.topics or meta.topics[topic].error is not None:
                raise PipelineError(f"topic {topic!r} does not exist")
            ends = {}
            for part in meta.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(ck.TopicPartition(topic, part), timeout=30)
                ends[part] = high
            return ends
        finally:
            consumer.close()

    def lag(self, topic: str, group: str) -> list[PartitionLag]:
        """The group's committed offset and the end of each partition."""
        ends = self.end_offsets(topic)
        if self.bootstrap is None:
            committed: dict[int, int] = self._log().committed(group, topic)
        else:
            ck = _confluent()
            consumer = ck.Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
            try:
                parts = consumer.committed([ck.TopicPartition(topic, p) for p in ends], timeout=30)
                committed = {p.partition: p.offset for p in parts if p.offset >= 0}
            finally:
                consumer.close()
        return [PartitionLag(topic, p, committed.get(p), e) for p, e in sorted(ends.items())]

    def produce(self, topic: str, values: list[bytes], key: str | None = None) -> int:
        """Append messages (visible at once); returns how many."""
        keys = pl.Series("k", [key.encode() if key else None] * len(values), dtype=pl.Binary)
        vals = pl.Series("v", values, dtype=pl.Binary)
        if self.bootstrap is None:
            producer: Any = EmbeddedProducer(self._log(), "tideflow-cli", 1)
        else:
            producer = KafkaProducer(self.bootstrap, {}, 1)
        partitions = producer.partitions(topic)
        producer.send(topic, partitions_of(keys, partitions), keys, vals, None)
        producer.commit(producer.flush())
        producer.close()
        return len(values)

    def tail(self, topic: str, count: int, follow: bool) -> Iterator[RawMessages]:
        """The last ``count`` messages of each partition, then new ones if ``follow``."""
        ends = self.end_offsets(topic)
        start = {p: max(0, e - count) for p, e in ends.items()}
        if self.bootstrap is None:
            log = self._log()
            while True:
                got_any = False
                for part in sorted(start):
                    got = log.read(topic, part, start[part], 1000)
                    if len(got):
                        start[part] = got.offsets[-1] + 1
                        got_any = True
                        yield got
                if not follow:
                    return
                if not got_any:
                    time.sleep(0.2)
        else:
            # A plain assignment at chosen offsets: no group to join, nothing committed.
            ck = _confluent()
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
