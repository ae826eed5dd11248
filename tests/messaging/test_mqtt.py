"""The ``mqtt`` source and sink against Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import polars as pl
import pytest
from tests.messaging.conftest import drain, quiet

from tideflow.connectors.mqtt import MqttSink, MqttSinkConfig, MqttSource, MqttSourceConfig
from tideflow.core.contracts import Context
from tideflow.errors import PipelineError
from tideflow.secrets import redact

pytestmark = pytest.mark.usefixtures("mqtt_broker")


def publish(messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    """Publish with an independent paho client and wait for every ack."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def source(ctx: Context, **settings: Any) -> MqttSource:
    src = MqttSource(MqttSourceConfig.model_validate({"max_wait": 0.2, **settings}))
    src.open(ctx, None)
    return src


def test_wildcards_json_topic_column_and_dead_letters(
    make_ctx: Callable[..., Context], unique: str
) -> None:
    src = source(make_ctx(), topics=[f"{unique}/+/temp", f"{unique}/hall/#"])
    try:
        publish(
            [(f"{unique}/s{i}/temp", json.dumps({"v": i}).encode()) for i in range(5)]
            + [(f"{unique}/hall/a/b", b'{"v": 99}'), (f"{unique}/s9/temp", b"not json")]
            + [(f"{unique}/other", b'{"v": -1}')]
        )
        frame, _ = drain(src, 7)
    finally:
        src.close()
    assert sorted(frame["v"].to_list()) == [0, 1, 2, 3, 4, 99]
    assert set(frame["topic"]) == {f"{unique}/s{i}/temp" for i in range(5)} | {f"{unique}/hall/a/b"}


def test_text_and_bytes_payloads(make_ctx: Callable[..., Context], unique: str) -> None:
    text = source(make_ctx(), topics=[f"{unique}/t"], format="text", topic_column=None)
    raw = source(make_ctx(), topics=[f"{unique}/t"], format="bytes", payload_column="body")
    try:
        publish([(f"{unique}/t", "héllo".encode()), (f"{unique}/t", b"\xff\x00")])
        got_text, _ = drain(text, 2)
        got_raw, _ = drain(raw, 2)
    finally:
        text.close()
        raw.close()
    assert got_text.columns == ["payload"] and got_text["payload"].to_list() == ["héllo"]
    assert got_raw.schema["body"] == pl.Binary
    assert got_raw["body"].to_list() == ["héllo".encode(), b"\xff\x00"]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_every_qos_delivers(make_ctx: Callable[..., Context], unique: str, qos: int) -> None:
    src = source(make_ctx(), topics=[f"{unique}/q"], qos=qos)
    try:
        publish([(f"{unique}/q", json.dumps({"i": i}).encode()) for i in range(50)], qos=qos)
        frame, position = drain(src, 50)
        src.checkpointed(position)
        assert quiet(src, 0.3) == 0
    finally:
        src.close()
    assert sorted(frame["i"].to_list()) == list(range(50))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_unacknowledged_messages_are_redelivered_after_a_crash(
    make_ctx: Callable[..., Context], unique: str, protocol: str
) -> None:
    settings = {
        "protocol": protocol,
        "topics": [f"{unique}/r"],
        "client_id": f"{unique}-src",
        "qos": 1,
        "batch_size": 10,
    }
    first = source(make_ctx(), **settings)
    publish([(f"{unique}/r", json.dumps({"i": i}).encode()) for i in range(20)])
    frame, position = drain(first, 10)
    batch_one = frame.height
    first.checkpointed(position)  # the first batch is durable
    rest, _ = drain(first, 20 - batch_one)
    first.close()  # closed without a checkpoint for the rest: a crash before it
    second = source(make_ctx(), **settings)
    try:
        again, position = drain(second, 20 - batch_one)
        second.checkpointed(position)
        assert quiet(second, 0.5) == 0
    finally:
        second.close()
    assert sorted(again["i"].to_list()) == sorted(rest["i"].to_list())
    # Acknowledged: a third session gets nothing.
    third = source(make_ctx(), **settings)
    try:
        assert quiet(third, 0.8) == 0
    finally:
        third.close()
        cleanup = source(make_ctx(), **{**settings, "clean_session": True})
        cleanup.close()


def test_persistent_session_keeps_messages_published_while_down(
    make_ctx: Callable[..., Context], unique: str
) -> None:
    settings = {"topics": [f"{unique}/p"], "client_id": f"{unique}-p"}
    source(make_ctx(), **settings).close()  # registers the subscription
    publish([(f"{unique}/p", b'{"x": 1}')])
    src = source(make_ctx(), **settings)
    try:
        frame, position = drain(src, 1)
        src.checkpointed(position)
    finally:
        src.close()
        source(make_ctx(), **{**settings, "clean_session": True}).close()
    assert frame["x"].to_list() == [1]


def test_sink_publishes_json_by_topic_column_and_the_source_reads_it(
    make_ctx: Callable[..., Context], unique: str
) -> None:
    src = source(make_ctx(), topics=[f"{unique}/#"])
    sink = MqttSink(MqttSinkConfig(topic_column="t", qos=1))
    sink.open(make_ctx("sink"), None)
    try:
        batch = pl.DataFrame(
            {"t": [f"{unique}/a", f"{unique}/b"] * 50, "n": list(range(100)), "s": ["x"] * 100}
        )
        sink.write_batch(batch)
        sink.flush()
        frame, _ = drain(src, 100)
    finally:
        sink.close()
        src.close()
    assert sorted(frame["n"].to_list()) == list(range(100))
    assert "t" not in frame.columns
    assert frame.filter(pl.col("n") == 1)["topic"].to_list() == [f"{unique}/b"]


def test_source_ends_after_idle_when_asked(make_ctx: Callable[..., Context], unique: str) -> None:
    src = source(make_ctx(), topics=[f"{unique}/idle"], stop_after_idle=0.5)
    try:
        started = time.monotonic()
        while src.read_batch() is not None:
            # a safety bound only (the source ends after 0.5 s of quiet): a busy CI machine
            # may take seconds to hand a batch over, which is not what this test is about
            assert time.monotonic() - started < 120
    finally:
        src.close()
    assert src.bounded


def test_unreachable_broker_is_retried_then_fails_redacted(
    make_ctx: Callable[..., Context], unique: str
) -> None:
    # Refused credentials are tested on a private broker (test_mqtt_private_broker.py).
    config = MqttSourceConfig.model_validate(
        {
            "topics": ["x"],
            "port": 1,
            "username": "u",
            "password": "hunter2-secret",
            "retry": {"first": 0.01, "cap": 0.02, "give_up_after": 0.1},
        }
    )
    src = MqttSource(config)
    ctx = make_ctx()
    with pytest.raises(PipelineError, match="give_up_after") as err:
        src.open(ctx, None)
    assert "hunter2-secret" not in redact(str(err.value) + "hunter2-secret")
    assert ctx.metrics["retries"] >= 1


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="client_id"):
        MqttSourceConfig.model_validate({"topics": ["a"], "clean_session": False})
    with pytest.raises(ValueError, match="wildcards"):
        MqttSinkConfig.model_validate({"topic": "a/+"})
    with pytest.raises(ValueError, match="exactly one"):
        MqttSinkConfig.model_validate({})
