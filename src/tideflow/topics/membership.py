"""Consumer-group membership on the embedded log: partitions split between live members.

Every member of a group registers in ``group_members`` and, about twice a second while it
polls, works out its share: the group's partitions in a fixed order, dealt round-robin over
the live members sorted by id. It gives up partitions that are no longer its share (after
the pipeline checkpointed them, through the rebalance listener) and claims those of its share
that nobody holds. A partition is held by at most one member at any moment, because a member
claims only a partition whose row in ``partition_owners`` is free, and the previous holder
frees it only after its checkpoint. A member whose process died (same machine: its pid is
gone) is removed by the next member that looks, with everything it held.

The embedded log lives in one SQLite file, so all members run on one machine; across
machines, use Kafka.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Protocol

from tideflow.topics.codec import Offsets, RawMessages, split_tp, tp
from tideflow.topics.embedded import COMMIT_OFFSET, EmbeddedLog


class RebalanceListener(Protocol):
    """Told when this member's partitions change (the pipeline's engine, via its source)."""

    def assigned(self, partitions: list[str]) -> Offsets:
        """Partitions now owned; returns the checkpointed next offset of each that has one."""

    def revoked(self, partitions: list[str]) -> None:
        """Partitions about to be given up; returns once they are checkpointed."""


def local_member_id() -> str:
    """``host:pid:nonce``: unique, and tells members on this machine whether it is alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def member_alive(member: str) -> bool | None:
    """True or False for a member on this machine (is its process there?); None for a
    member elsewhere, whose liveness only its heartbeat can tell."""
    host, _, rest = member.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(alive: bool | None, expires: float, now: float) -> bool:
    return alive is False or (alive is None and expires < now)


class EmbeddedGroupMember:
    """A consumer-group member on the embedded log that owns a share of the partitions."""

    HEARTBEAT_SECONDS = 15.0
    """A member on another machine (a shared folder) counts as gone after this silence."""
    REBALANCE_EVERY = 0.5

    def __init__(
        self,
        log: EmbeddedLog,
        topics: list[str],
        group: str,
        from_end: bool,
        listener: RebalanceListener,
    ) -> None:
        self.log = log
        self.topics = topics
        self.group = group
        self.from_end = from_end
        self.listener = listener
        self.member = local_member_id()
        self.next: Offsets = {}
        self._checked = 0.0
        self._turn = 0
        self._settled = False
        with self.log._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS group_members (grp TEXT NOT NULL, member TEXT NOT "
                "NULL, expires REAL NOT NULL, PRIMARY KEY (grp, member))"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS partition_owners (grp TEXT NOT NULL, topic TEXT "
                "NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL, "
                "PRIMARY KEY (grp, topic, partition))"
            )

    @property
    def active(self) -> bool:
        """True once this member owns its whole share of the partitions (which may be none,
        when the group has more members than partitions)."""
        return self._settled

    def start(self, stored: Offsets) -> None:
        """Positions come from the listener, partition by partition, as they are claimed."""

    def _all_partitions(self) -> list[str]:
        return [
            tp(topic, part)
            for topic in sorted(self.topics)
            for part in range(self.log.describe(topic).partitions)
        ]

    def rebalance(self) -> None:
        """Heartbeat; give up what is no longer this member's share, claim what is free."""
        now = time.time()
        everything = self._all_partitions()
        with self.log._write() as conn:
            conn.execute(
                "INSERT INTO group_members VALUES (?,?,?) ON CONFLICT (grp, member) "
                "DO UPDATE SET expires=excluded.expires",
                (self.group, self.member, now + self.HEARTBEAT_SECONDS),
            )
            members = conn.execute(
                "SELECT member, expires FROM group_members WHERE grp=?", (self.group,)
            ).fetchall()
            # A member on this machine stays while its process lives, however long it is
            # stalled (a sink outage): its checkpoints are fenced, its partitions wait.
            gone = [
                m
                for m, expires in members
                if m != self.member and _gone(member_alive(m), expires, now)
            ]
            for member in gone:
                conn.execute(
                    "DELETE FROM group_members WHERE grp=? AND member=?", (self.group, member)
                )
                conn.execute(
                    "DELETE FROM partition_owners WHERE grp=? AND member=?", (self.group, member)
                )
        live = sorted(m for m, _ in members if m not in gone)
        mine = live.index(self.member)
        share = {key for i, key in enumerate(everything) if i % len(live) == mine}
        leaving = sorted(set(self.next) - share)
        if leaving:
            self.listener.revoked(leaving)
            self._release(leaving)
        wanted = sorted(share - set(self.next))
        if wanted:
            self._claim(wanted)
        self._settled = share <= set(self.next)

    def _release(self, keys: list[str]) -> None:
        with self.log._write() as conn:
            conn.executemany(
                "DELETE FROM partition_owners WHERE grp=? AND topic=? AND partition=? AND member=?",
                [(self.group, *split_tp(key), self.member) for key in keys],
            )
        for key in keys:
            self.next.pop(key, None)

    def _claim(self, keys: list[str]) -> None:
        with self.log._write() as conn:
            conn.executemany(
                "INSERT INTO partition_owners VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                [(self.group, *split_tp(key), self.member) for key in keys],
            )
            owned = {
                tp(topic, part)
                for topic, part in conn.execute(
                    "SELECT topic, partition FROM partition_owners WHERE grp=? AND member=?",
                    (self.group, self.member),
                )
            }
        claimed = [key for key in keys if key in owned]
        if not claimed:
            return
        stored = self.listener.assigned(claimed)
        for topic in {split_tp(key)[0] for key in claimed}:
            starts = self.log.resume_offsets(self.group, topic, stored, self.from_end)
            self.next.update({key: starts[key] for key in claimed if key in starts})

    def poll(self, max_messages: int, timeout: float) -> RawMessages:
        """Read the owned partitions in turn, so a busy one does not starve the others."""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() - self._checked >= self.REBALANCE_EVERY:
                self.rebalance()
                self._checked = time.monotonic()
            out = self.log.read_in_turn(self.next, self._turn, max_messages)
            self._turn += 1
            if len(out) or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def commit(self, offsets: Offsets) -> None:
        """Commit next offsets of the partitions this member owns now, in one transaction
        with the ownership check, so a partition given up is never committed here."""
        with self.log._write() as conn:
            owned = {
                tp(topic, part)
                for topic, part in conn.execute(
                    "SELECT topic, partition FROM partition_owners WHERE grp=? AND member=?",
                    (self.group, self.member),
                )
            }
            conn.executemany(
                COMMIT_OFFSET,
                [
                    (self.group, *split_tp(key), offset, self.member)
                    for key, offset in offsets.items()
                    if key in owned
                ],
            )

    def lag(self) -> Offsets:
        """Records behind per owned partition (to its last stable offset)."""
        return self.log.lag(self.next)

    def read_positions(self) -> Offsets:
        """The next offsets this member reads in the partitions it owns."""
        return dict(self.next)

    def partition_ends(self) -> dict[str, tuple[int, int]]:
        """First and last stable offsets of every partition of the topics."""
        return self.log.partition_ends(self.topics)

    def group_committed(self, keys: list[str]) -> Offsets:
        """The group's committed offsets of ``keys``."""
        return self.log.group_committed(self.group, keys)

    def close(self) -> None:
        """Leave the group: free every partition (the final checkpoint covers them)."""
        with self.log._write() as conn:
            conn.execute(
                "DELETE FROM partition_owners WHERE grp=? AND member=?", (self.group, self.member)
            )
            conn.execute(
                "DELETE FROM group_members WHERE grp=? AND member=?", (self.group, self.member)
            )
        self.next = {}
