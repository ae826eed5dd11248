"""The ``mqtt`` connectors against a private Mosquitto: username/password, TLS, and a broker
restart in the middle of a stream (reconnect with backoff)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import polars as pl
import pytest
from tests.messaging.conftest import drain, quiet

from tideflow.connectors.mqtt import MqttSink, MqttSinkConfig, MqttSource, MqttSourceConfig
from tideflow.core.contracts import Context
from tideflow.errors import PipelineError

PASSWORD = "broker-pass-9f3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """A private Mosquitto: a password listener, a TLS listener, and its CA."""

    folder: Path
    port: int
    tls_port: int
    ca: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.folder / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        for port in (self.port, self.tls_port):
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, "private mosquitto did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto on two free ports, with a password file and a self-signed CA."""
    for tool in ("mosquitto", "mosquitto_passwd", "openssl"):
        if shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} is needed in CI")
            pytest.skip(f"{tool} is not installed")
    run = lambda *args: subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tideflow-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    run("mosquitto_passwd", "-b", "-c", "passwd", "sensor", PASSWORD)
    port, tls_port = free_port(), free_port()
    (tmp_path / "mosquitto.conf").write_text(
        # As root, Mosquitto would switch to its own user, who cannot read the test folder.
        ("user root\n" if os.geteuid() == 0 else "")
        + f"""per_listener_settings true
persistence false
listener {port} 127.0.0.1
allow_anonymous false
password_file {tmp_path}/passwd
listener {tls_port} 127.0.0.1
allow_anonymous true
cafile {tmp_path}/ca.crt
certfile {tmp_path}/server.crt
keyfile {tmp_path}/server.key
""",
        encoding="utf-8",
    )
    b = Broker(tmp_path, port, tls_port, tmp_path / "ca.crt")
    b.start()
    yield b
    b.stop()


def publish(port: int, topic: str, payloads: list[bytes], **auth: Any) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    if auth:
        client.username_pw_set(auth["username"], auth["password"])
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, p, 1) for p in payloads]
    for info in infos:
        info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_username_and_password(broker: Broker, make_ctx: Callable[..., Context]) -> None:
    src = MqttSource(
        MqttSourceConfig(port=broker.port, topics=["t"], username="sensor", password=PASSWORD)
    )
    src.open(make_ctx(), None)
    try:
        publish(broker.port, "t", [b'{"a": 1}'], username="sensor", password=PASSWORD)
        frame, _ = drain(src, 1)
    finally:
        src.close()
    assert frame["a"].to_list() == [1]


def test_wrong_password_fails_at_once_without_the_secret(
    broker: Broker, make_ctx: Callable[..., Context]
) -> None:
    src = MqttSource(
        MqttSourceConfig(port=broker.port, topics=["t"], username="sensor", password="nope-nope-1")
    )
    ctx = make_ctx()
    with pytest.raises(PipelineError, match="refused the connection") as err:
        src.open(ctx, None)
    assert "nope-nope-1" not in str(err.value)
    assert "retries" not in ctx.metrics  # refused credentials are not retried


def test_tls_with_the_servers_ca(broker: Broker, make_ctx: Callable[..., Context]) -> None:
    tls = {"ca_file": str(broker.ca)}
    src = MqttSource(
        MqttSourceConfig.model_validate({"port": broker.tls_port, "topics": ["s"], "tls": tls})
    )
    sink = MqttSink(
        MqttSinkConfig.model_validate({"port": broker.tls_port, "topic": "s", "tls": tls})
    )
    src.open(make_ctx(), None)
    sink.open(make_ctx("sink"), None)
    try:
        sink.write_batch(pl.DataFrame({"n": [1, 2, 3]}))
        sink.flush()
        frame, _ = drain(src, 3)
    finally:
        sink.close()
        src.close()
    assert sorted(frame["n"].to_list()) == [1, 2, 3]


def test_tls_refuses_an_unknown_certificate(
    broker: Broker, make_ctx: Callable[..., Context]
) -> None:
    config = MqttSourceConfig.model_validate(
        {
            "port": broker.tls_port,
            "topics": ["s"],
            "tls": {},  # system CAs do not know the test CA
            "retry": {"first": 0.01, "cap": 0.02, "give_up_after": 0.2},
        }
    )
    with pytest.raises(PipelineError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        MqttSource(config).open(make_ctx(), None)


def test_source_reconnects_with_backoff_after_a_broker_restart(
    broker: Broker, make_ctx: Callable[..., Context]
) -> None:
    src = MqttSource(
        MqttSourceConfig.model_validate(
            {
                "port": broker.port,
                "topics": ["r"],
                "username": "sensor",
                "password": PASSWORD,
                "max_wait": 0.1,
                "retry": {"first": 0.1, "cap": 0.3, "give_up_after": 30},
            }
        )
    )
    ctx = make_ctx()
    src.open(ctx, None)
    try:
        publish(broker.port, "r", [b'{"n": 1}'], username="sensor", password=PASSWORD)
        drain(src, 1)
        broker.stop()
        restart = threading.Timer(1.0, broker.start)
        restart.start()
        # Reading goes on through the outage: the source retries until the broker is back.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert src.read_batch() is not None
        restart.join()
        publish(
            broker.port, "r", [json.dumps({"n": 2}).encode()], username="sensor", password=PASSWORD
        )
        frame, _ = drain(src, 1)
    finally:
        src.close()
    assert frame["n"].to_list() == [2]
    assert ctx.metrics["retries"] >= 1
    assert ctx.metrics["outage_seconds"] > 0.5


def test_sink_publishes_what_it_queued_during_an_outage(
    broker: Broker, make_ctx: Callable[..., Context]
) -> None:
    auth = {"port": broker.port, "username": "sensor", "password": PASSWORD}
    retry = {"first": 0.1, "cap": 0.3, "give_up_after": 30}
    src = MqttSource(
        MqttSourceConfig.model_validate({**auth, "topics": ["o"], "max_wait": 0.1, "retry": retry})
    )
    sink = MqttSink(MqttSinkConfig.model_validate({**auth, "topic": "o", "retry": retry}))
    src.open(make_ctx(), None)
    sink_ctx = make_ctx("sink")
    sink.open(sink_ctx, None)
    try:
        broker.stop()
        sink.write_batch(pl.DataFrame({"n": list(range(50))}))  # queued by paho meanwhile
        broker.start()
        quiet(src, 1.0)  # the source reconnects and subscribes again
        sink.flush()  # reconnects; paho sends the queued messages; waits for every PUBACK
        frame, _ = drain(src, 50)
    finally:
        sink.close()
        src.close()
    assert sorted(frame["n"].to_list()) == list(range(50))
