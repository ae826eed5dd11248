"""Consumers and producers over the embedded log or Kafka, behind one small interface.

A consumer starts from the later of two positions per partition: the one the pipeline's
checkpoint stored and the one its group committed. The checkpoint wins after a crash between
the checkpoint and the offset commit (the output already holds those records); the group wins
when another member moved the partition on. Offsets are committed only after a checkpoint
(``Source.checkpointed``), and only for partitions the consumer still owns.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import orjson
import polars as pl

from tideflow.errors import PipelineError, TransientError, require
from tideflow.secrets import redact, register_secret
from tideflow.topics.codec import Offsets, RawMessages, split_tp, tp
from tideflow.topics.embedded import EmbeddedLog
from tideflow.topics.membership import RebalanceListener, local_member_id, member_alive


class Consumer(Protocol):
    """What a topic source needs from a backend."""

    @property
    def active(self) -> bool:
        """False while the member waits for partitions it is due (standby, group joining,
        a share another member has yet to give up): a quiet member that is not active has
        not seen the end of its data."""

    def start(self, stored: Offsets) -> None:
        """Begin reading after ``stored`` positions (or the group's, whichever is later)."""

    def poll(self, max_messages: int, timeout: float) -> RawMessages:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` seconds."""

    def commit(self, offsets: Offsets) -> None:
        """Commit next offsets for the group (owned partitions only)."""

    def lag(self) -> Offsets | None:
        """Records behind per owned partition (high watermark minus the next offset to
        read), from what the backend knows without waiting; None when it cannot tell."""

    def read_positions(self) -> Offsets:
        """Per partition this member owns now, the next offset it reads (past transaction
        markers it skipped), as of the last ``lag`` call."""

    def partition_ends(self) -> dict[str, tuple[int, int]]:
        """Every partition of the subscribed topics -> (first offset still held, end
        offset), asked of the backend now."""

    def group_committed(self, keys: list[str]) -> Offsets:
        """The group's committed next offsets of the partitions ``keys`` that have one."""

    def close(self) -> None:
        """Leave the group and disconnect."""


class Producer(Protocol):
    """What a topic sink needs from a backend."""

    def partitions(self, topic: str) -> int:
        """Partition count of ``topic`` (created on first use if the backend may)."""

    def send(
        self,
        topic: str,
        partitions: pl.Series,
        keys: pl.Series,
        values: pl.Series,
        headers: pl.Series | None,
    ) -> None:
        """Hand messages to the backend (not yet durable)."""

    def flush(self) -> Any:
        """Make every message sent so far durable; return a commit token."""

    def commit(self, token: Any) -> None:
        """Make the messages covered by ``token`` visible to consumers."""

    def recover(self, pending: Any) -> None:
        """After a restart: finish ``pending``'s commit, discard anything later."""

    def close(self) -> None:
        """Disconnect."""


# -- embedded ------------------------------------------------------------------------------


class EmbeddedConsumer:
    """A group member on the embedded log.

    One member of a group reads at a time: it holds a lease it renews while polling, and a
    standby member takes over when the lease expires (its holder died). Within a machine this
    gives fail-over without splitting partitions; Kafka is the way to spread partitions over
    workers.
    """

    LEASE_SECONDS = 15.0

    def __init__(self, log: EmbeddedLog, topics: list[str], group: str, from_end: bool) -> None:
        self.log = log
        self.topics = topics
        self.group = group
        self.from_end = from_end
        self.member = local_member_id()
        self.next: Offsets = {}
        self._stored: Offsets = {}
        self._renewed = 0.0
        self._holding = False
        self._turn = 0
        self._ensure_lease_table()

    def _ensure_lease_table(self) -> None:
        with self.log._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS group_leases (grp TEXT PRIMARY KEY, member TEXT "
                "NOT NULL, expires REAL NOT NULL)"
            )

    def start(self, stored: Offsets) -> None:
        """Remember the checkpoint's positions; reading starts once the lease is held."""
        self._stored = stored  # the source's live positions: a regained lease resumes there

    @property
    def active(self) -> bool:
        """True while this member holds the group's lease (reads); False on standby."""
        return self._holding

    def _lease(self) -> bool:
        now = time.time()
        if self._holding and now - self._renewed < self.LEASE_SECONDS / 3:
            return True
        with self.log._write() as conn:
            row = conn.execute(
                "SELECT member FROM group_leases WHERE grp=?", (self.group,)
            ).fetchone()
            if row and row[0] != self.member and member_alive(row[0]) is False:
                conn.execute("DELETE FROM group_leases WHERE grp=?", (self.group,))
            conn.execute(
                "INSERT INTO group_leases VALUES (?,?,?) ON CONFLICT (grp) DO UPDATE SET "
                "member=excluded.member, expires=excluded.expires "
                "WHERE group_leases.member=excluded.member OR group_leases.expires < ?",
                (self.group, self.member, now + self.LEASE_SECONDS, now),
            )
            holder = conn.execute(
                "SELECT member FROM group_leases WHERE grp=?", (self.group,)
            ).fetchone()
        held = bool(holder and holder[0] == self.member)
        if held and not self._holding:
            self._plan()
        self._holding, self._renewed = held, now
        return held

    def _plan(self) -> None:
        """Start offsets now that this member reads: the later of checkpoint and group."""
        self.next = {}
        for topic in self.topics:
            self.next.update(
                self.log.resume_offsets(self.group, topic, self._stored, self.from_end)
            )

    def poll(self, max_messages: int, timeout: float) -> RawMessages:
        """Read the partitions in turn, so a busy one does not starve the others."""
        deadline = time.monotonic() + timeout
        while True:
            out = RawMessages()
            if self._lease():
                out = self.log.read_in_turn(self.next, self._turn, max_messages)
                self._turn += 1
            if len(out) or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def commit(self, offsets: Offsets) -> None:
        """Commit, if this member still holds the group's lease."""
        if not self._lease():
            return
        by_topic: dict[str, dict[int, int]] = {}
        for key, offset in offsets.items():
            topic, part = split_tp(key)
            by_topic.setdefault(topic, {})[part] = offset
        for topic, parts in by_topic.items():
            self.log.commit_offsets(self.group, topic, parts, self.member)

    def lag(self) -> Offsets | None:
        """Records between this member's next offsets and each partition's last stable
        offset; none while on standby (a standby owns no partition)."""
        return self.log.lag(self.next) if self._holding else {}

    def read_positions(self) -> Offsets:
        """The next offsets this member reads (none while on standby)."""
        return dict(self.next) if self._holding else {}

    def partition_ends(self) -> dict[str, tuple[int, int]]:
        """First and last stable offsets of every partition of the topics."""
        return self.log.partition_ends(self.topics)

    def group_committed(self, keys: list[str]) -> Offsets:
        """The group's committed offsets of ``keys``."""
        return self.log.group_committed(self.group, keys)

    def close(self) -> None:
        """Give the lease up so a standby can take over at once."""
        if self._holding:
            with self.log._write() as conn:
                conn.execute(
                    "DELETE FROM group_leases WHERE grp=? AND member=?", (self.group, self.member)
                )
        self._holding = False


class EmbeddedProducer:
    """Transactional appends: pending until the checkpoint commits them."""

    def __init__(self, log: EmbeddedLog, producer_id: str, create_partitions: int) -> None:
        self.log = log
        self.producer_id = producer_id
        self.create_partitions = create_partitions
        self.txn = self._new_txn()
        self._wrote = False

    def _new_txn(self) -> str:
        return f"{self.producer_id}:{uuid.uuid4().hex}"

    def partitions(self, topic: str) -> int:
        """Create the topic on first use."""
        self.log.create_topic(topic, self.create_partitions)
        return self.log.describe(topic).partitions

    def send(
        self,
        topic: str,
        partitions: pl.Series,
        keys: pl.Series,
        values: pl.Series,
        headers: pl.Series | None,
    ) -> None:
        """Append under the open transaction (invisible until committed)."""
        self.log.append(topic, partitions, keys, values, headers, txn=self.txn)
        self._wrote = True

    def flush(self) -> Any:
        """The appends are already durable; the open transaction is the token."""
        if not self._wrote:
            return None
        token, self.txn, self._wrote = self.txn, self._new_txn(), False
        return token

    def commit(self, token: Any) -> None:
        """Make the transaction's messages visible."""
        if token:
            self.log.commit_txn(str(token))

    def recover(self, pending: Any) -> None:
        """Keep and commit ``pending``; delete anything else this producer left pending."""
        self.log.abort_txns(self.producer_id, keep=str(pending) if pending else None)
        if pending:
            self.log.commit_txn(str(pending))

    def close(self) -> None:
        """Nothing to release: the log handle is shared."""


# -- Kafka ---------------------------------------------------------------------------------


def _confluent() -> Any:
    require("confluent_kafka.admin", "kafka", "confluent-kafka")  # the admin API too
    return require("confluent_kafka", "kafka", "confluent-kafka")


def kafka_config(bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    """librdkafka settings: the bootstrap address and options passed through (TLS, SASL);
    secret-looking values are registered so they are never printed."""
    for name, value in options.items():
        if any(s in name for s in ("password", "secret", "key", "token")) and isinstance(
            value, str
        ):
            register_secret(value)
    # librdkafka's own log lines go through Python logging (redacted, and one JSON object
    # per line with --log-format json) instead of straight to stderr.
    return {
        "bootstrap.servers": bootstrap,
        "logger": logging.getLogger("tideflow.kafka.librdkafka"),
        **options,
    }


SESSION_TIMEOUT_MS = 10_000
"""How long a member that stopped heartbeating (killed) keeps its partitions; librdkafka's
default is 45 s. Not lower yet: with 6 s (Kafka's smallest) a dead member expiring in the
middle of a bounded run's idle wait made that run end early in one of two trials of
``test_kill_9_mid_consumption_keeps_exactly_every_record[kafka]`` (issue 15 item 3 makes
bounded runs wait for every partition; then this can come down)."""
HEARTBEAT_INTERVAL_MS = 2_000
"""At most a third of the session timeout, as Kafka advises."""
MAX_POLL_INTERVAL_MS = 15_000
"""The longest a member may go without polling (a batch in the steps and sinks) before it
leaves the group; also its rebalance timeout, which a rebalance waits for a member that does
not rejoin (tansu waits this long for a dead member). librdkafka's default is 5 minutes."""


def group_timeouts(options: dict[str, Any]) -> dict[str, Any]:
    """A group member's timeouts: the defaults above, each overridable in ``options``, so
    that a killed worker's partitions reach a live one within about 20 s on Kafka and
    tansu. A batch that takes longer than ``max.poll.interval.ms`` makes the member leave
    and rejoin (:func:`kafka_messages`): raise it for pipelines with slower batches."""
    session = int(options.get("session.timeout.ms", SESSION_TIMEOUT_MS))
    return {
        "session.timeout.ms": session,
        "heartbeat.interval.ms": options.get(
            "heartbeat.interval.ms", min(HEARTBEAT_INTERVAL_MS, max(1, session // 3))
        ),
        # librdkafka refuses a poll interval below the session timeout.
        "max.poll.interval.ms": options.get(
            "max.poll.interval.ms", max(MAX_POLL_INTERVAL_MS, session)
        ),
    }


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
        ck = _confluent()
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
    ck = _confluent()
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


class KafkaProducer:
    """An idempotent confluent-kafka producer; ``flush`` fails if any delivery failed."""

    def __init__(self, bootstrap: str, options: dict[str, Any], create_partitions: int) -> None:
        ck = _confluent()
        self._ck = ck
        self.bootstrap = bootstrap
        self.options = options
        self.create_partitions = create_partitions
        config = {
            **kafka_config(bootstrap, options),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": options.get("linger.ms", 5),
        }
        self.producer = ck.Producer(config)
        self._errors: list[str] = []
        self._known: dict[str, int] = {}

    def partitions(self, topic: str) -> int:
        """Partition count from the cluster's metadata; the topic is created if missing."""
        if topic not in self._known:
            self._known[topic] = kafka_partitions(
                self.producer, self.bootstrap, self.options, topic, self.create_partitions
            )
        return self._known[topic]

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(
        self,
        topic: str,
        partitions: pl.Series,
        keys: pl.Series,
        values: pl.Series,
        headers: pl.Series | None,
    ) -> None:
        """Queue messages (librdkafka batches and compresses them)."""
        produce = self.producer.produce
        parts = partitions.to_list()
        key_list = keys.to_list()
        header_list = (
            [list(orjson.loads(h).items()) if h else None for h in headers.to_list()]
            if headers is not None
            else [None] * len(parts)
        )
        for part, key, value, head in zip(
            parts, key_list, values.to_list(), header_list, strict=True
        ):
            while True:
                try:
                    produce(
                        topic,
                        value=value,
                        key=key,
                        partition=part,
                        headers=head,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)  # the local queue is full: let deliveries drain
        self.producer.poll(0)

    def flush(self) -> Any:
        """Wait for every delivery report; any failure fails the checkpoint."""
        remaining = self.producer.flush(120)
        if remaining:
            raise TransientError(f"kafka producer: {remaining} message(s) not delivered in 120 s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise PipelineError(
                redact(f"kafka producer: {len(errors)} message(s) failed: {errors[0]}")
            )
        return None

    def commit(self, token: Any) -> None:
        """Delivered messages are already visible on Kafka."""

    def recover(self, pending: Any) -> None:
        """Nothing is pending on Kafka between checkpoints (at-least-once)."""

    def close(self) -> None:
        """Deliver what is queued."""
        self.producer.flush(30)


def kafka_partitions(
    client: Any, bootstrap: str, options: dict[str, Any], topic: str, create: int
) -> int:
    """Partition count of ``topic`` from the cluster's metadata (through ``client``, a
    producer); a missing topic is created with ``create`` partitions."""
    ck = _confluent()
    meta = client.list_topics(timeout=30)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        admin = ck.admin.AdminClient(kafka_config(bootstrap, options))
        futures = admin.create_topics([ck.admin.NewTopic(topic, num_partitions=create)])
        try:
            futures[topic].result(30)
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise PipelineError(redact(f"cannot create Kafka topic {topic!r}: {exc}")) from exc
        meta = client.list_topics(topic, timeout=30)
    return len(meta.topics[topic].partitions)


def default_bootstrap() -> str | None:
    """``KAFKA_BROKER`` from the environment, without a ``kafka://`` prefix."""
    value = os.environ.get("KAFKA_BROKER")
    return value.removeprefix("kafka://") if value else None
