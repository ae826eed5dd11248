"""The ``redis`` and ``redis_streams`` connectors against Redis on 127.0.0.1:6379."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from tests.messaging.conftest import drain, quiet

from tideflow.connectors.redis import (
    RedisSink,
    RedisSinkConfig,
    RedisStreamsSink,
    RedisStreamsSinkConfig,
    RedisStreamsSource,
    RedisStreamsSourceConfig,
)
from tideflow.core.contracts import Context


@pytest.fixture
def r(redis_url: str, unique: str) -> Iterator[redis.Redis]:
    """A plain client; every key under the test's prefix is deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(f"{unique}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_hash_values_by_key_with_ttl_and_null_keys_dead_lettered(
    r: redis.Redis, unique: str, make_ctx: Callable[..., Context]
) -> None:
    sink = RedisSink(RedisSinkConfig(key_column="sensor", key_prefix=f"{unique}:", ttl=60))
    sink.open(make_ctx(), None)
    try:
        batch = pl.DataFrame(
            {
                "sensor": ["a", "b", None, "a"],
                "temp": [1.5, 2.0, 3.0, 4.5],
                "tags": [["x"], None, [], ["y", "z"]],
            }
        )
        dead = sink.write_batch(batch)
        # A later value without tags removes the field.
        sink.write_batch(
            pl.DataFrame(
                {"sensor": ["b"], "temp": [7.0], "tags": [None]},
                schema_overrides={"tags": pl.List(pl.String)},
            )
        )
    finally:
        sink.close()
    assert dead is not None and dead.height == 1 and "null" in dead["reason"][0]
    assert r.hgetall(f"{unique}:a") == {b"temp": b"4.5", b"tags": b'["y","z"]'}
    assert r.hgetall(f"{unique}:b") == {b"temp": b"7.0"}
    assert 0 < r.ttl(f"{unique}:a") <= 60


def test_json_values_and_replay_is_idempotent(
    r: redis.Redis, unique: str, make_ctx: Callable[..., Context]
) -> None:
    sink = RedisSink(
        RedisSinkConfig(key_column="id", key_prefix=f"{unique}:", value="json", pipeline_size=7)
    )
    sink.open(make_ctx(), None)
    batch = pl.DataFrame({"id": list(range(50)), "name": [f"n{i}" for i in range(50)]})
    try:
        sink.write_batch(batch)
        sink.write_batch(batch)  # a replay of the same batch
    finally:
        sink.close()
    keys = sorted(r.scan_iter(f"{unique}:*"))
    assert len(keys) == 50
    assert json.loads(r.get(f"{unique}:7") or b"") == {"name": "n7"}


def streams_source(ctx: Context, stream: str, **settings: Any) -> RedisStreamsSource:
    src = RedisStreamsSource(
        RedisStreamsSourceConfig.model_validate(
            {"stream": stream, "group": "g", "max_wait": 0.1, **settings}
        )
    )
    src.open(ctx, None)
    return src


def test_streams_sink_and_source_round_trip_with_json_and_dead_letters(
    r: redis.Redis, unique: str, make_ctx: Callable[..., Context]
) -> None:
    stream = f"{unique}:s"
    sink = RedisStreamsSink(RedisStreamsSinkConfig(stream=stream, format="json"))
    sink.open(make_ctx(), None)
    sink.write_batch(pl.DataFrame({"n": list(range(30)), "s": ["v"] * 30}))
    sink.close()
    r.xadd(stream, {"payload": b"{broken"})
    src = streams_source(make_ctx(), stream, format="json")
    try:
        frame, position = drain(src, 31)
        src.checkpointed(position)
    finally:
        src.close()
    assert sorted(frame["n"].to_list()) == list(range(30))
    assert frame["id"].str.contains("-").all()
    assert r.xpending(stream, "g")["pending"] == 0


def test_streams_unacknowledged_entries_are_reread_after_a_crash(
    r: redis.Redis, unique: str, make_ctx: Callable[..., Context]
) -> None:
    stream = f"{unique}:c"
    for i in range(25):
        r.xadd(stream, {"i": str(i)})
    first = streams_source(make_ctx(), stream, batch_size=10)
    _, position = drain(first, 10)
    first.checkpointed(position)
    rest, _ = drain(first, 15)
    first.close()  # a crash: the last 15 were never acknowledged
    assert r.xpending(stream, "g")["pending"] == 15
    second = streams_source(make_ctx(), stream, batch_size=10)
    try:
        again, position = drain(second, 15)
        second.checkpointed(position)
        assert quiet(second, 0.3) == 0
    finally:
        second.close()
    assert again["i"].to_list() == rest["i"].to_list()
    assert r.xpending(stream, "g")["pending"] == 0


def test_streams_sink_maxlen_trims(
    r: redis.Redis, unique: str, make_ctx: Callable[..., Context]
) -> None:
    stream = f"{unique}:m"
    sink = RedisStreamsSink(RedisStreamsSinkConfig(stream=stream, maxlen=100, pipeline_size=50))
    sink.open(make_ctx(), None)
    try:
        for _ in range(10):
            sink.write_batch(pl.DataFrame({"x": list(range(100)), "y": [None] * 100}))
    finally:
        sink.close()
    assert 100 <= r.xlen(stream) < 1000
    first = r.xrange(stream, count=1)[0][1]
    assert first.keys() == {b"x"}  # nulls are omitted


def test_unreachable_redis_retries_then_fails(make_ctx: Callable[..., Context]) -> None:
    from tideflow.errors import PipelineError

    sink = RedisSink(
        RedisSinkConfig.model_validate(
            {
                "url": "redis://:s3cr3t-pass@127.0.0.1:1/0",
                "key_column": "k",
                "retry": {"first": 0.01, "cap": 0.02, "give_up_after": 0.1},
            }
        )
    )
    ctx = make_ctx()
    with pytest.raises(PipelineError, match="give_up_after") as err:
        sink.open(ctx, None)
    assert "s3cr3t-pass" not in str(err.value)
    assert ctx.metrics["retries"] >= 1


def test_sink_waits_out_a_redis_restart(tmp_path: Path, make_ctx: Callable[..., Context]) -> None:
    """A private redis-server is stopped mid-run and started again: the write is retried."""
    import shutil
    import socket
    import subprocess
    import threading
    import time

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port) as probe:
                    probe.ping()
                return proc
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    server = start()
    sink = RedisSink(
        RedisSinkConfig.model_validate(
            {
                "url": f"redis://127.0.0.1:{port}/0",
                "key_column": "k",
                "retry": {"first": 0.1, "cap": 0.3, "give_up_after": 30},
            }
        )
    )
    ctx = make_ctx()
    sink.open(ctx, None)
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        sink.write_batch(pl.DataFrame({"k": ["a"], "v": [1]}))
        server.kill()
        server.wait()
        timer = threading.Timer(1.0, lambda: restarted.append(start()))
        timer.start()
        sink.write_batch(pl.DataFrame({"k": ["b"], "v": [2]}))
        timer.join()
        with redis.Redis(port=port) as r:
            assert r.hgetall("b") == {b"v": b"2"}
    finally:
        sink.close()
        for proc in [server, *restarted]:
            proc.kill()
            proc.wait()
    assert ctx.metrics["retries"] >= 1
    assert ctx.metrics["outage_seconds"] > 0.5
