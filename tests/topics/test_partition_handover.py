"""The pieces behind `--workers`: partition claims fenced by epoch in the state store (SQLite
and PostgreSQL), embedded-log group membership that never lets two members hold a
partition, and offsets committed only for partitions a member owns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tideflow.core.checkpoints import GroupCheckpoint, PartitionLostError, PartitionState
from tideflow.state.locate import open_state_store
from tideflow.state.store import StateStore
from tideflow.topics.codec import Offsets
from tideflow.topics.embedded import open_log
from tideflow.topics.membership import EmbeddedGroupMember


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    """A state store of each backend."""
    if request.param == "sqlite":
        return StateStore(tmp_path / "state.db")
    return open_state_store(request.getfixturevalue("postgres_database"), tmp_path)


def commit(store: StateStore, owner: str, claim: PartitionState, position: int) -> None:
    """A worker checkpoint holding one partition at ``position`` with a tiny state."""
    state = {"aggregate": {"frame": pl.DataFrame({"k": ["a"], "n": [position]})}}
    store.commit_checkpoint(
        f"p#worker-{owner}",
        1,
        {},
        {},
        {"sink": f"token-{owner}"},
        [],
        "run",
        GroupCheckpoint(
            "p",
            owner,
            [PartitionState(claim.source, claim.part, claim.epoch, position, state)],
        ),
    )


def test_claims_move_state_and_fence_the_previous_owner(store: StateStore) -> None:
    [first] = store.claim_partitions("p", "w0", "topic", ["t:0"])
    assert (first.epoch, first.position, first.step_states) == (1, None, {})
    commit(store, "w0", first, 10)

    [second] = store.claim_partitions("p", "w1", "topic", ["t:0"])
    assert (second.epoch, second.position) == (2, 10)
    restored = second.step_states["aggregate"]["frame"]
    assert restored.to_dicts() == [{"k": "a", "n": 10}]

    # The old owner's next checkpoint is refused as a whole: nothing of it is stored.
    with pytest.raises(PartitionLostError, match="claimed by another worker"):
        commit(store, "w0", first, 99)
    assert store.load_checkpoint("p#worker-w0").sink_tokens == {"sink": "token-w0"}  # type: ignore[union-attr]
    commit(store, "w1", second, 20)
    assert store.partition_states("p") == [("topic", "t:0", "w1", 2, 20)]

    store.reset("p")
    assert store.partition_states("p") == []
    assert store.load_checkpoint("p#worker-w0") is None
    assert store.load_checkpoint("p#worker-w1") is None
    store.close()


class Recorder:
    """A rebalance listener that records what it was told and hands out positions."""

    def __init__(self, positions: Offsets | None = None) -> None:
        self.positions = positions or {}
        self.assigned: list[str] = []
        self.revoked: list[str] = []

    def on_assigned(self, partitions: list[str]) -> Offsets:
        self.assigned += partitions
        return {k: v for k, v in self.positions.items() if k in partitions}

    def on_revoked(self, partitions: list[str]) -> None:
        self.revoked += partitions


def member(log_path: Path, recorder: Recorder) -> EmbeddedGroupMember:
    class Listener:
        def assigned(self, partitions: list[str]) -> Offsets:
            return recorder.on_assigned(partitions)

        def revoked(self, partitions: list[str]) -> None:
            recorder.on_revoked(partitions)

    return EmbeddedGroupMember(open_log(log_path), ["t"], "g", False, Listener())


def owners(log_path: Path) -> list[tuple[int, str]]:
    log = open_log(log_path)
    with log._write() as conn:
        return conn.execute(
            "SELECT partition, member FROM partition_owners WHERE grp='g' ORDER BY 1"
        ).fetchall()


def test_members_split_partitions_without_overlap(tmp_path: Path) -> None:
    path = tmp_path / "topics.db"
    open_log(path).create_topic("t", 4)
    one, two = Recorder({"t:1": 7}), Recorder()
    a = member(path, one)
    a.rebalance()
    assert sorted(a.next) == ["t:0", "t:1", "t:2", "t:3"] and a.active
    assert a.next["t:1"] == 7  # the checkpointed position wins over the (empty) group's

    b = member(path, two)
    b.rebalance()  # its share is still held by a: it waits
    assert b.next == {} and not b.active
    a.rebalance()  # a sees b, checkpoints and gives b's share up
    share_b = sorted(one.revoked)
    assert len(share_b) == 2
    b.rebalance()
    assert sorted(b.next) == share_b == sorted(two.assigned) and b.active
    held = owners(path)
    assert len(held) == 4 and len({p for p, _ in held}) == 4  # each partition held once

    # A commit covers only the partitions the member owns now.
    a.commit({"t:0": 5, "t:1": 5, "t:2": 5, "t:3": 5})
    committed = open_log(path).committed("g", "t")
    assert set(committed) == {int(k[-1]) for k in a.next}

    b.close()
    a.rebalance()
    assert sorted(a.next) == ["t:0", "t:1", "t:2", "t:3"]
    a.close()
    assert owners(path) == []


def test_a_dead_members_partitions_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "topics.db"
    open_log(path).create_topic("t", 2)
    root = Path(__file__).resolve().parents[2]
    code = (
        f"import sys; sys.path.insert(0, {str(root)!r})\n"
        "from tests.topics.test_partition_handover import Recorder, member\n"
        "from pathlib import Path\n"
        f"m = member(Path({str(path)!r}), Recorder()); m.rebalance(); print(sorted(m.next))\n"
    )
    # The other member's process ends without leaving the group (as after kill -9).
    done = subprocess.run(
        [sys.executable, "-c", code + "import os; os._exit(0)"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    assert done.stdout.strip() == "['t:0', 't:1']"
    assert {m for _, m in owners(path)} != set()
    recorder = Recorder()
    survivor = member(path, recorder)
    survivor.rebalance()
    assert sorted(survivor.next) == ["t:0", "t:1"] == sorted(recorder.assigned)
    assert {m for _, m in owners(path)} == {survivor.member}
