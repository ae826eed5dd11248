"""The ``topic`` source: a consumer group member on the embedded log or on Kafka (see
:mod:`tideflow.connectors.topic`)."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any

import polars as pl

from tideflow.connectors.kafka.consumer import KafkaConsumer
from tideflow.connectors.kafka.transactions import TransactionOffsets
from tideflow.connectors.topic.settings import (
    PartitionedBy,
    TopicSourceConfig,
    log_path,
    resolve_broker,
)
from tideflow.core.contracts import (
    Context,
    PartitionHandover,
    Source,
    SourceBatch,
    long_record_letter,
    raw_dead_letters,
)
from tideflow.errors import PartitioningError, PipelineError
from tideflow.registry import component
from tideflow.secrets import redact
from tideflow.topics.backends import Consumer, EmbeddedConsumer
from tideflow.topics.codec import (
    Offsets,
    RawMessages,
    decode_values,
    split_tp,
    tp,
)
from tideflow.topics.coverage import Coverage, goals_at_start
from tideflow.topics.embedded import EmbeddedLog, open_log
from tideflow.topics.membership import EmbeddedGroupMember
from tideflow.topics.partitioner import (
    PARTITIONERS,
    keyed_partitions,
)

log = logging.getLogger("tideflow.topics")

GROUP_CHECK_EVERY = 1.0
"""Seconds between asking the group's committed offsets while a bounded read waits."""
WAIT_WARN_EVERY = 30.0
"""Seconds between warnings naming the partitions a bounded read waits for."""

METADATA = {
    "topic": "_topic",
    "partition": "_partition",
    "offset": "_offset",
    "timestamp": "_timestamp",
    "key": "_key",
    "headers": "_headers",
}


@component("source", "topic")
class TopicSource(Source[TopicSourceConfig]):
    """Read a topic as a consumer group member, on the embedded log or Kafka."""

    config_model = TopicSourceConfig
    partitioned = True
    replays_without_state = False  # the group's committed offsets say where to go on

    def __init__(self, config: TopicSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.stop_at_end or config.end_offsets is not None
        self.consumer: Consumer | None = None
        self._next: dict[str, int] = {}
        self._idle = 0.0
        self._handover: _Handover | None = None
        self._ready: deque[SourceBatch] = deque()
        self._metrics: dict[str, float] = {}
        self._last_stamp: float | None = None
        self._partition_lag: dict[str, int] = {}
        self._behind: dict[str, int] | None = None
        self._ended = False
        self._past_end: set[str] = set()
        self._kafka: str | None = None
        self._log: EmbeddedLog | None = None
        self._coverage: Coverage | None = None
        self._opened_at = 0.0
        self._started = False
        self._group_checked = 0.0
        self._warned_at = 0.0
        self._acked: Offsets = {}
        self._asked: Offsets | None = None
        self._incomplete: str | None = None
        self._counts: Counter[str] = Counter()

    @property
    def topics(self) -> list[str]:
        """The topics read."""
        return [self.config.topic] if isinstance(self.config.topic, str) else self.config.topic

    def _bootstrap(self) -> str | None:
        return resolve_broker(self.config.broker)

    def open(self, ctx: Context, position: Any) -> None:
        """Join the group and start after ``position`` (or the group's committed offsets)."""
        bootstrap = self._bootstrap()
        from_end = self.config.start == "latest"
        if ctx.partitions is not None:
            self._handover = _Handover(self, ctx.partitions, ctx.name)
        if bootstrap is None:
            log = self._log = open_log(log_path(ctx))
            for topic in self.topics:
                log.create_topic(topic)
            if self._handover is not None:
                self.consumer = EmbeddedGroupMember(
                    log, self.topics, self.config.group, from_end, self._handover
                )
            else:
                self.consumer = EmbeddedConsumer(log, self.topics, self.config.group, from_end)
        else:
            self.consumer = KafkaConsumer(
                bootstrap,
                self._subscription(),
                self.config.group,
                self.config.start,
                {"isolation.level": self.config.isolation, **self.config.options},
                self._handover,
            )
            self.consumer.headers = "headers" in self.config.metadata
            self.consumer.waits_for_topics = not self.bounded
            self._kafka = bootstrap
        self._next = dict(position or {})
        self._metrics = ctx.metrics
        if self.bounded:
            # The ends before joining the group: a bounded read of a topic that does not
            # exist fails here, not after joining (a member leaving while its group
            # rebalances can hold the group up), and the coordinator is not asked anything
            # before the first poll (such a request waits behind the member's JoinGroup).
            ends = self.consumer.partition_ends()
            self._check_topics_exist(ends)
            self._coverage = Coverage(goals_at_start(ends, self.config.end_offsets))
        # Joining the group waits for the first read: the engine checks where the stored
        # positions were taken between open and reading, and a member that joins and is
        # refused leaves in the middle of the group's join (tansu then held the group for
        # good, and the next run read nothing).
        self._started = False

    def _check_topics_exist(self, ends: dict[str, tuple[int, int]]) -> None:
        """A bounded read of a named Kafka topic that does not exist fails at once."""
        if self._kafka is None:
            return
        present = {split_tp(key)[0] for key in ends}
        missing = [t for t in self._subscription() if not t.startswith("^") and t not in present]
        if missing:
            raise PipelineError(
                f"kafka source: topic(s) {', '.join(map(repr, missing))} do not exist on "
                f"{self._kafka} (UNKNOWN_TOPIC_OR_PART): a bounded read (stop_at_end, "
                "end_offsets) reads what its topics hold when it starts; check the name, or "
                "create the topic first"
            )

    def _subscription(self) -> list[str]:
        return self.topics

    def origin(self) -> tuple[str, str] | None:
        """The embedded log file's id, or the Kafka cluster's (None when the broker does
        not say which cluster it is)."""
        if self._log is not None:
            log_id = self._log.identity()
            return f"embedded:{log_id}", f"the embedded log {self._log.path} (id {log_id[:8]})"
        assert isinstance(self.consumer, KafkaConsumer)
        cluster = self.consumer.cluster_id()
        if cluster is None:
            return None
        return f"kafka:{cluster}", f"the Kafka cluster {cluster} (at {self._kafka})"

    def read_batch(self) -> SourceBatch | None:
        """The next messages, decoded; undecodable ones are dead-lettered with their origin.

        In a group of workers, each batch holds one partition's messages."""
        assert self.consumer is not None
        if not self._started:
            self.consumer.start(self._next)
            self._started = True
            self._opened_at = time.monotonic()
        if self._ready:
            return self._ready.popleft()
        if self._ended:
            return None
        raw = self.consumer.poll(self.config.batch_size, self.config.poll_timeout)
        self._report_lag(raw)
        if self.config.end_offsets is not None:
            raw = self._before_end(raw)
        if not len(raw):
            if self._coverage is not None:
                return self._quiet_bounded(self._coverage)
            return SourceBatch(pl.DataFrame(), {} if self._handover else dict(self._next))
        self._idle = 0.0
        if self._handover is not None:
            for (topic, part), messages in raw.by_partition().items():
                key = tp(topic, part)
                self._next[key] = messages.offsets[-1] + 1
                batch = self._decode(messages, {key: self._next[key]})
                batch.partition = key
                self._ready.append(batch)
            return self._ready.popleft()
        for topic, part, offset in zip(raw.topics, raw.partitions, raw.offsets, strict=True):
            self._next[tp(topic, part)] = offset + 1
        if self.config.end_offsets is not None and self._coverage is not None:
            # Reaching the end with this batch saves the wait of one more empty poll.
            self._note_own_reading(self._coverage)
            self._ended = not self._coverage.unread()
        return self._decode(raw, dict(self._next))

    def _before_end(self, raw: RawMessages) -> RawMessages:
        """Only the messages before ``end_offsets``: what was written later is left for the
        next run (the checkpoint and the group's offsets stop at the end). A message at or
        past the end of its partition proves everything before it was delivered (a
        partition is read in order)."""
        assert self.config.end_offsets is not None
        ends = self.config.end_offsets
        keep = []
        for i, (topic, part, offset) in enumerate(
            zip(raw.topics, raw.partitions, raw.offsets, strict=True)
        ):
            key = tp(topic, part)
            if key in ends and offset >= ends[key]:
                self._past_end.add(key)
            else:
                keep.append(i)
        if len(keep) == len(raw):
            return raw
        kept = RawMessages()
        for name, values in vars(raw).items():
            getattr(kept, name).extend(values[i] for i in keep)
        return kept

    def _quiet_bounded(self, coverage: Coverage) -> SourceBatch | None:
        """A bounded read found nothing new: end once every partition of the group is
        covered (and, for ``stop_at_end``, ``idle_seconds`` passed quietly); else wait on,
        asking for the checkpoint that shows the group what this member read."""
        self._idle += self.config.poll_timeout
        self._note_own_reading(coverage)
        now = time.monotonic()
        if coverage.unread() and now - self._group_checked >= GROUP_CHECK_EVERY:
            self._group_checked = now
            self._note_group_reading(coverage)
        if self._ready:
            return self._ready.popleft()  # positions moved past transaction markers
        quiet = self.config.end_offsets is not None or self._idle >= self.config.idle_seconds
        unread = coverage.unread()
        if not unread and quiet:
            self._metrics["lag_records"] = 0
            return None
        waited = now - self._opened_at
        if unread and self.config.max_wait is not None and waited >= self.config.max_wait:
            self._metrics["lag_records"] = coverage.behind()
            self._incomplete = (
                f"max_wait ({self.config.max_wait:g} s) ran out with {len(unread)} partition(s) "
                f"of group {self.config.group!r} unread: "
                f"{coverage.describe(unread, self._owned())}. What was read is checkpointed; "
                "run the pipeline again to read the rest (the group resumes where it got to), "
                "after the members holding them ended or were stopped"
            )
            return None
        if unread and now - self._warned_at >= WAIT_WARN_EVERY and waited >= WAIT_WARN_EVERY:
            self._warned_at = now
            log.warning(
                "bounded read of group %r waits for %d partition(s) to be read to the end "
                "offsets of its start: %s. A member that died holds its partitions until the "
                "group notices (session.timeout.ms); `max_wait` bounds this wait",
                self.config.group,
                len(unread),
                coverage.describe(unread, self._owned()),
            )
        return self._waiting_batch(coverage)

    def _owned(self) -> set[str]:
        assert self.consumer is not None
        return set(self.consumer.read_positions())

    def _handed(self) -> Offsets:
        """Positions handed to the engine in the partitions this member owns now."""
        assert self.consumer is not None
        owned = self.consumer.read_positions()
        return {key: self._next[key] for key in owned if key in self._next}

    def _note_own_reading(self, coverage: Coverage) -> None:
        """Record how far this member read its partitions. One read to its end (no lag, or
        a message past ``end_offsets`` seen) moves its position past what it skipped
        (Kafka's transaction markers), so the offset the group commits shows it read."""
        assert self.consumer is not None
        behind = self._behind or {}
        chosen = self.config.end_offsets
        handed = self._handed()
        for key, position in self.consumer.read_positions().items():
            if key not in coverage.goals:
                continue
            at = handed.get(key)
            goal = coverage.goals[key].end
            if behind.get(key) == 0 or key in self._past_end:
                target = position if chosen is None else min(position, goal)
                if at is None or target > at:
                    self._move(key, target)
                    at = target
                if chosen is not None:
                    at = max(at, goal)  # nothing more to read before the chosen end
            coverage.record(key, at, "this member")

    def _move(self, key: str, position: int) -> None:
        self._next[key] = position
        if self._handover is not None:  # a worker's positions move with its batches
            self._ready.append(SourceBatch(pl.DataFrame(), {key: position}, partition=key))

    def _note_group_reading(self, coverage: Coverage) -> None:
        """Record what the group committed in the partitions this member does not own."""
        assert self.consumer is not None
        owned = self._owned()
        others = [key for key in coverage.unread() if key not in owned]
        for key, offset in self.consumer.group_committed(others).items():
            coverage.record(key, offset, "another member")

    def _waiting_batch(self, coverage: Coverage) -> SourceBatch:
        """An empty batch; one that asks for a checkpoint when this member's partitions
        are read and the group has yet to see it (so members waiting for each other's
        commits do not wait for each other's ends)."""
        position = {} if self._handover else dict(self._next)
        handed = self._handed()
        mine_done = all(coverage.covered(k) for k in handed if k in coverage.goals)
        unacked = any(self._acked.get(k) != o for k, o in handed.items())
        if handed and mine_done and handed != self._asked and unacked:
            self._asked = handed
            return SourceBatch(pl.DataFrame(), position, checkpoint=True)
        return SourceBatch(pl.DataFrame(), position)

    def incomplete(self) -> str | None:
        """Why a bounded read ended before every partition was read (``max_wait``)."""
        return self._incomplete

    def _decode(self, raw: RawMessages, position: Offsets) -> SourceBatch:
        limit = self.config.max_record_bytes
        longest = max(map(len, filter(None, raw.values)), default=0)
        long_letters = None
        if longest > limit:
            raw, long_letters = self._without_long(raw, limit)
        frame, kept, dead = decode_values(
            raw,
            self.config.format,
            lambda i: (
                f"topic {raw.topics[i]} partition {raw.partitions[i]} offset {raw.offsets[i]}"
            ),
            self.config.csv_columns,
        )
        if long_letters is not None:
            dead = pl.concat([dead, long_letters])
        if self.config.metadata:
            frame = frame.with_columns(self._metadata(raw, kept))
        if self.config.partitioned_by is not None and frame.height:
            self._check_partitioning(self.config.partitioned_by, frame, raw, kept)
        stamps = [t for t in raw.timestamps if t is not None and t > 0]
        event_time = min(stamps) / 1000 if stamps else None
        return SourceBatch(frame, position, dead if dead.height else None, event_time=event_time)

    def partition_keys(self) -> list[str] | None:
        """The column of ``partitioned_by``, if declared."""
        declared = self.config.partitioned_by
        return None if declared is None else [declared.column]

    def _check_partitioning(
        self, declared: PartitionedBy, frame: pl.DataFrame, raw: RawMessages, kept: list[int]
    ) -> None:
        """Stop at the first record whose declared key puts it in another partition."""
        column = declared.column
        if column not in frame.columns:
            raise PartitioningError(
                f"source partitioned_by.column: the records have no column {column!r} "
                f"(they have: {', '.join(frame.columns) or 'none'})"
            )
        keys = frame.get_column(column).cast(pl.String).cast(pl.Binary)
        topics = pl.Series(raw.topics).gather(kept)
        parts = pl.Series(raw.partitions, dtype=pl.Int32).gather(kept)
        for topic in topics.unique().to_list():
            rows = (topics == topic).arg_true()
            highest = max(parts.gather(rows).to_list())
            count = self._partition_count(topic, highest)
            want = keyed_partitions(keys.gather(rows), count, declared.partitioner)
            bad = (want.is_null() | (want != parts.gather(rows))).fill_null(True)
            if bad.any():
                row = int(rows[bad.arg_true()[0]])
                self._break_partitioning(declared, frame, raw, kept[row], row, count)

    def _break_partitioning(
        self,
        declared: PartitionedBy,
        frame: pl.DataFrame,
        raw: RawMessages,
        index: int,
        row: int,
        count: int,
    ) -> None:
        column, value = declared.column, frame.get_column(declared.column)[row]
        where = f"topic {raw.topics[index]} partition {raw.partitions[index]} offset "
        where += str(raw.offsets[index])
        if value is None:
            why = f"has no {column} (null): a record without a key may be in any partition"
        else:
            pick = PARTITIONERS[declared.partitioner]
            home = pick(str(value).encode(), count)
            why = (
                f"has {column}={value!r}, which {declared.partitioner} puts in partition "
                f"{home} of {count}"
            )
        raise PartitioningError(
            f"{where} {why}: the topic is not partitioned by {column} as the source's "
            f"`partitioned_by` declares (another producer or partitioner wrote it), so state "
            f"kept per {column} would be split between partitions. Nothing after it was "
            "read. Check the producers' partitioner, or run one worker without the "
            "declaration."
        )

    def _partition_count(self, topic: str, highest: int) -> int:
        """The topic's partition count (asked again when a higher partition shows up)."""
        assert self.consumer is not None
        count = self._counts.get(topic, 0)
        if count <= highest:
            self._counts = Counter(split_tp(key)[0] for key in self.consumer.partition_ends())
            count = self._counts.get(topic, highest + 1)
        return count

    @staticmethod
    def _without_long(raw: RawMessages, limit: int) -> tuple[RawMessages, pl.DataFrame]:
        """The messages no longer than ``limit``, and dead letters (origin, size, first
        bytes) for the others, which are not decoded."""
        short = RawMessages()
        records, reasons = [], []
        for i, value in enumerate(raw.values):
            if value is not None and len(value) > limit:
                origin = (
                    f"topic {raw.topics[i]} partition {raw.partitions[i]} offset {raw.offsets[i]}"
                )
                record, reason = long_record_letter(origin, len(value), bytes(value[:256]), limit)
                records.append(record)
                reasons.append(reason)
                continue
            for name, values in vars(raw).items():
                getattr(short, name).append(values[i])
        return short, raw_dead_letters(records, reasons)

    def rebalanced(self) -> None:
        """The group changed this member's share: quiet time before counts for nothing
        toward ``stop_at_end`` (a new share's first messages are a fetch away; a member that
        ended now would leave them unread until the next run)."""
        self._idle = 0.0

    def forget(self, partitions: list[str]) -> None:
        """Drop what was read from ``partitions`` but not handed over (their next owner
        reads it again from the checkpoint)."""
        gone = set(partitions)
        self._ready = deque(b for b in self._ready if b.partition not in gone)
        if self._handover is not None:
            for key in gone:
                self._next.pop(key, None)

    def _report_lag(self, raw: RawMessages) -> None:
        """Set ``lag_records`` (records behind over owned partitions) and ``lag_seconds``
        (age of the newest record read while a backlog remains, 0 once caught up) in the
        source's metrics."""
        assert self.consumer is not None
        # Timestamps are milliseconds; Kafka gives -1 where a message has none.
        stamps = [t for t in raw.timestamps if t is not None and t > 0]
        if stamps:
            self._last_stamp = max(stamps) / 1000
        try:
            behind = self.consumer.lag()
        except Exception as exc:  # noqa: BLE001 - a monitoring figure must not stop reading
            log.debug("source lag unavailable: %s", redact(str(exc)))
            behind = None
        self._behind = behind
        if behind is not None:
            # Swapped whole: report() runs on the engine's thread while this one reads.
            self._partition_lag = {key: int(n) for key, n in sorted(behind.items())}
            records = sum(behind.values())
            self._metrics["lag_records"] = records
            age = time.time() - self._last_stamp if self._last_stamp is not None else 0.0
            self._metrics["lag_seconds"] = round(max(age, 0.0), 3) if records else 0.0

    def report(self) -> dict[str, Any] | None:
        """Records behind per owned partition (``topic:partition``), as last measured: the
        sum is ``lag_records``; exported per partition as a Prometheus gauge."""
        report: dict[str, Any] = {}
        if self._partition_lag:
            report["lag_partitions"] = dict(self._partition_lag)
        if self._coverage is not None:
            report["partitions"] = self._coverage.table()
        return report or None

    def _metadata(self, raw: RawMessages, kept: list[int]) -> list[pl.Series]:
        fields: dict[str, tuple[list[Any], type[pl.DataType]]] = {
            "topic": (raw.topics, pl.String),
            "partition": (raw.partitions, pl.Int32),
            "offset": (raw.offsets, pl.Int64),
            "timestamp": (raw.timestamps, pl.Int64),
            "key": (raw.keys, pl.Binary),
            "headers": (raw.headers, pl.String),
        }
        columns = []
        for name in self.config.metadata:
            values, dtype = fields[name]
            series = pl.Series(METADATA[name], values, dtype=dtype).gather(kept)
            if name == "timestamp":
                series = series.cast(pl.Datetime("ms", "UTC"))
            if name == "key":
                series = series.cast(pl.String, strict=False)
            columns.append(series)
        return columns

    def ready(self) -> bool:
        """True once the group has given this member its share (the consumer is active)."""
        consumer = self.consumer
        return consumer is not None and consumer.active

    def transaction_offsets(self, position: Any) -> TransactionOffsets | None:
        """On Kafka: the group's offsets for ``position`` (partitions this member owns) and
        the consumer's group metadata, for an exactly-once sink to commit in its
        transaction."""
        if self._kafka is None or not isinstance(self.consumer, KafkaConsumer) or not position:
            return None
        owned = self.consumer.owned(dict(position))
        metadata = self.consumer.group_metadata()
        if not owned or metadata is None:
            return None
        return TransactionOffsets(self._kafka, owned, metadata)

    def checkpointed(self, position: Any) -> None:
        """The checkpoint is durable: commit the group's offsets up to it."""
        if self.consumer is not None and position:
            self.consumer.commit(dict(position))
            self._acked = dict(position)

    def close(self) -> None:
        """Leave the group."""
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class _Handover:
    """A consumer's rebalance listener that reports to the engine for a topic source."""

    def __init__(self, source: TopicSource, engine: PartitionHandover, name: str) -> None:
        self.source = source
        self.engine = engine
        self.name = name

    def assigned(self, partitions: list[str]) -> Offsets:
        """Restore the partitions' state; resume at their checkpointed positions."""
        self.source.rebalanced()
        return {k: int(v) for k, v in self.engine.assigned(self.name, partitions).items()}

    def revoked(self, partitions: list[str]) -> None:
        """Checkpoint what was handed over from them; forget what was not."""
        self.source.rebalanced()
        self.engine.revoked(self.name, partitions)
        self.source.forget(partitions)
