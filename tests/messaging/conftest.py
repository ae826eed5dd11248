"""Brokers on 127.0.0.1 for the messaging connectors, and helpers to drive components.

A fixture starts a broker that is installed but down; when it cannot be reached the test
fails in CI (``CI=true``) and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tideflow.core.contracts import Context, Source


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def need_server(name: str, port: int, start: list[str] | None = None) -> None:
    """Make sure a server listens on ``port``: start it when possible, else fail/skip."""
    if port_open(port):
        return
    if start and shutil.which(start[0]):
        subprocess.run(start, check=False, capture_output=True, timeout=60)
        for _ in range(40):
            if port_open(port):
                return
            time.sleep(0.25)
    message = f"{name} on 127.0.0.1:{port} is not reachable"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (needed in CI)")
    pytest.skip(message)


@pytest.fixture
def mqtt_broker() -> tuple[str, int]:
    """Mosquitto on 127.0.0.1:1883 (started when down)."""
    need_server("Mosquitto", 1883, ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"])
    return ("127.0.0.1", 1883)


@pytest.fixture
def redis_url() -> str:
    """Redis on 127.0.0.1:6379 (started when down)."""
    need_server("Redis", 6379, ["redis-server", "--daemonize", "yes", "--port", "6379"])
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def amqp_url() -> str:
    """RabbitMQ on 127.0.0.1:5672 (guest/guest; started when down)."""
    need_server("RabbitMQ", 5672, ["rabbitmq-server", "-detached"])
    return "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def unique() -> str:
    """A name no other test uses (topics, keys, queues)."""
    return f"tf{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., Context]:
    """A component context in tmp_path."""

    def make(name: str = "node") -> Context:
        return Context(
            pipeline="test",
            name=name,
            base_dir=tmp_path,
            state_dir=tmp_path / ".tideflow",
            stop_event=threading.Event(),
        )

    return make


def drain(source: Source, count: int, timeout: float = 10.0) -> tuple[pl.DataFrame, object]:
    """Read batches until ``count`` records (good + dead) arrived; the records and the last
    position. Fails the test after ``timeout`` seconds."""
    frames: list[pl.DataFrame] = []
    seen = 0
    position: object = None
    deadline = time.monotonic() + timeout
    while seen < count:
        assert time.monotonic() < deadline, f"only {seen} of {count} records within {timeout} s"
        batch = source.read_batch()
        assert batch is not None, f"source ended after {seen} of {count} records"
        seen += batch.size
        position = batch.position
        if batch.data.height:
            frames.append(batch.data)
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return frame, position


def quiet(source: Source, seconds: float = 1.0) -> int:
    """Records the source delivers within ``seconds`` (expected: none)."""
    seen = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = source.read_batch()
        if batch is None:
            break
        seen += batch.size
    return seen
