"""The Kafka backend of a topic source: a confluent-kafka group member.

A consumer starts from the later of two positions per partition: the one the pipeline's
checkpoint stored and the one its group committed (see :mod:`tideflow.topics.backends`).
Offsets are committed only after a checkpoint, and only for partitions the member still owns.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from tideflow.connectors.kafka.client import confluent, group_timeouts, kafka_config
from tideflow.errors import PipelineError, TransientError
from tideflow.secrets import redact
from tideflow.topics.codec import Offsets, RawMessages, split_tp, tp
from tideflow.topics.membership import RebalanceListener

GROUP_QUERY_TIMEOUT = 5.0
"""Seconds a bounded read waits for the group's committed offsets before asking again later."""

MISSING_TOPIC_WARN_EVERY = 60.0
"""Seconds between warnings that a subscribed topic does not exist (yet)."""


class KafkaConsumer:
    """A confluent-kafka group member; partitions are assigned by the group coordinator."""

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group: str,
        offset_reset: str,
        options: dict[str, Any],
        listener: RebalanceListener | None = None,
    ) -> None:
        ck = confluent()
        self._ck = ck
        self.topics = topics
        self.listener = listener
        self._stored: Offsets = {}
        self._starts: Offsets = {}
        self._stable: Offsets = {}
        self._positions: Offsets = {}
        self._closing = False
        """Per partition, the end of the last fetch that reached it (a read_committed
        consumer's end is the last stable offset: messages of open transactions are not
        lag, it cannot read them yet)."""
        self._reset = offset_reset
        self._lock = threading.Lock()
        # While a rebalance callback runs inside ``consume`` (holding the lock), the engine
        # checkpoints from its own thread; librdkafka serves a commit made then only once
        # the callback returns, so the commit is left for the callback's thread to make.
        self._rebalancing = False
        self._deferred: Offsets | None = None
        self._deferred_lock = threading.Lock()
        self._assigned = False
        self._owned: frozenset[str] = frozenset()
        self._metadata: Any = None
        self.headers = True
        """Whether to decode message headers (a cost per message; only asked for as the
        ``_headers`` metadata column)."""
        self.waits_for_topics = False
        """Whether a subscribed topic that does not exist yet is waited for (an unbounded
        consumer started before its producer) rather than an error (a bounded run, which
        would otherwise end having read nothing of a misspelt topic)."""
        self._missing: dict[str, float] = {}  # topic -> when last said to be missing
        config = {
            **kafka_config(bootstrap, options),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": offset_reset,
            **group_timeouts(options),
            "enable.partition.eof": options.get("enable.partition.eof", True),
            # A subscribed topic created after the consumer started is seen at the next
            # metadata refresh (librdkafka's default: 5 minutes).
            "topic.metadata.refresh.interval.ms": options.get(
                "topic.metadata.refresh.interval.ms", 5_000
            ),
        }
        self.consumer = ck.Consumer(config)

    @property
    def active(self) -> bool:
        """True once the group assigned this member partitions (for a worker of a group:
        once the group assigned it its share, which may be none)."""
        if self.listener is not None:
            return self._assigned
        with self._lock:
            return bool(self.consumer.assignment())

    def start(self, stored: Offsets) -> None:
        """Subscribe; on assignment, partitions whose checkpoint is ahead of the group's
        committed offset start from the checkpoint.

        ``stored`` is the source's live position map, not a copy: after a rebalance in the
        middle of a run (a dead member's session expiring), a partition this member kept must
        continue where the member got to, not where the last commit was, or the records read
        since that commit would be read twice."""
        self._stored = stored

        def on_assign(consumer: Any, partitions: list[Any]) -> None:
            if self._closing:
                return  # an assignment that arrives while leaving (a read that ended first)
            keys = [tp(p.topic, p.partition) for p in partitions]
            for key in keys:  # an end seen before is no evidence for where reading restarts
                self._stable.pop(key, None)
            with self._rebalance():
                stored = self.listener.assigned(keys) if self.listener else self._stored
            committed = consumer.committed(partitions, timeout=30)
            for part, key, done in zip(partitions, keys, committed, strict=True):
                ours = stored.get(key)
                if ours is not None and (done.offset < 0 or ours > done.offset):
                    part.offset = ours
                # Where reading starts, for the lag of a partition nothing was read from
                # yet (librdkafka has no position for it before its first message): a group
                # worker's start is the claim's checkpoint, which the source's own
                # positions do not hold.
                if part.offset >= 0:
                    self._starts[key] = part.offset
                elif done.offset >= 0:
                    self._starts[key] = done.offset
                else:
                    self._starts.pop(key, None)
            consumer.assign(partitions)
            self._owned = frozenset(keys)
            self._metadata = consumer.consumer_group_metadata()
            self._assigned = True

        def on_revoke(consumer: Any, partitions: list[Any]) -> None:
            self._assigned = False  # until the group assigns this member its new share
            if self.listener is not None:
                with self._rebalance():
                    self.listener.revoked([tp(p.topic, p.partition) for p in partitions])
            consumer.unassign()
            self._owned = frozenset()

        self.consumer.subscribe(
            self.topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke
        )

    def poll(self, max_messages: int, timeout: float) -> RawMessages:
        """One ``consume`` call; broker errors other than end-of-partition are raised."""
        with self._lock:
            messages = self.consumer.consume(num_messages=max_messages, timeout=timeout)
        if self.waits_for_topics:
            messages = [m for m in messages if not self._topic_missing(m)]
        return kafka_messages(messages, self._stable, self.headers)

    def _topic_missing(self, message: Any) -> bool:
        """Whether ``message`` is the broker saying a subscribed topic does not exist. For a
        consumer that waits for its topics this is no error: the subscription takes the
        topic up at a metadata refresh once it is created (it may exist already: the error
        can predate its creation). Said as a warning, again every minute while it lasts."""
        err = message.error()
        if err is None or err.code() != self._ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False
        topic = message.topic() or ", ".join(self.topics)
        now = time.monotonic()
        if now - self._missing.get(topic, -MISSING_TOPIC_WARN_EVERY) >= MISSING_TOPIC_WARN_EVERY:
            self._missing[topic] = now
            logging.getLogger("tideflow.kafka").warning(
                "kafka consumer: topic %r does not exist (yet): waiting for it (%s)",
                topic,
                redact(err.str()),
            )
        return True

    @contextmanager
    def _rebalance(self) -> Iterator[None]:
        """Around a rebalance callback: commits asked for meanwhile are made at its end,
        in this (the polling) thread, while the partitions are still assigned."""
        self._rebalancing = True
        try:
            yield
        finally:
            with self._deferred_lock:
                self._rebalancing = False
                deferred, self._deferred = self._deferred, None
            if deferred:
                try:
                    self._commit_owned(deferred)
                except self._ck.KafkaException as exc:
                    # Partitions lost to a session timeout can no longer be committed; the
                    # state store holds their positions for the next owner.
                    logging.getLogger("tideflow.kafka").warning(
                        "kafka consumer: offsets not committed during a rebalance: %s",
                        redact(str(exc)),
                    )

    def commit(self, offsets: Offsets) -> None:
        """Commit synchronously, only partitions this member is assigned now.

        The polling thread holds the lock while it polls, and a rebalance callback runs
        inside that poll waiting for the engine's thread (this one) to hand the partitions
        over. Waiting for the lock without looking again would deadlock when a callback
        starts meanwhile: the lock is taken in short tries, and a callback that started in
        between gets the commit to make at its end."""
        while True:
            with self._deferred_lock:
                if self._rebalancing:
                    self._deferred = {**(self._deferred or {}), **offsets}
                    return
            if self._lock.acquire(timeout=0.05):
                try:
                    # Holding the lock, no poll (and so no callback) runs: commit now.
                    self._commit_owned(offsets)
                finally:
                    self._lock.release()
                return

    def _commit_owned(self, offsets: Offsets) -> None:
        owned = {(p.topic, p.partition) for p in self.consumer.assignment()}
        parts = [
            self._ck.TopicPartition(t, p, o)
            for t, p, o in ((*split_tp(k), o) for k, o in offsets.items())
            if (t, p) in owned
        ]
        if parts:
            self.consumer.commit(offsets=parts, asynchronous=False)

    def owned(self, offsets: Offsets) -> Offsets:
        """The part of ``offsets`` for partitions this member is assigned now.

        Kept by the rebalance callbacks rather than asked of librdkafka: the engine asks
        while a revoke callback waits for its checkpoint, and ``assignment()`` would wait for
        the callback (a deadlock)."""
        owned = self._owned
        return {k: o for k, o in offsets.items() if k in owned}

    def group_metadata(self) -> Any:
        """The consumer's group metadata as of its latest assignment (for
        ``send_offsets_to_transaction``)."""
        return self._metadata

    def lag(self) -> Offsets | None:
        """Records behind per assigned partition: the high watermark minus the position
        (none while the position is where the last fetch said the partition ends: with
        ``read_committed`` that is the last stable offset, and the messages of open
        transactions beyond it are not lag yet).

        The high watermark is the one librdkafka caches from every fetch response, so this
        asks the broker nothing per batch; a partition is left out until its first fetch
        response (a moment after assignment), and the figure trails new messages by at most
        one fetch. The position is the offset after the last message handed out; only for a
        partition nothing was read from yet is it looked up, once: where the member will
        start (the checkpoint, the group's committed offset, or else the reset end)."""
        with self._lock:
            assigned = self.consumer.assignment()
            if not assigned:
                self._positions = {}
                return {}
            behind: Offsets = {}
            positions: Offsets = {}
            for part in self.consumer.position(assigned):
                key = tp(part.topic, part.partition)
                high = self._high_watermark(part)
                if high is None:
                    continue
                if part.offset >= 0:
                    self._starts.pop(key, None)
                    position = part.offset
                else:
                    position = self._start_of(part, key)
                stable = self._stable.get(key)
                if stable is not None and stable >= position:
                    # The fetcher reached the end it can read (the stable offset), skipping
                    # what it does not hand out (transaction markers, aborted messages).
                    position = stable
                    high = min(high, stable)
                behind[key] = max(high - position, 0)
                positions[key] = position
        self._positions = positions
        return behind

    def read_positions(self) -> Offsets:
        """The next offsets this member reads in its partitions, as of the last ``lag``
        call (librdkafka's positions: past the transaction markers it skipped)."""
        return dict(self._positions)

    def partition_ends(self) -> dict[str, tuple[int, int]]:
        """Low and high watermarks of every partition of the subscribed topics (a
        subscription pattern matched against the cluster's topics now)."""
        with self._lock:
            topics = self.consumer.list_topics(timeout=30).topics
            ends: dict[str, tuple[int, int]] = {}
            for name in sorted(topics):
                if not any(_subscribed(name, entry) for entry in self.topics):
                    continue
                for part in sorted(topics[name].partitions):
                    low, high = self.consumer.get_watermark_offsets(
                        self._ck.TopicPartition(name, part), timeout=30, cached=False
                    )
                    ends[tp(name, part)] = (int(low), int(high))
        return ends

    def group_committed(self, keys: list[str]) -> Offsets:
        """The group's committed offsets of ``keys``, asked of the group coordinator; none
        while this member joins the group (the request would wait behind its JoinGroup and
        hold the polling thread past ``max.poll.interval.ms``: the member would never be
        assigned) or when the coordinator does not answer within a few seconds."""
        if not keys or not self.active:
            return {}
        parts = [self._ck.TopicPartition(*split_tp(key)) for key in keys]
        try:
            with self._lock:
                done = self.consumer.committed(parts, timeout=GROUP_QUERY_TIMEOUT)
        except self._ck.KafkaException as exc:
            logging.getLogger("tideflow.kafka").debug(
                "kafka consumer: committed offsets not available now: %s", redact(str(exc))
            )
            return {}
        return {tp(p.topic, p.partition): int(p.offset) for p in done if p.offset >= 0}

    def cluster_id(self) -> str | None:
        """The id of the cluster the consumer talks to, as its brokers report it."""
        with self._lock:
            cluster = self.consumer.list_topics(timeout=30).cluster_id
        return str(cluster) if cluster else None

    def _high_watermark(self, part: Any) -> int | None:
        marks = self.consumer.get_watermark_offsets(part, cached=True)
        return None if marks is None or marks[1] < 0 else int(marks[1])

    def _start_of(self, part: Any, key: str) -> int:
        """Where reading a partition with no position yet will start (see ``start``)."""
        if key not in self._starts:
            ours = self._stored.get(key)
            [done] = self.consumer.committed([part], timeout=5)
            if ours is not None and (done.offset < 0 or ours > done.offset):
                self._starts[key] = ours
            elif done.offset >= 0:
                self._starts[key] = done.offset
            else:
                low, high = self.consumer.get_watermark_offsets(part, timeout=5)
                self._starts[key] = high if self._reset == "latest" else low
        return self._starts[key]

    def close(self) -> None:
        """Leave the group (hands partitions to the other members at once)."""
        self._closing = True
        with self._lock:
            self.consumer.close()


def _subscribed(topic: str, entry: str) -> bool:
    """Whether a subscription entry (a name, or a ``^``-prefixed regular expression as
    librdkafka reads it) takes ``topic``."""
    if entry.startswith("^"):
        return re.match(entry, topic) is not None
    return topic == entry


def kafka_messages(
    messages: list[Any], ends: Offsets | None = None, headers: bool = True
) -> RawMessages:
    """confluent-kafka messages as columns; a broker error other than end-of-partition
    is raised (transient ones as such, so the caller may retry). The offset of each
    end-of-partition event goes to ``ends``; with ``headers`` false, headers are left out
    (every message of an exactly-once producer has one)."""
    ck = confluent()
    out = RawMessages()
    for msg in messages:
        err = msg.error()
        if err is not None:
            if err.code() == ck.KafkaError._PARTITION_EOF:
                if ends is not None:
                    ends[tp(msg.topic(), msg.partition())] = msg.offset()
                continue
            if err.code() == ck.KafkaError._MAX_POLL_EXCEEDED:
                # The member left the group while a batch was processed; its partitions
                # were handed over as lost (the same path as a session timeout: checkpoints
                # of partitions claimed meanwhile are fenced), and this poll rejoins.
                logging.getLogger("tideflow.kafka").warning(
                    "kafka consumer: a batch took longer than max.poll.interval.ms, so this "
                    "member left the group and rejoins (its partitions may move); set the "
                    "source's options max.poll.interval.ms above the slowest batch: %s",
                    redact(str(err)),
                )
                continue
            if err.retriable():
                raise TransientError(redact(f"kafka consumer: {err}"))
            raise PipelineError(redact(f"kafka consumer: {err}"))
        head = msg.headers() if headers else None
        out.topics.append(msg.topic())
        out.partitions.append(msg.partition())
        out.offsets.append(msg.offset())
        out.timestamps.append(msg.timestamp()[1])
        out.keys.append(msg.key())
        out.values.append(msg.value())
        out.headers.append(
            orjson.dumps({k: (v or b"").decode("utf-8", "replace") for k, v in head}).decode()
            if head
            else None
        )
    return out
