"""Group members on Kafka (tansu) hand partitions over soon (issue 15 item 3).

A worker killed with SIGKILL sends no LeaveGroup: its partitions move once the broker
expires it, at the session timeout (tideflow's default 10 s; librdkafka's 45 s). A worker
stopped with SIGTERM leaves the group, so its partitions move at once. A member that takes
longer than ``max.poll.interval.ms`` over a batch (tideflow's default 15 s; librdkafka's 5
minutes, which a rebalance may wait for a member that does not rejoin) leaves the group and
rejoins, and the run goes on, exactly. Times are printed, and only bounded generously.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from tideflow.state.locate import open_state_store

PARTITIONS = 4
DEADLINE = 45.0
"""Seconds the survivor may take to read what was published to the dead worker's
partitions after the kill (measured: 18-21 s with the defaults, 13-14 s with a 6 s session
timeout; tansu was reported to take 5 minutes with librdkafka's poll interval)."""

PIPELINE = """
name: takeover
source: {{type: topic, topic: {topic}, group: {group}, broker: "kafka://{broker}",
         batch_size: 20, poll_timeout: 0.2}}
sinks:
  - {{type: sql, url: "sqlite:///seen.db", table: seen, mode: upsert, key: [id]}}
checkpoint: {{every_seconds: 0.5}}
"""


def owners(folder: Path) -> dict[str, str]:
    """Partition -> the worker holding it, as the shared state store says."""
    path = folder / ".tideflow" / "state.db"
    if not path.exists():
        return {}
    store = open_state_store(str(path), folder)
    try:
        return {part: owner for _, part, owner, _, _ in store.partition_states("takeover")}
    except Exception:  # noqa: BLE001 - the store may still be being created
        return {}
    finally:
        store.close()


def seen(folder: Path) -> set[int]:
    """Ids the sql sink has committed."""
    path = folder / "seen.db"
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return {int(row[0]) for row in conn.execute("SELECT id FROM seen")}
    except sqlite3.OperationalError:  # no table yet
        return set()


def publish(broker: str, topic: str, ids: range) -> None:
    """One record per id, spread over every partition by explicit partition number."""
    import confluent_kafka

    producer = confluent_kafka.Producer({"bootstrap.servers": broker})
    for i in ids:
        producer.produce(topic, orjson.dumps({"id": i}), partition=i % PARTITIONS)
    assert producer.flush(30) == 0


def wait_for(check: object, timeout: float, what: str) -> float:
    """Poll ``check()`` until true; the seconds it took. Fails with ``what`` on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_killed_workers_partitions_reach_the_live_ones(tmp_path: Path, kafka_broker: str) -> None:
    import confluent_kafka.admin

    topic, group = f"takeover-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": kafka_broker})
    for future in admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, PARTITIONS, 1)]
    ).values():
        future.result(30)
    (tmp_path / "p.yaml").write_text(
        PIPELINE.format(topic=topic, group=group, broker=kafka_broker), encoding="utf-8"
    )
    publish(kafka_broker, topic, range(0, 40))
    env = {**os.environ, "KAFKA_BROKER": ""}
    logs: dict[str, Any] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        logs[name] = (tmp_path / f"{name}.log").open("w")
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tideflow", "run", "p.yaml", "--worker-id", name],
            cwd=tmp_path,
            env=env,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
        )

    try:
        start("a")
        start("b")
        wait_for(
            lambda: (
                set(owners(tmp_path).values()) == {"a", "b"} and len(owners(tmp_path)) == PARTITIONS
            ),
            120,
            "both workers to hold partitions",
        )
        wait_for(lambda: seen(tmp_path) == set(range(40)), 60, "the first records")
        held_by_b = sorted(p for p, owner in owners(tmp_path).items() if owner == "b")
        assert held_by_b, "b held no partition: the kill would prove nothing"
        procs["b"].send_signal(signal.SIGKILL)
        procs["b"].wait(10)
        # A replacement joins at once, as the supervisor's restart does: the group's
        # rebalance must not wait minutes for the dead member.
        start("c")
        publish(kafka_broker, topic, range(40, 80))
        took = wait_for(
            lambda: seen(tmp_path) == set(range(80)),
            DEADLINE,
            f"the live workers to read the partitions {held_by_b} of the killed worker b",
        )
        print(
            f"\npartitions {held_by_b} of the killed worker were read {took:.1f} s after the kill"
        )
        assert "b" not in set(owners(tmp_path).values())
        # SIGTERM ends a worker cleanly (a final checkpoint, exit code 0) and it leaves the
        # group: the other one reads its partitions long before a session timeout.
        procs["c"].send_signal(signal.SIGTERM)
        assert procs["c"].wait(60) == 0
        publish(kafka_broker, topic, range(80, 120))
        took = wait_for(
            lambda: seen(tmp_path) == set(range(120)), DEADLINE, "a to read c's partitions"
        )
        print(f"after c's SIGTERM, a read every partition {took:.1f} s later")
        assert set(owners(tmp_path).values()) == {"a"}
        assert procs["a"].poll() is None, "the live worker ended"
        procs["a"].send_signal(signal.SIGTERM)
        assert procs["a"].wait(60) == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for out in logs.values():
            out.close()


SLOW = """
name: slowpoke
source: {{type: topic, topic: {topic}, group: {group}, broker: "kafka://{broker}",
         batch_size: 20, stop_at_end: true, idle_seconds: 3,
         options: {{max.poll.interval.ms: 6000, session.timeout.ms: 6000}}}}
steps:
  - {{type: python, function: "slow.py:slow", mode: batch}}
sinks:
  - {{type: sql, url: "sqlite:///seen.db", table: seen, transactional: true}}
queue_size: 1
"""

SLOW_STEP = """
import time

batches = [0]

def slow(batch):
    batches[0] += 1
    if batches[0] == 1:
        time.sleep(9)  # past max.poll.interval.ms (6 s): the member leaves the group
    return batch
"""


def test_a_batch_slower_than_the_poll_interval_rejoins_and_loses_nothing(
    tmp_path: Path, kafka_broker: str
) -> None:
    """Before, the consumer's "maximum poll interval exceeded" event failed the run."""
    import confluent_kafka.admin

    topic, group = f"slow-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": kafka_broker})
    for future in admin.create_topics(
        [confluent_kafka.admin.NewTopic(topic, PARTITIONS, 1)]
    ).values():
        future.result(30)
    (tmp_path / "slow.py").write_text(SLOW_STEP, encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        SLOW.format(topic=topic, group=group, broker=kafka_broker), encoding="utf-8"
    )
    # More batches than the engine buffers (queue_size 1): the source waits, not polling.
    publish(kafka_broker, topic, range(200))
    run = subprocess.run(
        [sys.executable, "-m", "tideflow", "run", "p.yaml"],
        cwd=tmp_path,
        env={**os.environ, "KAFKA_BROKER": ""},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "left the group and rejoins" in run.stderr, run.stderr[-3000:]
    with sqlite3.connect(tmp_path / "seen.db") as conn:
        ids = sorted(int(row[0]) for row in conn.execute("SELECT id FROM seen"))
    assert ids == list(range(200))  # every record once: none lost, none twice
