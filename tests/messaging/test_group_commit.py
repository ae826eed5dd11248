"""Broker sources in pipelines whose checkpoint thresholds are an hour and a million records
away: every delivery is acknowledged by a group commit, not by the thresholds.

The acknowledgement is observed at the broker. RabbitMQ and MQTT 5 are told to keep at most
one message unacknowledged (``prefetch: 1``, ``receive_maximum: 1``): the next message is
delivered only once the last was acknowledged, so three messages getting through is three
acknowledgements. Redis shows its pending entries. Time only bounds the waits (safety).

`max_wait: 120` on the MQTT and AMQP sources shows that a batch is handed on as soon as the
connection goes quiet, not when `max_wait` runs out.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
import redis

from tideflow.connectors.memory import clear, collected
from tideflow.core.engine import Engine
from tideflow.core.result import RunResult
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text

THRESHOLDS = "checkpoint: {every_records: 1000000, every_seconds: 3600}"


def start(text: str, tmp_path: Path) -> tuple[Engine, Callable[[], RunResult]]:
    """Run the pipeline in a thread; returns the engine and a function that stops it."""
    engine = engine_for(load_pipeline_text(text, "p.yaml"), tmp_path)
    result: list[RunResult] = []
    runner = threading.Thread(target=lambda: result.append(engine.run()), daemon=True)
    runner.start()

    def stop() -> RunResult:
        engine.stop()
        runner.join(timeout=60)
        assert result, "the run did not end"
        return result[0]

    return engine, stop


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s (a safety bound)"
        time.sleep(0.01)


def visible(collector: str) -> list[int]:
    frame = collected(collector)
    return sorted(frame["i"].to_list()) if frame.height else []


def one_at_a_time(engine: Engine, collector: str, send: Callable[[int], None]) -> None:
    """Three messages; each is sent once the one before it is visible."""
    for i in range(3):
        send(i)
        wait_for(lambda i=i: visible(collector) == list(range(i + 1)), f"message {i} visible")
    assert engine.checkpoints >= 3


@pytest.fixture
def amqp_channel(amqp_url: str, unique: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(unique, durable=True)
    yield channel
    channel.queue_delete(unique)
    connection.close()


def test_amqp_deliveries_are_acknowledged_by_group_commits(
    tmp_path: Path, unique: str, amqp_channel: Any
) -> None:
    clear(unique)
    engine, stop = start(
        f"""
name: {unique}
source: {{type: amqp, queue: {unique}, prefetch: 1, max_wait: 120}}
sink: {{type: memory, collector: {unique}}}
{THRESHOLDS}
""",
        tmp_path,
    )
    # All three at once: with prefetch 1 the broker hands the next only after an ack.
    for i in range(3):
        amqp_channel.basic_publish("", unique, json.dumps({"i": i}).encode())
    try:
        wait_for(lambda: visible(unique) == [0, 1, 2], "three messages through prefetch 1")
        assert engine.checkpoints >= 3
    finally:
        stop()
    assert amqp_channel.queue_declare(unique, passive=True).method.message_count == 0


def test_mqtt_deliveries_are_acknowledged_by_group_commits(
    tmp_path: Path, unique: str, mqtt_broker: tuple[str, int]
) -> None:
    clear(unique)
    engine, stop = start(
        f"""
name: {unique}
source: {{type: mqtt, topics: ["{unique}/t"], qos: 1, receive_maximum: 1, max_wait: 120}}
sink: {{type: memory, collector: {unique}}}
{THRESHOLDS}
""",
        tmp_path,
    )
    publisher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect(*mqtt_broker)
    publisher.loop_start()
    try:
        wait_for(lambda: engine.graph.sources[0].component._suback is not None, "subscribed")
        # All three at once: with receive_maximum 1 the broker sends the next only after
        # the PUBACK of the last.
        infos = [publisher.publish(f"{unique}/t", json.dumps({"i": i}), qos=1) for i in range(3)]
        for info in infos:
            info.wait_for_publish(10)
        wait_for(lambda: visible(unique) == [0, 1, 2], "three messages through receive_maximum 1")
        assert engine.checkpoints >= 3
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        stop()


def test_redis_stream_entries_are_acknowledged_by_group_commits(
    tmp_path: Path, unique: str, redis_url: str
) -> None:
    clear(unique)
    client = redis.Redis.from_url(redis_url)
    engine, stop = start(
        f"""
name: {unique}
source: {{type: redis_streams, stream: {unique}, group: g, format: json}}
sink: {{type: memory, collector: {unique}}}
{THRESHOLDS}
""",
        tmp_path,
    )
    try:

        def send(i: int) -> None:
            client.xadd(unique, {"payload": json.dumps({"i": i})})

        one_at_a_time(engine, unique, send)
        wait_for(lambda: client.xpending(unique, "g")["pending"] == 0, "every entry XACKed")
    finally:
        stop()
        client.delete(unique)
        client.close()
