"""Seeded scale-out trials of the rooms topology (issue 15 item 4, in part).

Each trial publishes the rooms example's events, then runs the `reckoning` group (aggregate per
room) with `--workers 2` or `--workers 3`, on the embedded log or on Kafka (tansu, totals into
a fresh PostgreSQL database). On the embedded log the topic also gets events from producers
that partition otherwise (CRC32 of the room, as librdkafka does, and no key at all), nothing is
declared, and the group also counts readings per `count` value (a field that is not the
message key): both aggregates go through repartition topics. On Kafka the source declares
`partitioned_by: room` (tansu can keep a group whose offsets were committed in transactions
waiting minutes for its next members, which a restart after a kill is). It kills with SIGKILL at a
random moment — from before the first checkpoint to the end — either one worker (the
supervisor restarts it) or the supervisor itself (on the embedded log its workers run on as
orphans and end on their own; on Kafka they are killed with it, a lost host); a new
supervisor is then started to finish. The table must hold exactly the totals
of an independent `group_by` of every published event, and every partition must be
checkpointed. CI runs two trials per backend; `make faults` runs ten.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import polars as pl
import psutil
import psycopg
import pytest
from polars.testing import assert_frame_equal
from tests.faults.oracle import seeds
from tests.topics import test_workers
from tests.topics.test_workers import owners, prepare, published, totals, wait_for

from tideflow.topics.embedded import open_log

COUNT = 1600


def pg_totals(url: str) -> pl.DataFrame:
    """The room_totals table the sql sink upserted into PostgreSQL."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT room, people, readings FROM room_totals").fetchall()
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


def mixed_producers(folder: Path, reckoning: Path, seed: int) -> pl.DataFrame:
    """Events from two more producers on the embedded topic: keyed by room through CRC32
    (librdkafka's default partitioner) and without a key (round-robin); the declaration is
    dropped and a histogram per `count` (not the message key) is added. The events."""
    rng = random.Random(seed)
    rows = [
        {
            "event_id": 10_000_000 + i,
            "room": f"room-{rng.randrange(12):02d}",
            "ts": f"2026-12-07T10:{i % 60:02d}:00Z",
            "count": rng.randrange(-2, 6),
        }
        for i in range(600)
    ]
    values = [orjson.dumps(row) for row in rows]
    log = open_log(str(folder / ".tideflow" / "topics.db"))
    crc = rows[:300]
    log.append(
        "rooms-v1",
        pl.Series([zlib.crc32(r["room"].encode()) % 3 for r in crc], dtype=pl.Int32),
        pl.Series([r["room"].encode() for r in crc], dtype=pl.Binary),
        pl.Series(values[:300], dtype=pl.Binary),
    )
    log.append(
        "rooms-v1",
        pl.Series([i % 3 for i in range(300)], dtype=pl.Int32),
        pl.Series([None] * 300, dtype=pl.Binary),
        pl.Series(values[300:], dtype=pl.Binary),
    )
    text = reckoning.read_text()
    text = "\n".join(line for line in text.splitlines() if "partitioned_by" not in line)
    text = text.replace(
        "      last_seen: max(ts)\n",
        "      last_seen: max(ts)\n\n  - type: aggregate\n    name: per_count\n"
        "    input: cast\n    keys: [count]\n    aggregations: {readings: count()}\n",
    )
    sinks = (
        "sinks:\n"
        "  - {type: sql, input: aggregate, url: '${DB_URL:-sqlite:///rooms.db}',\n"
        "     table: room_totals, mode: upsert, key: [room]}\n"
        "  - {type: sql, name: histogram, input: per_count, url: '${DB_URL:-sqlite:///rooms.db}',\n"
        "     table: count_histogram, mode: upsert, key: [count]}\n\n"
    )
    text = text[: text.index("sink:\n")] + sinks + text[text.index("checkpoint:") :]
    reckoning.write_text(text)
    return pl.DataFrame(rows).select("room", "count")


def count_histogram(db: Path) -> pl.DataFrame:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count, readings FROM count_histogram").fetchall()
    return pl.DataFrame(rows, schema=["count", "readings"], orient="row").sort("count")


def supervise(
    folder: Path, reckoning: Path, workers: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("a") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tideflow",
                "-v",
                "run",
                str(reckoning),
                "--workers",
                str(workers),
            ],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def settled(log: Path, workers: int) -> bool:
    """Whether every worker (at most one per partition) took partitions, as the log says."""
    took = {
        line.split("worker ", 1)[1].split()[0]
        for line in log.read_text().splitlines()
        if " took partitions " in line
    }
    return len(took) >= min(workers, 3)


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        raise AssertionError("the group run did not end:\n" + log.read_text()[-6000:]) from None


@pytest.mark.parametrize("backend", ["embedded", "kafka"])
@pytest.mark.parametrize("seed", seeds(2, 10, base=1500))
def test_workers_killed_at_random_give_exact_totals(
    tmp_path: Path,
    backend: str,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    rng = random.Random(seed)
    workers = rng.choice([2, 3])
    kill_supervisor = rng.random() < 0.35
    delay = rng.uniform(0.0, 6.0)
    victim = "the supervisor" if kill_supervisor else "a worker"
    print(f"seed {seed}: {workers} workers, kill {victim} after {delay:.1f} s")
    monkeypatch.setattr(test_workers, "COUNT", COUNT)  # what the oracle generates
    environment = {"COUNT": str(COUNT), "KAFKA_BROKER": "", "STATE": ""}
    db_url = "sqlite:///group.db"
    if backend == "kafka":
        environment["KAFKA_BROKER"] = "kafka://" + request.getfixturevalue("kafka_broker")
        db_url = request.getfixturevalue("postgres_database")
    folder = tmp_path / "rooms"
    reckoning = prepare(folder, environment)
    extra = None if backend == "kafka" else mixed_producers(folder, reckoning, seed)
    env = {**os.environ, **environment, "DB_URL": db_url}
    log = tmp_path / "supervisor.log"
    supervisor = supervise(folder, reckoning, workers, env, log)
    if backend == "kafka":
        # tansu keeps a group waiting for minutes for a member killed while joining (real
        # Kafka expires it at its session timeout): on Kafka the kill comes once the group
        # has settled, before or after the first checkpoint.
        wait_for(lambda: settled(log, workers), 120, "the group to assign every worker")
    time.sleep(delay)  # anywhere from before the first checkpoint to well into the run
    try:
        if kill_supervisor:
            orphans = psutil.Process(supervisor.pid).children()
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait(10)
            for orphan in orphans:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if backend == "kafka":
                        # The whole host is lost. Orphans left to end on their own leave
                        # the group one by one, and tansu keeps a member that leaves while
                        # its rejoin is pending as a ghost leader that stalls the group for
                        # minutes (plain librdkafka consumers show it too; real Kafka
                        # expires it): the next supervisor's workers would wait on it.
                        orphan.kill()
                    orphan.wait(300)  # on the embedded log they run on and end the group
            supervisor = supervise(folder, reckoning, workers, env, log)
        else:
            children = psutil.Process(supervisor.pid).children()
            if children:
                rng.choice(children).send_signal(signal.SIGKILL)
        code = finish(supervisor, log)
    finally:
        if supervisor.poll() is None:
            for child in psutil.Process(supervisor.pid).children(recursive=True):
                child.kill()
            supervisor.kill()
    text = log.read_text()
    assert code == 0, f"seed {seed}: exit {code}\n{text[-4000:]}"
    got = pg_totals(db_url) if backend == "kafka" else totals(folder / "group.db")
    every = published(folder).select("room", "count")  # generated once: its run is kept
    assert every.height == COUNT
    if extra is not None:
        every = pl.concat([every, extra])
        histogram = every.group_by("count").agg(pl.len().alias("readings")).sort("count")
        assert_frame_equal(count_histogram(folder / "group.db"), histogram, check_dtypes=False)
    expected = (
        every.group_by("room")
        .agg(pl.col("count").sum().alias("people"), pl.len().alias("readings"))
        .sort("room")
    )
    assert_frame_equal(got, expected, check_dtypes=False)
    assert len(owners(folder, environment["STATE"])) == 3, (
        f"seed {seed}: not every partition checkpointed"
    )
