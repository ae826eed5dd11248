"""What a topic source and sink need from a backend (``Consumer``, ``Producer``), and the
embedded log's implementation of it. The Kafka backend is in :mod:`tideflow.connectors.kafka`.

A consumer starts from the later of two positions per partition: the one the pipeline's
checkpoint stored and the one its group committed. The checkpoint wins after a crash between
the checkpoint and the offset commit (the output already holds those records); the group wins
when another member moved the partition on. Offsets are committed only after a checkpoint
(``Source.checkpointed``), and only for partitions the consumer still owns.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

import polars as pl

from tideflow.topics.codec import Offsets, RawMessages, split_tp
from tideflow.topics.embedded import EmbeddedLog
from tideflow.topics.membership import local_member_id, member_alive


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
