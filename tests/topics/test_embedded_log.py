"""The embedded topic log: partitions, offsets, transactions, groups, retention, processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tideflow.errors import PipelineError
from tideflow.topics.embedded import EmbeddedLog
from tideflow.topics.partitioner import murmur2, partition_for, partitions_of


def send(
    log: EmbeddedLog, topic: str, values: list[str], keys: list[str | None], txn: str | None = None
) -> None:
    parts = partitions_of(
        pl.Series(keys, dtype=pl.String).cast(pl.Binary), log.describe(topic).partitions
    )
    log.append(
        topic,
        parts,
        pl.Series(keys, dtype=pl.String).cast(pl.Binary),
        pl.Series(values, dtype=pl.String).cast(pl.Binary),
        txn=txn,
    )


def read_all(log: EmbeddedLog, topic: str) -> dict[int, list[str]]:
    out = {}
    for part in range(log.describe(topic).partitions):
        got = log.read(topic, part, 0, 1_000_000)
        assert got.offsets == sorted(got.offsets)
        out[part] = [bytes(v).decode() for v in got.values]
    return out


def test_murmur2_matches_kafkas_reference_values() -> None:
    # Values from Kafka's UtilsTest (signed 32-bit there).
    signed = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536}
    for data, expected in signed.items():
        assert murmur2(data) == expected & 0xFFFFFFFF


def test_keys_pick_partitions_like_kafka_and_order_is_kept(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "topics.db")
    log.create_topic("t", partitions=4)
    keys = [f"k{i % 7}" for i in range(200)]
    values = [str(i) for i in range(200)]
    send(log, "t", values, keys)
    got = read_all(log, "t")
    for key in set(keys):
        expected = [v for k, v in zip(keys, values, strict=True) if k == key]
        part = partition_for(key.encode(), 4)
        assert [v for v in got[part] if keys[int(v)] == key] == expected
    assert sum(len(v) for v in got.values()) == 200


def test_pending_messages_are_invisible_and_block_later_ones(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "topics.db")
    log.create_topic("t")
    send(log, "t", ["a"], [None])
    send(log, "t", ["b"], [None], txn="p:1")
    send(log, "t", ["c"], [None])
    assert read_all(log, "t")[0] == ["a"], "a reader passed a pending message"
    log.commit_txn("p:1")
    assert read_all(log, "t")[0] == ["a", "b", "c"]
    send(log, "t", ["d"], [None], txn="p:2")
    send(log, "t", ["e"], [None], txn="p:3")
    assert log.abort_txns("p", keep="p:3") == 1
    log.commit_txn("p:3")
    assert read_all(log, "t")[0] == ["a", "b", "c", "e"]


def test_group_offsets_never_move_back(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "topics.db")
    log.create_topic("t", partitions=2)
    log.commit_offsets("g", "t", {0: 5, 1: 3})
    log.commit_offsets("g", "t", {0: 4})
    assert log.committed("g", "t") == {0: 5, 1: 3}
    assert log.committed("other", "t") == {}


def test_retention_by_age_and_by_size(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "topics.db")
    log.create_topic("aged", retention_ms=1)
    send(log, "aged", ["x"] * 5, [None] * 5)
    time.sleep(0.01)
    assert log.enforce_retention("aged") == 5
    log.create_topic("sized", retention_bytes=30)
    send(log, "sized", [f"{i:09d}" for i in range(10)], [None] * 10)  # 9 bytes each
    log.enforce_retention("sized")
    assert read_all(log, "sized")[0] == [f"{i:09d}" for i in range(7, 10)]


def test_unknown_topics_and_partitions_are_clear_errors(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "topics.db")
    with pytest.raises(PipelineError, match="does not exist"):
        log.describe("nope")
    log.create_topic("t")
    with pytest.raises(PipelineError, match="already exists"):
        log.create_topic("t", exist_ok=False)


PRODUCER = """
import sys
import polars as pl
from tideflow.topics.embedded import EmbeddedLog
log = EmbeddedLog(sys.argv[1])
log.create_topic("shared", partitions=3)
who = sys.argv[2]
for start in range(0, 2000, 100):
    values = pl.Series([f"{who}-{i}" for i in range(start, start + 100)]).cast(pl.Binary)
    parts = pl.Series([i % 3 for i in range(100)], dtype=pl.Int32)
    log.append("shared", parts, pl.Series([None] * 100, dtype=pl.Binary), values)
"""


def test_several_processes_append_at_once_without_loss_or_duplicates(tmp_path: Path) -> None:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER, encoding="utf-8")
    path = tmp_path / "topics.db"
    procs = [subprocess.Popen([sys.executable, str(script), str(path), f"p{i}"]) for i in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    log = EmbeddedLog(path)
    seen = [v for values in read_all(log, "shared").values() for v in values]
    expected = {f"p{w}-{i}" for w in range(3) for i in range(2000)}
    assert len(seen) == len(expected) and set(seen) == expected
    for part in range(3):
        offsets = log.read("shared", part, 0, 100_000).offsets
        assert offsets == list(range(len(offsets))), "offsets have gaps or repeats"
