"""F8: a consumer group of workers whose members are added and killed (`kill -9`) at a
steady beat while they read a topic into Parquet and keep totals per key.

Pass criteria: the Parquet output is exactly the published records (none lost, none
twice), the totals equal the oracle's, and no member ever committed an offset for a
partition it did not own at that moment — checked by triggers the test installs in the
embedded log, which record every commit with whether the committing member held the
partition in the same transaction. CI beats every 3 s on the embedded log; `make faults`
beats every 20 s, on the embedded log and on Kafka (tansu), with more records.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.faults.oracle import FULL, compare, read_output, records
from tests.system.helpers import cli

N = 60_000 if FULL else 5_000
BEAT = 20.0 if FULL else 3.0
BEATS = 8 if FULL else 5
PAUSE = 0.2 if FULL else 0.1
"""Seconds per batch of 50: the run must outlast several beats."""

PRODUCE = """
name: f8-produce
source: {type: file, path: in.csv}
sink: {type: topic, topic: TOPIC, broker: "BROKER", key: key, partitions: 6}
"""

CONSUME = """
name: f8-consume
source: {type: topic, topic: TOPIC, group: f8, broker: "BROKER", batch_size: 50,
         stop_at_end: true, idle_seconds: 3, options: OPTIONS,
         partitioned_by: {column: key}}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
  - {type: aggregate, name: totals, keys: [key], aggregations: {total: sum(value), n: count()}}
sinks:
  - {type: file, name: archive, input: pace, path: out, format: parquet}
  - {type: sql, name: totals_table, input: totals, url: "sqlite:///totals.db", table: totals,
     mode: upsert, key: [key]}
checkpoint: {every_records: 400}
"""

PACE = """
import time

def pace(batch):
    time.sleep(PAUSE)
    return batch
"""

AUDIT = """
CREATE TABLE IF NOT EXISTS partition_owners (grp TEXT NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, member TEXT NOT NULL, PRIMARY KEY (grp, topic, partition));
CREATE TABLE f8_commits (topic TEXT, partition INTEGER, member TEXT, next_offset INTEGER,
    owned INTEGER);
CREATE TRIGGER f8_insert AFTER INSERT ON group_offsets BEGIN
  INSERT INTO f8_commits SELECT NEW.topic, NEW.partition, NEW.member, NEW.next_offset,
    EXISTS (SELECT 1 FROM partition_owners o WHERE o.grp = NEW.grp AND o.topic = NEW.topic
            AND o.partition = NEW.partition AND o.member = NEW.member);
END;
CREATE TRIGGER f8_update AFTER UPDATE ON group_offsets BEGIN
  INSERT INTO f8_commits SELECT NEW.topic, NEW.partition, NEW.member, NEW.next_offset,
    EXISTS (SELECT 1 FROM partition_owners o WHERE o.grp = NEW.grp AND o.topic = NEW.topic
            AND o.partition = NEW.partition AND o.member = NEW.member);
END;
"""


@pytest.fixture(params=["embedded", "kafka"] if FULL else ["embedded"])
def broker(request: pytest.FixtureRequest) -> str:
    """The embedded log, or (under `make faults`) Kafka."""
    if request.param == "embedded":
        return "embedded"
    return "kafka://" + request.getfixturevalue("kafka_broker")


class Group:
    """Worker processes started and killed by id, each logging to its own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.ever: set[str] = set()

    def start(self, worker: str) -> None:
        log = (self.folder / f"worker-{worker}.log").open("ab")
        self.running[worker] = subprocess.Popen(
            [sys.executable, "-m", "tideflow", "-v", "run", "consume.yaml", "--worker-id", worker],
            cwd=self.folder,
            env={**os.environ, "KAFKA_BROKER": ""},
            stdout=log,
            stderr=log,
        )
        self.ever.add(worker)

    def reap(self) -> None:
        """Forget workers that ended on their own; a failure is a test failure."""
        for worker, proc in list(self.running.items()):
            code = proc.poll()
            if code is not None:
                del self.running[worker]
                assert code == 0, self.log(worker)

    def kill(self, worker: str) -> None:
        proc = self.running.pop(worker)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def log(self, worker: str) -> str:
        return (self.folder / f"worker-{worker}.log").read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_f8_members_added_and_killed_while_reading(tmp_path: Path, broker: str) -> None:
    rng = random.Random(8)
    topic = f"f8-{time.time_ns()}"
    data = records(8, N, keys=40)
    data.write_csv(tmp_path / "in.csv")
    options = "{max.poll.interval.ms: 15000}" if broker != "embedded" else "{}"
    for name, text in (("produce.yaml", PRODUCE), ("consume.yaml", CONSUME)):
        filled = text.replace("TOPIC", topic).replace("BROKER", broker)
        (tmp_path / name).write_text(filled.replace("OPTIONS", options), encoding="utf-8")
    (tmp_path / "pace.py").write_text(PACE.replace("PAUSE", str(PAUSE)), encoding="utf-8")
    run = cli("run", "produce.yaml", cwd=tmp_path, env={"KAFKA_BROKER": ""})
    assert run.returncode == 0, run.stderr
    if broker == "embedded":
        with sqlite3.connect(tmp_path / ".tideflow" / "topics.db") as conn:
            conn.executescript(AUDIT)

    group = Group(tmp_path)
    group.start("w0")
    group.start("w1")
    killed: list[str] = []
    added = 2
    events = []
    for _ in range(BEATS):
        time.sleep(BEAT)
        group.reap()
        if not group.running:
            break
        if len(group.running) >= 2 and rng.random() < 0.6:
            victim = rng.choice(sorted(group.running))
            group.kill(victim)
            killed.append(victim)
            events.append(f"kill {victim}")
        else:
            # A new member, or a killed one back under its id (its last commit to finish).
            worker = killed.pop(0) if killed and rng.random() < 0.5 else f"w{added}"
            added += worker == f"w{added}"
            group.start(worker)
            events.append(f"add {worker}")
    print(f"F8 {broker}: {', '.join(events)}")
    assert any(e.startswith("kill") for e in events), events
    assert any(e.startswith("add") for e in events), events
    # Every id that ever ran comes back, so each finishes what its last checkpoint began.
    for worker in sorted(group.ever - set(group.running)):
        group.start(worker)
    deadline = time.monotonic() + 600
    while group.running and time.monotonic() < deadline:
        time.sleep(0.5)
        group.reap()
    assert not group.running, f"workers still running after 10 minutes: {events}"

    archived = read_output(tmp_path / "out")
    diff = compare(data, archived)
    assert diff.exact, f"{diff}; events: {events}"
    with sqlite3.connect(tmp_path / "totals.db") as conn:
        rows = conn.execute("SELECT key, total, n FROM totals").fetchall()
    totals = pl.DataFrame(rows, schema=["key", "total", "n"], orient="row").sort("key")
    expected = (
        data.group_by("key")
        .agg(pl.col("value").sum().alias("total"), pl.len().alias("n"))
        .sort("key")
    )
    assert_frame_equal(totals, expected, check_dtypes=False)

    if broker == "embedded":
        with sqlite3.connect(tmp_path / ".tideflow" / "topics.db") as conn:
            commits = conn.execute("SELECT member, owned FROM f8_commits").fetchall()
        assert len({member for member, _ in commits}) >= 3, "too few members committed"
        not_owned = [member for member, owned in commits if not owned]
        assert not not_owned, f"{len(not_owned)} commit(s) by members not owning the partition"
        # The audit can see a violation: a commit by a member that owns nothing.
        from tideflow.topics.embedded import open_log

        open_log(tmp_path / ".tideflow" / "topics.db").commit_offsets("f8", topic, {0: 1}, "x")
        with sqlite3.connect(tmp_path / ".tideflow" / "topics.db") as conn:
            flagged = conn.execute("SELECT owned FROM f8_commits WHERE member = 'x'").fetchall()
        assert flagged == [(0,)]
