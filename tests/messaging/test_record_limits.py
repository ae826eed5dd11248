"""max_record_bytes on the broker sources: a message longer than the limit is dead-lettered
with its origin and size (and acknowledged with its batch); its neighbours decode.

Real brokers on 127.0.0.1 (Redis, Mosquitto, RabbitMQ) and the embedded topic log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pika
import polars as pl
import pytest
import redis

from tideflow.connectors.amqp import AmqpSource, AmqpSourceConfig
from tideflow.connectors.mqtt import MqttSource, MqttSourceConfig
from tideflow.connectors.redis import RedisStreamsSource, RedisStreamsSourceConfig
from tideflow.connectors.topic.admin import Admin
from tideflow.connectors.topic.settings import TopicSourceConfig
from tideflow.connectors.topic.source import TopicSource
from tideflow.core.contracts import Context, Source

LIMIT = 2048
LONG = b'{"n": -1, "blob": "' + b"x" * 10_000 + b'"}'  # 10,021 bytes


def drain_all(
    source: Source, count: int, timeout: float = 20.0
) -> tuple[list[Any], list[str], Any]:
    """Read until ``count`` records (good and dead): the ``n`` values, the dead-letter
    reasons and the last position."""
    values: list[Any] = []
    reasons: list[str] = []
    records: list[str] = []
    position: Any = None
    deadline = time.monotonic() + timeout
    while len(values) + len(reasons) < count:
        assert time.monotonic() < deadline, f"{len(values)} + {len(reasons)} of {count}"
        batch = source.read_batch()
        assert batch is not None
        position = batch.position
        if batch.data.height:
            values += batch.data["n"].to_list()
        if batch.dead is not None:
            reasons += batch.dead["reason"].to_list()
            records += batch.dead["record"].to_list()
    for record in records:  # the dead letter holds the size and the start, not the message
        parsed = orjson.loads(record)
        assert parsed["bytes"] == len(LONG) and parsed["head"].startswith('{"n": -1')
        assert len(record) < 600
    return values, reasons, position


def test_redis_streams_long_entry(
    redis_url: str, unique: str, make_ctx: Callable[..., Context]
) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = f"{unique}:limits"
    try:
        client.xadd(stream, {"payload": b'{"n": 1}'})
        long_id = client.xadd(stream, {"payload": LONG}).decode()
        client.xadd(stream, {"payload": b'{"n": 2}'})
        src = RedisStreamsSource(
            RedisStreamsSourceConfig.model_validate(
                {
                    "stream": stream,
                    "group": "g",
                    "format": "json",
                    "max_wait": 0.1,
                    "max_record_bytes": LIMIT,
                }
            )
        )
        src.open(make_ctx(), None)
        try:
            values, reasons, position = drain_all(src, 3)
            src.checkpointed(position)
        finally:
            src.close()
        assert sorted(values) == [1, 2]
        assert reasons == [
            f"redis stream {stream} entry {long_id}: {len(LONG):,} bytes, longer than "
            f"max_record_bytes ({LIMIT:,}); skipped unread"
        ]
        assert client.xpending(stream, "g")["pending"] == 0  # acknowledged with its batch
    finally:
        client.delete(stream)
        client.close()


def test_mqtt_long_message(mqtt_broker: Any, unique: str, make_ctx: Callable[..., Context]) -> None:
    src = MqttSource(
        MqttSourceConfig.model_validate(
            {"topics": [f"{unique}/#"], "max_wait": 0.2, "max_record_bytes": LIMIT}
        )
    )
    src.open(make_ctx(), None)
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        for payload in (b'{"n": 1}', LONG, b'{"n": 2}'):
            client.publish(f"{unique}/a", payload, 1).wait_for_publish(5)
        values, reasons, _ = drain_all(src, 3)
    finally:
        client.disconnect()
        client.loop_stop()
        src.close()
    assert sorted(values) == [1, 2]
    assert len(reasons) == 1
    assert reasons[0].startswith(f"mqtt topic {unique}/a message ")
    assert reasons[0].endswith(
        f": {len(LONG):,} bytes, longer than max_record_bytes ({LIMIT:,}); skipped unread"
    )


@pytest.fixture
def channel(amqp_url: str, unique: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = connection.channel()
    yield ch
    ch.queue_delete(unique)
    connection.close()


def test_amqp_long_message(channel: Any, unique: str, make_ctx: Callable[..., Context]) -> None:
    channel.queue_declare(unique, durable=True)
    for payload in (b'{"n": 1}', LONG, b'{"n": 2}'):
        channel.basic_publish("", unique, payload)
    src = AmqpSource(
        AmqpSourceConfig.model_validate(
            {"queue": unique, "max_wait": 0.2, "max_record_bytes": LIMIT}
        )
    )
    src.open(make_ctx(), None)
    try:
        values, reasons, position = drain_all(src, 3)
        src.checkpointed(position)
    finally:
        src.close()
    assert sorted(values) == [1, 2]
    assert len(reasons) == 1 and reasons[0].startswith(f"amqp queue {unique} delivery ")
    assert f"{len(LONG):,} bytes, longer than max_record_bytes ({LIMIT:,})" in reasons[0]
    assert channel.queue_declare(unique, passive=True).method.message_count == 0


def test_topic_long_message(tmp_path: Any, unique: str, make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    admin = Admin(None, ctx.state_dir)
    admin.produce(unique, [b'{"n": 1}', LONG, b'{"n": 2}'])
    src = TopicSource(
        TopicSourceConfig.model_validate(
            {"topic": unique, "group": "g", "broker": "embedded", "max_record_bytes": LIMIT}
        )
    )
    src.open(ctx, None)
    try:
        values, reasons, _ = drain_all(src, 3)
    finally:
        src.close()
    assert sorted(values) == [1, 2]
    assert reasons == [
        f"topic {unique} partition 0 offset 1: {len(LONG):,} bytes, longer than "
        f"max_record_bytes ({LIMIT:,}); skipped unread"
    ]


def test_decode_payloads_without_origins_names_the_message() -> None:
    from tideflow.connectors.messages import decode_payloads

    frame, dead = decode_payloads([b'{"n": 1}', LONG], "json", "payload", None, LIMIT)
    assert frame["n"].to_list() == [1]
    assert dead is not None
    assert dead["reason"][0].startswith("message 2 of its batch: ")
    assert json.loads(dead["record"][0])["bytes"] == len(LONG)
    assert isinstance(frame, pl.DataFrame)
