"""Keyed state with group workers and a topic's declared partitioning (issue 15).

A topic written by a plain ``confluent-kafka`` producer (librdkafka's default partitioner:
CRC32 of the key) holds each room in one partition, but not in the one Kafka's murmur2 would
pick. Without a declaration the workers repartition the aggregate's records by room and are
exact; a source that declares its partitioning skips that hop, every record is checked
against the declaration, and the first record that breaks it stops the run (exit code 2, not
restarted) instead of writing wrong totals.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import polars as pl
from confluent_kafka import Producer
from polars.testing import assert_frame_equal

from tideflow.connectors.topic.admin import Admin

ROOMS = 37
COUNT = 2_000

PIPELINE = """
name: totals
source: {{type: topic, topic: {topic}, group: {group}, broker: "kafka://{broker}",
         stop_at_end: true, idle_seconds: 2{declared}}}
steps:
  - {{type: aggregate, keys: [room], aggregations: {{people: sum(count), readings: count()}}}}
sink: {{type: sql, url: "sqlite:///totals.db", table: totals, mode: upsert, key: [room]}}
"""


def produce_with_librdkafka(broker: str, folder: Path, topic: str) -> pl.DataFrame:
    """COUNT room events keyed by room through librdkafka's default partitioner; the
    events as a frame."""
    admin = Admin(broker, folder / ".tideflow")
    try:
        admin.create(topic, 3)
    finally:
        admin.close()
    events = pl.DataFrame(
        {
            "room": [f"room-{i % ROOMS:02d}" for i in range(COUNT)],
            "count": [i % 5 for i in range(COUNT)],
        }
    )
    producer = Producer({"bootstrap.servers": broker})
    for row in events.iter_rows(named=True):
        producer.produce(topic, orjson.dumps(row), key=row["room"].encode())
    assert producer.flush(30) == 0
    return events


def run(folder: Path, broker: str, topic: str, declared: str, *args: str) -> str:
    """Write the pipeline with ``declared`` settings and run it; its output."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    extra = f", partitioned_by: {declared}" if declared else ""
    (folder / "pipeline.yaml").write_text(
        PIPELINE.format(topic=topic, group=group, broker=broker, declared=extra)
    )
    done = subprocess.run(
        [sys.executable, "-m", "tideflow", "run", "pipeline.yaml", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_without_a_declaration_workers_repartition_and_are_exact(
    tmp_path: Path, kafka_broker: str
) -> None:
    """Nothing declared: the aggregate's records go through a repartition topic keyed by
    room (murmur2), so the librdkafka-partitioned topic gives exact totals too."""
    topic = f"rooms-{uuid.uuid4().hex[:8]}"
    events = produce_with_librdkafka(kafka_broker, tmp_path, topic)
    out = run(tmp_path, kafka_broker, topic, "", "--workers", "2")
    assert out.startswith("exit 0\n"), out
    assert "aggregate-repartitioned" in out  # the summary shows the hop
    assert_frame_equal(stored_totals(tmp_path), expected_totals(events), check_dtypes=False)


def stored_totals(folder: Path) -> pl.DataFrame:
    with sqlite3.connect(folder / "totals.db") as conn:
        rows = conn.execute("SELECT room, people, readings FROM totals").fetchall()
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


def expected_totals(events: pl.DataFrame) -> pl.DataFrame:
    return (
        events.group_by("room")
        .agg(pl.col("count").sum().alias("people"), pl.len().alias("readings"))
        .sort("room")
    )


def test_a_wrong_declaration_stops_at_the_first_record_and_the_right_one_is_exact(
    tmp_path: Path, kafka_broker: str
) -> None:
    topic = f"rooms-{uuid.uuid4().hex[:8]}"
    events = produce_with_librdkafka(kafka_broker, tmp_path, topic)

    wrong = run(tmp_path, kafka_broker, topic, "{column: room}", "--workers", "2")
    assert wrong.startswith("exit 2\n"), wrong  # a worker's exit 2 is not restarted
    assert "which murmur2 puts in partition" in wrong, wrong
    assert "is not partitioned by room as the source's `partitioned_by` declares" in wrong

    (tmp_path / "totals.db").unlink(missing_ok=True)
    right = run(
        tmp_path, kafka_broker, topic, "{column: room, partitioner: crc32}", "--workers", "2"
    )
    assert right.startswith("exit 0\n"), right
    assert "repartition" not in right  # the declaration spares the hop
    assert_frame_equal(stored_totals(tmp_path), expected_totals(events), check_dtypes=False)
