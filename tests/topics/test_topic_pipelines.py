"""Pipelines through topics, on the embedded log and on a real Kafka-protocol broker (tansu):
1,000 records in, 1,000 out for every consumer group, through crashes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import polars as pl
from tests.system.helpers import cli, read_parquet_tree, start_cli


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def produce_pipeline(topic: str, broker: str, count: int = 1000) -> str:
    return f"""
name: produce
source: {{type: generate, shape: rooms, count: {count}, keys: 12, batch_size: 100, seed: 3}}
steps:
  - {{type: with_columns, columns: {{seq: "row_number() OVER ()"}}}}
sink: {{type: topic, topic: {topic}, broker: "{broker}", key: room, partitions: 3}}
"""


def consume_pipeline(name: str, topic: str, group: str, broker: str, out: str, pace: bool) -> str:
    steps = (
        '  - {type: python, name: pace, function: "pace.py:pace", mode: batch}\n' if pace else ""
    )
    return f"""
name: {name}
source: {{type: topic, topic: {topic}, group: {group}, broker: "{broker}", batch_size: 50,
          stop_at_end: true, idle_seconds: 3, metadata: [partition, offset]}}
steps:
{steps or "  - {type: select, columns: [room, count, ts, _partition, _offset]}"}
sink: {{type: file, path: {out}, format: parquet}}
checkpoint: {{every_records: 100}}
"""


PACE = """
import time

def pace(batch):
    time.sleep(0.5)
    return batch
"""
"""20 batches of 50 at 0.5 s: 10 s of work, more than the two runs killed after 3 and 4 s can
do however fast they start, so both kills land mid-consumption."""


def generated(count: int = 1000) -> pl.DataFrame:
    """What the producer sends, computed without tideflow's pipeline machinery."""
    from tideflow.connectors import generate as g

    cfg = g.GenerateConfig(shape="rooms", count=count, keys=12, batch_size=100, seed=3)
    return g._block(cfg, 0).head(count)


def test_two_groups_each_read_every_record(tmp_path: Path, broker: str) -> None:
    topic = f"rooms-{time.time_ns()}"
    write(tmp_path, "produce.yaml", produce_pipeline(topic, broker))
    assert (run := cli("run", "produce.yaml", cwd=tmp_path)).returncode == 0, run.stderr
    for group in ("coldstorage", "reckoning"):
        write(
            tmp_path,
            f"{group}.yaml",
            consume_pipeline(group, topic, group, broker, f"out-{group}", False),
        )
        assert (run := cli("run", f"{group}.yaml", cwd=tmp_path)).returncode == 0, run.stderr
    expected = generated().select("room", "count").sort("room", "count")
    for group in ("coldstorage", "reckoning"):
        got = read_parquet_tree(tmp_path / f"out-{group}")
        assert got.height == 1000
        assert got.select("_partition", "_offset").n_unique() == 1000, "a message read twice"
        assert got.select("room", "count").sort("room", "count").equals(expected)
    # Every room's messages are in one partition, in the order sent.
    got = read_parquet_tree(tmp_path / "out-coldstorage")
    assert got.group_by("room").agg(pl.col("_partition").n_unique().alias("n"))["n"].max() == 1
    # A second run of a group reads nothing: its offsets are committed.
    assert (run := cli("run", "reckoning.yaml", cwd=tmp_path)).returncode == 0
    assert read_parquet_tree(tmp_path / "out-reckoning").height == 1000


def test_kill_9_mid_consumption_keeps_exactly_every_record(tmp_path: Path, broker: str) -> None:
    topic = f"crash-{time.time_ns()}"
    write(tmp_path, "produce.yaml", produce_pipeline(topic, broker))
    assert (run := cli("run", "produce.yaml", cwd=tmp_path)).returncode == 0, run.stderr
    write(tmp_path, "pace.py", PACE)
    write(
        tmp_path, "consume.yaml", consume_pipeline("consume", topic, "archive", broker, "out", True)
    )
    for wait in (3.0, 4.0):
        proc = start_cli("run", "consume.yaml", cwd=tmp_path)
        time.sleep(wait)
        assert proc.poll() is None, "the consumer finished before the kill: proved nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run := cli("run", "consume.yaml", cwd=tmp_path)).returncode == 0, run.stderr
    got = read_parquet_tree(tmp_path / "out")
    distinct_messages = got.select("_partition", "_offset").n_unique()
    distinct_records = got["event_id"].n_unique()
    assert (got.height, distinct_messages, distinct_records) == (1000, 1000, 1000), (
        f"{got.height} rows, {distinct_messages} distinct messages, {distinct_records} distinct "
        "records (more messages than records: the producer duplicated; more rows than "
        "messages: the consumer did)"
    )


def test_bad_messages_are_dead_lettered_with_their_origin(tmp_path: Path, broker: str) -> None:
    topic = f"mixed-{time.time_ns()}"
    args = ["topics", "--broker", broker, "--state-dir", str(tmp_path / ".tideflow")]
    good = [json.dumps({"n": i}) for i in range(5)]
    values = [*good[:2], "{not json", *good[2:], "[1, 2]"]
    sent = cli(*args, "produce", topic, *[a for v in values for a in ("--value", v)])
    assert sent.returncode == 0, sent.stderr
    write(
        tmp_path,
        "read.yaml",
        f'name: read\nsource: {{type: topic, topic: {topic}, group: g, broker: "{broker}", '
        "stop_at_end: true, idle_seconds: 2}\nsink: {type: file, path: out, format: parquet}\n",
    )
    assert (run := cli("run", "read.yaml", cwd=tmp_path)).returncode == 0, run.stderr
    assert sorted(read_parquet_tree(tmp_path / "out")["n"].to_list()) == list(range(5))
    letters = cli("deadletters", "list", "read.yaml", cwd=tmp_path)
    assert letters.returncode == 0, letters.stderr
    assert "invalid JSON" in letters.stdout and "expected a JSON object" in letters.stdout
    assert f"topic {topic} partition 0 offset 2" in letters.stdout


def test_topics_cli_lists_describes_tails_and_reports_lag(tmp_path: Path, broker: str) -> None:
    topic = f"cli-{time.time_ns()}"
    args = ["topics", "--broker", broker, "--state-dir", str(tmp_path / ".tideflow")]
    assert cli(*args, "create", topic, "--partitions", "2").returncode == 0
    assert topic in cli(*args, "list").stdout
    # One message per call: tansu reports a batch's high watermark as its base offset + 1.
    for value in ('{"a": 1}', '{"a": 2}'):
        sent = cli(*args, "produce", topic, "--key", "k", "--value", value)
        assert sent.returncode == 0, sent.stderr
    described = cli(*args, "describe", topic)
    assert "2 partition(s), 2 message(s)" in described.stdout, described.stdout
    tail = cli(*args, "tail", topic, "-n", "5")
    assert '{"a": 1}' in tail.stdout and '{"a": 2}' in tail.stdout
    lag = cli(*args, "lag", topic, "nobody")
    assert "total lag 2" in lag.stdout, lag.stdout
