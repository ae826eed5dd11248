"""A checkpoint's offset commit must not deadlock with a rebalance callback (tansu).

In a group worker the source thread polls Kafka holding the consumer's lock; a rebalance
callback runs inside that poll and waits for the engine's main thread to hand the
partitions over. If the main thread was at that moment waiting for the same lock to commit a
checkpoint's offsets, neither could go on: a worker of `tideflow run --workers` hung for
good (found as a 300 s timeout of `test_workers.py[kafka]` on a busy machine). Here the main
thread commits in a loop while the source thread polls, a second member joins, and the
revoke callback waits for the main thread as the engine does.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tideflow.connectors.kafka.consumer import KafkaConsumer

pytestmark = pytest.mark.timeout(300)


class Listener:
    """Stands for the engine: a revoke waits until the main thread has handled it."""

    def __init__(self) -> None:
        self.in_revoke = threading.Event()
        self.handled = threading.Event()
        self.revokes = 0

    def assigned(self, partitions: list[str]) -> dict[str, int]:
        return {}

    def revoked(self, partitions: list[str]) -> None:
        self.revokes += 1
        self.in_revoke.set()
        self.handled.wait(150)  # the test fails long before, if it comes to that
        self.handled.clear()


def test_a_commit_waiting_for_the_poll_lock_defers_to_a_rebalance(kafka_broker: str) -> None:
    import confluent_kafka

    topic, group = f"rebalance-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": kafka_broker})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic, num_partitions=2)])[topic].result(30)
    options = {"max.poll.interval.ms": 15000}
    listener = Listener()
    first = KafkaConsumer(kafka_broker, [topic], group, "earliest", options, listener)
    first.start({})
    stop = threading.Event()

    def source_thread() -> None:
        while not stop.is_set():
            first.poll(100, 0.5)

    polling = threading.Thread(target=source_thread, daemon=True)
    polling.start()
    second: KafkaConsumer | None = None
    second_stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while not first.active:
            assert time.monotonic() < deadline, "the first member was never assigned"
            time.sleep(0.05)
        listener.revokes = 0
        second = KafkaConsumer(kafka_broker, [topic], group, "earliest", options, None)
        second.start({})
        joining = threading.Thread(
            target=lambda: [second.poll(100, 0.5) for _ in iter(second_stop.is_set, True)],
            daemon=True,
        )
        joining.start()

        # The main thread: commit checkpoints continuously (mostly waiting for the lock the
        # polling thread holds), and hand over the revoke when it comes, as the engine does.
        def main_thread() -> None:
            while not listener.in_revoke.is_set():
                first.commit({f"{topic}:0": 0})
            first.commit({f"{topic}:0": 0})  # during the callback: deferred, not blocked
            listener.in_revoke.clear()
            listener.handled.set()

        main = threading.Thread(target=main_thread, daemon=True)
        main.start()
        main.join(60)  # seconds, where a working hand-over takes well under one
        assert not main.is_alive(), "the main thread's commit deadlocked with the rebalance"
        assert listener.revokes >= 1
    finally:
        stop.set()
        second_stop.set()
        listener.handled.set()
        polling.join(30)
        first.close()
        if second is not None:
            second.close()
