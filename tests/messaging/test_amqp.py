"""The ``amqp`` source and sink against RabbitMQ on 127.0.0.1:5672."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pika
import polars as pl
import pytest
from tests.messaging.conftest import drain, quiet

from tideflow.connectors.amqp import AmqpSink, AmqpSinkConfig, AmqpSource, AmqpSourceConfig
from tideflow.core.contracts import Context
from tideflow.errors import PipelineError


@pytest.fixture
def channel(amqp_url: str, unique: str) -> Iterator[Any]:
    """A plain pika channel; the test's queues and exchanges are deleted afterwards."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = connection.channel()
    yield ch
    for name in (unique, f"{unique}.q", f"{unique}.x"):
        ch.queue_delete(name)
        ch.exchange_delete(name)
    connection.close()


def amqp_source(ctx: Context, **settings: Any) -> AmqpSource:
    src = AmqpSource(AmqpSourceConfig.model_validate({"max_wait": 0.2, **settings}))
    src.open(ctx, None)
    return src


def queued(channel: Any, queue: str) -> int:
    """Messages ready in ``queue``."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def test_sink_to_topic_exchange_and_source_with_routing_keys(
    channel: Any, unique: str, make_ctx: Callable[..., Context]
) -> None:
    exchange = f"{unique}.x"
    src = amqp_source(
        make_ctx(),
        queue=unique,
        exchange=exchange,
        exchange_type="topic",
        routing_keys=["sensor.*.temp"],
    )
    sink = AmqpSink(
        AmqpSinkConfig(exchange=exchange, exchange_type="topic", routing_key_column="rk")
    )
    sink.open(make_ctx("sink"), None)
    try:
        batch = pl.DataFrame(
            {"rk": [f"sensor.{i % 3}.temp" for i in range(60)], "v": list(range(60))}
        )
        sink.write_batch(batch)
        frame, position = drain(src, 60)
        src.checkpointed(position)
    finally:
        sink.close()
        src.close()
    assert sorted(frame["v"].to_list()) == list(range(60))
    assert frame.filter(pl.col("v") == 4)["routing_key"].to_list() == ["sensor.1.temp"]
    assert queued(channel, unique) == 0


def test_unacknowledged_messages_return_after_a_crash(
    channel: Any, unique: str, make_ctx: Callable[..., Context]
) -> None:
    channel.queue_declare(unique, durable=True)
    for i in range(30):
        channel.basic_publish("", unique, json.dumps({"i": i}).encode())
    first = amqp_source(make_ctx(), queue=unique, batch_size=10)
    _, position = drain(first, 10)
    first.checkpointed(position)
    rest, _ = drain(first, 20)
    first.close()  # the last 20 were never acknowledged: they go back to the queue
    second = amqp_source(make_ctx(), queue=unique, batch_size=10)
    try:
        again, position = drain(second, 20)
        second.checkpointed(position)
        assert quiet(second, 0.3) == 0
    finally:
        second.close()
    assert sorted(again["i"].to_list()) == sorted(rest["i"].to_list())
    assert queued(channel, unique) == 0


def test_text_payloads_and_dead_letters(
    channel: Any, unique: str, make_ctx: Callable[..., Context]
) -> None:
    channel.queue_declare(unique, durable=True)
    channel.basic_publish("", unique, b'{"ok": 1}')
    channel.basic_publish("", unique, b"[1, 2]")
    src = amqp_source(make_ctx(), queue=unique)
    try:
        frame, position = drain(src, 2)
        src.checkpointed(position)
    finally:
        src.close()
    assert frame["ok"].to_list() == [1]


def test_unroutable_messages_fail_the_run(unique: str, make_ctx: Callable[..., Context]) -> None:
    sink = AmqpSink(AmqpSinkConfig(exchange=f"{unique}.x", routing_key="nowhere"))
    sink.open(make_ctx(), None)
    try:
        with pytest.raises(PipelineError, match="matched no queue"):
            sink.write_batch(pl.DataFrame({"a": [1]}))
    finally:
        sink.close()


def test_sink_declares_its_queue_with_the_default_exchange(
    channel: Any, unique: str, make_ctx: Callable[..., Context]
) -> None:
    sink = AmqpSink(AmqpSinkConfig(routing_key=unique, queue=unique, format="text"))
    sink.open(make_ctx(), None)
    try:
        sink.write_batch(pl.DataFrame({"payload": ["a", "b", "c"]}))
    finally:
        sink.close()
    assert queued(channel, unique) == 3


def test_bad_password_is_not_retried_and_is_redacted(make_ctx: Callable[..., Context]) -> None:
    src = AmqpSource(
        AmqpSourceConfig(url="amqp://guest:wrong-pass-123@127.0.0.1:5672/%2F", queue="q")
    )
    with pytest.raises(PipelineError, match="password") as err:
        src.open(make_ctx(), None)
    assert "wrong-pass-123" not in str(err.value)


def _close_by_broker(before: set[int]) -> None:
    """Have RabbitMQ close the connection this process opened since ``before`` (by port)."""
    import shutil
    import subprocess

    import psutil

    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not available to close a connection")
    ports = {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == 5672
    } - before
    assert len(ports) == 1
    name = f"127.0.0.1:{ports.pop()} -> 127.0.0.1:5672"
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "name", "-q", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The text form of the pid is the one `close_connection` accepts.
    pid = next(line.split("\t")[0] for line in listed.stdout.splitlines() if line.endswith(name))
    subprocess.run(
        ["rabbitmqctl", "close_connection", pid, "tideflow test"],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_source_reconnects_after_the_broker_closes_it_and_gets_the_unacked_again(
    channel: Any, unique: str, make_ctx: Callable[..., Context]
) -> None:
    import psutil

    channel.queue_declare(unique, durable=True)
    for i in range(30):
        channel.basic_publish("", unique, json.dumps({"i": i}).encode())
    before = {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == 5672
    }
    src = AmqpSource(
        AmqpSourceConfig.model_validate(
            {
                "queue": unique,
                "batch_size": 10,
                "max_wait": 0.2,
                "retry": {"first": 0.1, "cap": 0.3},
            }
        )
    )
    ctx = make_ctx()
    src.open(ctx, None)
    try:
        head, position = drain(src, 10)
        src.checkpointed(position)
        unacked, _ = drain(src, 10)
        _close_by_broker(before)
        # After the reconnect the 10 unacknowledged messages come again, then the rest.
        rest, position = drain(src, 20, timeout=20)
        src.checkpointed(position)
        assert quiet(src, 0.5) == 0
    finally:
        src.close()
    assert ctx.metrics["retries"] >= 1
    assert sorted(rest["i"].to_list()) == sorted(unacked["i"].to_list() + list(range(20, 30)))
    assert sorted(head["i"].to_list() + rest["i"].to_list()) == list(range(30))
    assert queued(channel, unique) == 0
