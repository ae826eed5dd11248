"""Topic administration on the backend a broker setting names: ``tideflow topics``, the
Stream API and the ``topic`` sink's check for existing output use :class:`Admin`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tideflow.connectors.kafka.admin import KafkaAdmin
from tideflow.topics.admin import EmbeddedAdmin, PartitionLag, TopicAdmin
from tideflow.topics.codec import RawMessages


class Admin:
    """Topic operations on one backend: ``bootstrap`` for Kafka, else the embedded log in
    ``state_dir``."""

    def __init__(self, bootstrap: str | None, state_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.state_dir = state_dir
        self.backend: TopicAdmin = (
            EmbeddedAdmin(state_dir) if bootstrap is None else KafkaAdmin(bootstrap)
        )

    def close(self) -> None:
        """Release the Kafka producer that :meth:`produce` keeps between calls."""
        self.backend.close()

    def names(self) -> list[str]:
        """Topic names."""
        return self.backend.names()

    def create(self, topic: str, partitions: int, retention_ms: int | None = None) -> None:
        """Create a topic (an error if it exists)."""
        self.backend.create(topic, partitions, retention_ms)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset of every partition (on Kafka: the high watermark, as a fetch response
        reports it; see :meth:`KafkaAdmin.end_offsets`)."""
        return self.backend.end_offsets(topic)

    def lag(self, topic: str, group: str) -> list[PartitionLag]:
        """The group's committed offset and the end of each partition."""
        return self.backend.lag(topic, group)

    def ensure(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` unless it exists (then it is left alone)."""
        self.backend.ensure(topic, partitions)

    def produce(self, topic: str, values: list[bytes], key: str | None = None) -> int:
        """Append messages, visible at once; returns how many.

        On the embedded log the messages are appended in one SQLite transaction (all or none;
        no producer transaction left pending if the process dies). On Kafka the call returns
        once the broker acknowledged every message (idempotent producer, ``acks=all``) and
        raises if any delivery failed."""
        return self.backend.produce(topic, values, key)

    def read_all(self, topic: str) -> list[bytes | None]:
        """Every message value ``topic`` holds now, partition by partition in offset order.

        Reads up to the end offsets taken at the call (no consumer group, nothing committed);
        the end is decided by those offsets, not by a quiet period."""
        return self.backend.read_all(topic)

    def tail(self, topic: str, count: int, follow: bool) -> Iterator[RawMessages]:
        """The last ``count`` messages of each partition, then new ones if ``follow``."""
        return self.backend.tail(topic, count, follow)
