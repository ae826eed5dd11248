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
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import orjson
import polars as pl

from tideflow.errors import MissingDependencyError, PipelineError, TransientError
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
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError as exc:
        raise MissingDependencyError("confluent-kafka", "kafka") from exc
    return confluent_kafka


def kafka_config(bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    """librdkafka settings: the bootstrap address and options passed through (TLS, SASL);
    secret-looking values are registered so they are never printed."""
    for name, value in options.items():
        if any(s in name for s in ("password", "secret", "key", "token")) and isinstance(
            value, str
        ):
            register_secret(value)
    return {"bootstrap.servers": bootstrap, **options}


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
        self._reset = offset_reset
        self._lock = threading.Lock()
        # While a rebalance callback runs inside ``consume`` (holding the lock), the engine
        # checkpoints from its own thread; librdkafka serves a commit made then only once
        # the callback returns, so the commit is left for the callback's thread to make.
        self._rebalancing = False
        self._deferred: Offsets | None = None
        self._deferred_lock = threading.Lock()
        self._assigned = False
        config = {
            **kafka_config(bootstrap, options),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": offset_reset,
            # A member killed without leaving holds its partitions until this expires; the
            # librdkafka default (45 s) stalls a restarted pipeline for that long.
            "session.timeout.ms": options.get("session.timeout.ms", 10_000),
            "heartbeat.interval.ms": options.get("heartbeat.interval.ms", 2_000),
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
            keys = [tp(p.topic, p.partition) for p in partitions]
            with self._rebalance():
                stored = self.listener.assigned(keys) if self.listener else self._stored
            committed = consumer.committed(partitions, timeout=30)
            for part, key, done in zip(partitions, keys, committed, strict=True):
                ours = stored.get(key)
                if ours is not None and (done.offset < 0 or ours > done.offset):
                    part.offset = ours
            consumer.assign(partitions)
            self._assigned = True

        def on_revoke(consumer: Any, partitions: list[Any]) -> None:
            self._assigned = False  # until the group assigns this member its new share
            if self.listener is not None:
                with self._rebalance():
                    self.listener.revoked([tp(p.topic, p.partition) for p in partitions])
            consumer.unassign()

        self.consumer.subscribe(
            self.topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke
        )

    def poll(self, max_messages: int, timeout: float) -> RawMessages:
        """One ``consume`` call; broker errors other than end-of-partition are raised."""
        with self._lock:
            messages = self.consumer.consume(num_messages=max_messages, timeout=timeout)
        return kafka_messages(messages)

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
        """Commit synchronously, only partitions this member is assigned now."""
        with self._deferred_lock:
            if self._rebalancing:
                self._deferred = {**(self._deferred or {}), **offsets}
                return
        with self._lock:
            self._commit_owned(offsets)

    def _commit_owned(self, offsets: Offsets) -> None:
        owned = {(p.topic, p.partition) for p in self.consumer.assignment()}
        parts = [
            self._ck.TopicPartition(t, p, o)
            for t, p, o in ((*split_tp(k), o) for k, o in offsets.items())
            if (t, p) in owned
        ]
        if parts:
            self.consumer.commit(offsets=parts, asynchronous=False)

    def lag(self) -> Offsets | None:
        """Records behind per assigned partition: the high watermark minus the position.

        The high watermark is the one librdkafka caches from every fetch response, so this
        asks the broker nothing per batch; a partition is left out until its first fetch
        response (a moment after assignment), and the figure trails new messages by at most
        one fetch. The position is the offset after the last message handed out; only for a
        partition nothing was read from yet is it looked up, once: where the member will
        start (the checkpoint, the group's committed offset, or else the reset end)."""
        with self._lock:
            assigned = self.consumer.assignment()
            if not assigned:
                return {}
            behind: Offsets = {}
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
                behind[key] = max(high - position, 0)
        return behind

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
        with self._lock:
            self.consumer.close()


def kafka_messages(messages: list[Any]) -> RawMessages:
    """confluent-kafka messages as columns; a broker error other than end-of-partition
    is raised (transient ones as such, so the caller may retry)."""
    ck = _confluent()
    out = RawMessages()
    for msg in messages:
        err = msg.error()
        if err is not None:
            if err.code() == ck.KafkaError._PARTITION_EOF:
                continue
            if err.retriable():
                raise TransientError(redact(f"kafka consumer: {err}"))
            raise PipelineError(redact(f"kafka consumer: {err}"))
        headers = msg.headers()
        out.topics.append(msg.topic())
        out.partitions.append(msg.partition())
        out.offsets.append(msg.offset())
        out.timestamps.append(msg.timestamp()[1])
        out.keys.append(msg.key())
        out.values.append(msg.value())
        out.headers.append(
            orjson.dumps({k: (v or b"").decode("utf-8", "replace") for k, v in headers}).decode()
            if headers
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
        if topic in self._known:
            return self._known[topic]
        meta = self.producer.list_topics(timeout=30)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            admin = self._ck.admin.AdminClient(kafka_config(self.bootstrap, self.options))
            futures = admin.create_topics(
                [self._ck.admin.NewTopic(topic, num_partitions=self.create_partitions)]
            )
            try:
                futures[topic].result(30)
            except self._ck.KafkaException as exc:
                if exc.args[0].code() != self._ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise PipelineError(
                        redact(f"cannot create Kafka topic {topic!r}: {exc}")
                    ) from exc
            meta = self.producer.list_topics(topic, timeout=30)
        self._known[topic] = len(meta.topics[topic].partitions)
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


def default_bootstrap() -> str | None:
    """``KAFKA_BROKER`` from the environment, without a ``kafka://`` prefix."""
    value = os.environ.get("KAFKA_BROKER")
    return value.removeprefix("kafka://") if value else None
