"""What a bounded read of a consumer group must cover before it may end.

A bounded run (``stop_at_end`` or ``end_offsets``) is one member of its group: other members
(workers, a member that was killed and whose partitions the broker still holds) may own some
partitions. Ending when *this* member's partitions are read would leave the others unread,
with a summary that says nothing of them. So the goal is taken over every partition of the
topics at the start — the end offsets then, or the ones the user gave — and the read ends
only when each partition is covered: read to its goal here, or committed to it by the group
(another member read it and checkpointed). Until then the member keeps polling, so partitions
that a dead member held reach it, or a live member, at the next rebalance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tideflow.topics.codec import Offsets


@dataclass(frozen=True)
class PartitionGoal:
    """One partition's part of a bounded read."""

    end: int
    """The offset the read must reach (exclusive)."""
    low: int = 0
    """The first offset the broker still held at the start: a goal at or below it has
    nothing to read."""


@dataclass
class Coverage:
    """The goals of a bounded group read, and how far each partition is known to be read."""

    goals: dict[str, PartitionGoal]
    reached: dict[str, int] = field(default_factory=dict)
    """Per partition, the furthest offset known to be read (here or by the group)."""
    owner: dict[str, str] = field(default_factory=dict)
    """Per partition, who read it last as far as this member knows."""
    starts: dict[str, int] = field(default_factory=dict)
    """Per partition, the first offset this run saw it at (read here or committed)."""

    def record(self, key: str, offset: int | None, owner: str) -> None:
        """Note that ``key`` is read up to ``offset`` (by ``owner``), if that is further."""
        if offset is None or key not in self.goals:
            return
        self.starts.setdefault(key, offset)
        if offset >= self.reached.get(key, -1):
            self.reached[key] = offset
            self.owner[key] = owner

    def covered(self, key: str) -> bool:
        """Whether ``key`` needs no more reading for this run."""
        goal = self.goals[key]
        return goal.end <= goal.low or self.reached.get(key, -1) >= goal.end

    def unread(self) -> list[str]:
        """The partitions not covered yet, in order."""
        return [key for key in sorted(self.goals) if not self.covered(key)]

    def behind(self) -> int:
        """Offsets between what is known read and the goals, over every partition (records,
        but for transaction markers): 0 only when every partition is covered."""
        total = 0
        for key in self.unread():
            goal = self.goals[key]
            total += goal.end - max(self.reached.get(key, goal.low), goal.low)
        return max(total, 0)

    def describe(self, keys: list[str], owned: set[str]) -> str:
        """``topic:partition at X of Y (state)`` for each of ``keys``."""
        parts = []
        for key in keys:
            goal = self.goals[key]
            at = self.reached.get(key)
            where = "read here" if key in owned else "not assigned to this member"
            shown = "nothing read or committed" if at is None else f"at {at:,}"
            parts.append(f"{key} {shown} of {goal.end:,} ({where})")
        return ", ".join(parts)

    def table(self) -> dict[str, str]:
        """Per partition: start and end offset of the run and who read it, for the run's
        summary."""
        rows = {}
        for key in sorted(self.goals):
            goal = self.goals[key]
            first = self.starts.get(key)
            start = "-" if first is None else f"{first:,}"
            owner = self.owner.get(key, "nobody")
            at = self.reached.get(key)
            state = "" if self.covered(key) else f", UNREAD past {'-' if at is None else at}"
            rows[key] = f"offsets {start} -> {goal.end:,}, read by {owner}{state}"
        return rows


def goals_at_start(
    ends: dict[str, tuple[int, int]], chosen: Offsets | None
) -> dict[str, PartitionGoal]:
    """The goal of each partition: the user's end offset where given (``chosen``: only the
    partitions listed), else its end offset now."""
    goals = {}
    for key, (low, high) in ends.items():
        if chosen is None:
            goals[key] = PartitionGoal(high, low)
        elif key in chosen:
            goals[key] = PartitionGoal(int(chosen[key]), low)
    if chosen is not None:
        # A listed partition the topic does not have (yet) is a goal too: never met silently.
        for key, end in chosen.items():
            goals.setdefault(key, PartitionGoal(int(end), 0))
    return goals
