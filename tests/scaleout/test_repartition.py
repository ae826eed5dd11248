"""Group workers keep keyed state exact whatever partitioned the topic (issue 15 item 1).

Events reach a 3-partition topic from producers that disagree on partitions: librdkafka's
default partitioner (CRC32 of the key), tideflow's topic sink (murmur2), and messages without
a key (spread round-robin). Nothing is declared: `tideflow run --workers N` cuts the pipeline
in front of each stateful step and moves its records through a repartition topic to the worker
that keeps their key. Every result is compared with an independent Polars `group_by` of the
events produced; before this change the same runs were refused (or, before that, wrote wrong
totals with exit code 0).
"""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
import psutil
import psycopg
import pytest
from confluent_kafka import Producer
from polars.testing import assert_frame_equal
from tests.scaleout.test_rooms_trials import finish, supervise
from tests.topics.test_workers import wait_for

from tideflow.connectors.topic.admin import Admin
from tideflow.topics.embedded import open_log

ROOMS = 23
FLOORS = 4

TOTALS = """
name: totals
source: {{type: topic, topic: {topic}, group: {group}, broker: "{broker}", batch_size: 100,
         {bounds}}}
steps:
  - {{type: python, name: pace, function: "pace.py:pace", mode: batch}}
  - {{type: cast, columns: {{ts: datetime_utc}}}}
  - {{type: aggregate, name: per_room, keys: [room],
     aggregations: {{people: sum(count), readings: count(), last_seen: max(ts)}}}}
  - {{type: aggregate, name: per_floor, input: cast, keys: [floor],
     aggregations: {{people: sum(count), readings: count()}}}}
sinks:
  - {{type: sql, name: rooms, input: per_room, url: "{db}", table: rooms, mode: upsert,
     key: [room]}}
  - {{type: sql, name: floors, input: per_floor, url: "{db}", table: floors, mode: upsert,
     key: [floor]}}
checkpoint: {{every_records: 300}}
"""


def events(count: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = [
        {
            "room": f"room-{rng.randrange(ROOMS):02d}",
            "floor": f"floor-{rng.randrange(FLOORS)}",
            "count": rng.randrange(6),
            "ts": f"2026-12-07T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        }
        for _ in range(count)
    ]
    return pl.DataFrame(rows)


def expected(produced: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Totals per room and per floor, computed directly from every event produced."""
    with_ts = produced.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
    rooms = (
        with_ts.group_by("room")
        .agg(
            pl.col("count").sum().alias("people"),
            pl.len().alias("readings"),
            pl.col("ts").max().alias("last_seen"),
        )
        .sort("room")
    )
    floors = (
        produced.group_by("floor")
        .agg(pl.col("count").sum().alias("people"), pl.len().alias("readings"))
        .sort("floor")
    )
    return rooms, floors


def produce_three_ways(topic: str, batch: pl.DataFrame, broker: str | None, folder: Path) -> None:
    """A third each: CRC32-keyed (librdkafka on Kafka; the same partitions computed here on the
    embedded log), murmur2-keyed (tideflow's producer), and without a key."""
    third = batch.height // 3
    crc, murmur, unkeyed = batch[:third], batch[third : 2 * third], batch[2 * third :]
    values = [orjson.dumps(r) for r in crc.iter_rows(named=True)]
    if broker is not None:
        producer = Producer({"bootstrap.servers": broker})
        for value, room in zip(values, crc["room"], strict=True):
            producer.produce(topic, value, key=room.encode())
        assert producer.flush(30) == 0
    else:
        import zlib

        log = open_log(str(folder / ".tideflow" / "topics.db"))
        rooms = crc["room"].to_list()
        log.append(
            topic,
            pl.Series([zlib.crc32(r.encode()) % 3 for r in rooms], dtype=pl.Int32),
            pl.Series([r.encode() for r in rooms], dtype=pl.Binary),
            pl.Series(values, dtype=pl.Binary),
        )
    admin = Admin(broker, folder / ".tideflow")
    try:
        for room, rows in murmur.group_by("room"):
            admin.produce(topic, [orjson.dumps(r) for r in rows.iter_rows(named=True)], room[0])
        admin.produce(topic, [orjson.dumps(r) for r in unkeyed.iter_rows(named=True)])
    finally:
        admin.close()


def write_totals(
    folder: Path, topic: str, broker: str | None, db: str, bounded: bool, pace: float = 0.05
) -> Path:
    """The totals pipeline, pausing ``pace`` seconds per batch of 100 before the cuts."""
    (folder / "pace.py").write_text(
        f"import time\n\ndef pace(batch):\n    time.sleep({pace})\n    return batch\n"
    )
    bounds = "stop_at_end: true, idle_seconds: 1" if bounded else "start: earliest"
    path = folder / "totals.yaml"
    path.write_text(
        TOTALS.format(
            topic=topic,
            group="reckoning",
            broker=f"kafka://{broker}" if broker else "embedded",
            bounds=bounds,
            db=db,
        )
    )
    return path


def tables(db: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rooms and floors tables the run upserted."""
    queries = (
        "SELECT room, people, readings, last_seen FROM rooms",
        "SELECT floor, people, readings FROM floors",
    )
    if db.startswith("sqlite:///"):
        with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
            got = [conn.execute(q).fetchall() for q in queries]
        got_rooms = pl.DataFrame(
            got[0], schema=["room", "people", "readings", "last_seen"], orient="row"
        ).with_columns(pl.col("last_seen").str.to_datetime(time_zone="UTC"))
    else:
        with psycopg.connect(db) as conn:
            got = [conn.execute(q).fetchall() for q in queries]
        got_rooms = pl.DataFrame(
            got[0], schema=["room", "people", "readings", "last_seen"], orient="row"
        ).with_columns(pl.col("last_seen").dt.convert_time_zone("UTC"))
    floors = pl.DataFrame(got[1], schema=["floor", "people", "readings"], orient="row")
    return got_rooms.sort("room"), floors.sort("floor")


def assert_exact(db: str, produced: pl.DataFrame) -> None:
    rooms, floors = tables(db)
    want_rooms, want_floors = expected(produced)
    assert_frame_equal(rooms, want_rooms, check_dtypes=False)
    assert_frame_equal(floors, want_floors, check_dtypes=False)


def start(folder: Path, workers: int, log: Path) -> subprocess.Popen[bytes]:
    """``tideflow run totals.yaml --workers N`` on its own (no KAFKA_BROKER), logging to
    ``log``."""
    return supervise(
        folder, folder / "totals.yaml", workers, {**os.environ, "KAFKA_BROKER": ""}, log
    )


def run_once(folder: Path, pipeline: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tideflow run PIPELINE ARGS`` in ``folder`` (no KAFKA_BROKER), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tideflow", "run", pipeline, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "KAFKA_BROKER": ""},
    )


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill a supervisor still running and its workers (a failed test leaves nothing)."""
    if process.poll() is None:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()


def new_topic(broker: str | None, folder: Path) -> str:
    topic = f"rooms-{uuid.uuid4().hex[:8]}"
    admin = Admin(broker, folder / ".tideflow")
    try:
        admin.create(topic, 3)
    finally:
        admin.close()
    return topic


def partition_count(broker: str | None, folder: Path, topic: str) -> int:
    admin = Admin(broker, folder / ".tideflow")
    try:
        return len(admin.end_offsets(topic))
    finally:
        admin.close()


def test_mixed_partitioners_on_kafka_give_exact_totals_per_key_and_per_other_field(
    tmp_path: Path, kafka_broker: str, postgres_database: str
) -> None:
    """The issue's scenario: CRC32, murmur2 and null keys in one topic, two workers, totals
    by the message key (room) and by a field that is not the key (floor). (A second bounded
    run of the same group is left to the embedded log's tests: on tansu a group whose
    offsets were committed in transactions can take minutes to assign its next members.)"""
    topic = new_topic(kafka_broker, tmp_path)
    produced = events(1500, seed=1)
    produce_three_ways(topic, produced, kafka_broker, tmp_path)
    write_totals(tmp_path, topic, kafka_broker, postgres_database, bounded=True)
    log = tmp_path / "run.log"
    assert finish(start(tmp_path, 2, log), log) == 0, log.read_text()[-4000:]
    assert_exact(postgres_database, produced)
    for step in ("per_room", "per_floor"):
        topic_name = f"totals-reckoning-{step}-repartition"
        assert partition_count(kafka_broker, tmp_path, topic_name) == 3


@pytest.mark.parametrize("seed", [3, 4])
def test_a_worker_killed_mid_run_on_the_embedded_log_keeps_totals_exact(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    produced = events(3600, seed=seed)
    topic = new_topic(None, tmp_path)
    produce_three_ways(topic, produced, None, tmp_path)
    db = f"sqlite:///{tmp_path / 'totals.db'}"
    write_totals(tmp_path, topic, None, db, bounded=True, pace=0.3)
    log = tmp_path / "run.log"
    supervisor = start(tmp_path, 3, log)
    try:
        wait_for(lambda: " took partitions " in log.read_text(), 60, "a worker to start")
        time.sleep(rng.uniform(0.3, 2.5))  # the workers read for about 4 s
        rng.choice(psutil.Process(supervisor.pid).children()).send_signal(signal.SIGKILL)
        code = finish(supervisor, log)
    finally:
        kill_tree(supervisor)
    assert code == 0, log.read_text()[-4000:]
    assert "exited with -9; restarting" in log.read_text()
    assert_exact(db, produced)

    # The next run of the group reads only what came since, into the same totals.
    more = events(500, seed=seed + 100)
    produce_three_ways(topic, more, None, tmp_path)
    assert finish(start(tmp_path, 2, log), log) == 0, log.read_text()[-4000:]
    assert_exact(db, pl.concat([produced, more]))


def test_unbounded_stages_run_side_by_side_until_stopped(tmp_path: Path) -> None:
    produced = events(900, seed=5)
    topic = new_topic(None, tmp_path)
    produce_three_ways(topic, produced, None, tmp_path)
    db = f"sqlite:///{tmp_path / 'totals.db'}"
    write_totals(tmp_path, topic, None, db, bounded=False)
    log = tmp_path / "run.log"

    def caught_up(want: pl.DataFrame) -> Callable[[], bool]:
        def check() -> bool:
            try:
                assert_exact(db, want)
            except (AssertionError, sqlite3.OperationalError, pl.exceptions.PolarsError):
                return False
            return True

        return check

    supervisor = start(tmp_path, 2, log)
    try:
        wait_for(caught_up(produced), 120, "the totals of the first events")
        more = events(300, seed=6)
        produce_three_ways(topic, more, None, tmp_path)  # while the workers run
        everything = pl.concat([produced, more])
        wait_for(caught_up(everything), 120, "the totals of the later events")
        supervisor.send_signal(signal.SIGTERM)
        assert finish(supervisor, log, 120) == 0, log.read_text()[-4000:]
    finally:
        kill_tree(supervisor)
    assert_exact(db, everything)


def test_every_type_survives_the_repartition(tmp_path: Path) -> None:
    """A group worker's output equals a plain run's, types included (times with a zone,
    dates, decimals), when its aggregate's records go through a repartition."""
    topic = new_topic(None, tmp_path)
    rows = [
        {
            "id": i % 40,
            "ts": f"2026-12-07T10:{i % 60:02d}:00+01:00",
            "day": f"2026-12-{1 + i % 7:02d}",
            "amount": f"{i}.25",
        }
        for i in range(200)
    ]
    admin = Admin(None, tmp_path / ".tideflow")
    try:
        admin.produce(topic, [orjson.dumps(r) for r in rows])
    finally:
        admin.close()
    for name, extra in (("plain", []), ("worker", ["--worker-id", "0"])):
        (tmp_path / f"{name}.yaml").write_text(
            f"""
name: {name}
source: {{type: topic, topic: {topic}, group: {name}, broker: embedded, stop_at_end: true,
         idle_seconds: 1, batch_size: 30}}
steps:
  - {{type: cast, columns: {{ts: datetime_utc, day: date, amount: decimal}}}}
  - {{type: aggregate, keys: [id], emit: on_end,
     aggregations: {{last: max(ts), first_day: min(day), total: sum(amount), n: count()}}}}
sink: {{type: file, path: out-{name}, format: parquet}}
"""
        )
        done = run_once(tmp_path, f"{name}.yaml", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
    plain = pl.read_parquet(tmp_path / "out-plain" / "**" / "*.parquet").sort("id")
    worker = pl.read_parquet(tmp_path / "out-worker" / "**" / "*.parquet").sort("id")
    assert plain.height == 40
    assert dict(plain.schema)["last"] == pl.Datetime("us", "UTC")
    assert_frame_equal(worker, plain)

    # The workers keep the aggregate's state per partition: one plain process would start
    # it empty and write partial results over theirs, so it is refused.
    alone = run_once(tmp_path, "worker.yaml")
    assert alone.returncode == 2, alone.stdout + alone.stderr
    assert "was run by group workers" in alone.stderr


def test_a_block_in_the_wrong_partition_stops_the_run(tmp_path: Path) -> None:
    """Nothing but the repartition sink may write a repartition topic: a record whose keys
    belong in another partition stops the run (exit 2) instead of splitting a key's state."""
    produced = events(300, seed=7)
    topic = new_topic(None, tmp_path)
    produce_three_ways(topic, produced, None, tmp_path)
    db = f"sqlite:///{tmp_path / 'totals.db'}"
    write_totals(tmp_path, topic, None, db, bounded=True)
    log = tmp_path / "run.log"
    assert finish(start(tmp_path, 2, log), log) == 0, log.read_text()[-4000:]

    from tideflow.connectors.topic.repartition import partitions_by_keys

    stray = pl.DataFrame({"room": ["room-01"], "floor": ["floor-1"], "count": [1]})
    home = int(partitions_by_keys(stray, ["room"], 3)[0])
    block = io.BytesIO()
    stray.write_ipc(block)
    open_log(str(tmp_path / ".tideflow" / "topics.db")).append(
        "totals-reckoning-per_room-repartition",
        pl.Series([(home + 1) % 3], dtype=pl.Int32),
        pl.Series([None], dtype=pl.Binary),
        pl.Series([block.getvalue()], dtype=pl.Binary),
    )
    assert finish(start(tmp_path, 2, log), log) == 2, log.read_text()[-4000:]
    assert "belongs in partition" in log.read_text()
