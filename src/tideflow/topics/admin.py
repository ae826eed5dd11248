"""Topic administration for ``tideflow topics`` and the Stream API: what every backend offers
(:class:`TopicAdmin`), and the embedded log's implementation. Kafka's is
:class:`tideflow.connectors.kafka.admin.KafkaAdmin`; ``tideflow.connectors.topic.admin.Admin``
picks one of them from the broker setting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import polars as pl

from tideflow.errors import ConfigError
from tideflow.topics.codec import RawMessages
from tideflow.topics.embedded import EmbeddedLog, open_log
from tideflow.topics.names import topic_name_problem
from tideflow.topics.partitioner import partitions_of


def checked_topic(topic: str) -> str:
    """``topic``, if it is a valid topic name on both backends; else a ``ConfigError``."""
    problem = topic_name_problem(topic)
    if problem is not None:
        raise ConfigError(problem)
    return topic


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


class TopicAdmin(Protocol):
    """Topic operations on one backend."""

    def close(self) -> None:
        """Release what the backend keeps between calls."""

    def names(self) -> list[str]:
        """Topic names."""

    def create(self, topic: str, partitions: int, retention_ms: int | None = None) -> None:
        """Create a topic (an error if it exists)."""

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset of every partition."""

    def lag(self, topic: str, group: str) -> list[PartitionLag]:
        """The group's committed offset and the end of each partition."""

    def ensure(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` unless it exists (then it is left alone)."""

    def produce(self, topic: str, values: list[bytes], key: str | None = None) -> int:
        """Append messages, visible at once; returns how many."""

    def read_all(self, topic: str) -> list[bytes | None]:
        """Every message value ``topic`` holds now, partition by partition in offset order."""

    def tail(self, topic: str, count: int, follow: bool) -> Iterator[RawMessages]:
        """The last ``count`` messages of each partition, then new ones if ``follow``."""


class EmbeddedAdmin:
    """Topic operations on the embedded log in ``state_dir`` (``topics.db``)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def close(self) -> None:
        """Nothing to release: the log handle is shared."""

    def _log(self) -> EmbeddedLog:
        return open_log(self.state_dir / "topics.db")

    def names(self) -> list[str]:
        """Topic names."""
        return list(self._log().topics())

    def create(self, topic: str, partitions: int, retention_ms: int | None = None) -> None:
        """Create a topic (an error if it exists)."""
        checked_topic(topic)
        self._log().create_topic(topic, partitions, retention_ms=retention_ms, exist_ok=False)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset of every partition."""
        return dict(self._log().describe(topic).end_offsets)

    def lag(self, topic: str, group: str) -> list[PartitionLag]:
        """The group's committed offset and the end of each partition."""
        ends = self.end_offsets(topic)
        committed: dict[int, int] = self._log().committed(group, topic)
        return [PartitionLag(topic, p, committed.get(p), e) for p, e in sorted(ends.items())]

    def ensure(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` unless it exists (then it is left alone)."""
        checked_topic(topic)
        self._log().create_topic(topic, partitions)

    def produce(self, topic: str, values: list[bytes], key: str | None = None) -> int:
        """Append messages in one SQLite transaction (all or none; no producer transaction
        left pending if the process dies), visible at once; returns how many."""
        checked_topic(topic)
        keys = pl.Series("k", [key.encode() if key else None] * len(values), dtype=pl.Binary)
        vals = pl.Series("v", values, dtype=pl.Binary)
        if not values:
            return 0
        log = self._log()
        log.create_topic(topic)
        parts = log.describe(topic).partitions
        log.append(topic, partitions_of(keys, parts), keys, vals)
        return len(values)

    def read_all(self, topic: str) -> list[bytes | None]:
        """Every message value ``topic`` holds now, partition by partition in offset order,
        up to the end offsets taken at the call (the end is decided by those offsets, not by
        a quiet period)."""
        ends = self.end_offsets(checked_topic(topic))
        values: list[bytes | None] = []
        log = self._log()
        for part, end in sorted(ends.items()):
            offset = log.describe(topic).start_offsets[part]
            while offset < end:
                got = log.read(topic, part, offset, 10_000)
                if not len(got):
                    break  # the rest is an open producer transaction: not visible yet
                values.extend(got.values)
                offset = got.offsets[-1] + 1
        return values

    def tail(self, topic: str, count: int, follow: bool) -> Iterator[RawMessages]:
        """The last ``count`` messages of each partition, then new ones if ``follow``."""
        ends = self.end_offsets(topic)
        start = {p: max(0, e - count) for p, e in ends.items()}
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
