"""The connectors under conformance test: how to feed each source, how to read back each sink.

A new connector gets the whole suite by adding one case here. Each source case writes N
records ``{"i": 0..N-1}`` (and optionally one undecodable record) upstream and returns the
source's settings; each sink case returns the sink's settings and a reader of what the
target shows now, plus what it promises on a replay (idempotent or at-least-once) and
whether it is two-phase (nothing visible before ``commit``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tests.messaging.conftest import need_server, quiet

from tideflow.connectors.amqp import AmqpSink, AmqpSource
from tideflow.connectors.files.sink import FileSink
from tideflow.connectors.files.source import FileSource
from tideflow.connectors.influxdb import InfluxSink
from tideflow.connectors.memory import MemorySink, MemorySource, collected
from tideflow.connectors.mqtt import MqttSink, MqttSource
from tideflow.connectors.redis import RedisSink, RedisStreamsSink, RedisStreamsSource
from tideflow.connectors.sql.sink import SqlSink
from tideflow.connectors.sql.source import SqlSource
from tideflow.core.contracts import Context, Sink, Source


@dataclass
class Env:
    """What a case may use: a folder, a unique name, a context factory, cleanups."""

    tmp: Path
    unique: str
    ctx: Callable[[str], Context]
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    influx_url: str | None = None


@dataclass(frozen=True)
class SourceCase:
    """A source and how to put records upstream."""

    name: str
    component: type[Source]
    feed: Callable[[Env, int, bool], dict[str, Any]]
    """(env, n, with_bad) -> settings; with_bad adds one record the source must dead-letter."""
    bad_input: bool = True
    """False when the source cannot receive an undecodable record (inline, typed tables)."""
    acks_lost_in_a_crash: bool = False
    """True when the broker may deliver again what the last checkpoint acknowledged: an MQTT
    PUBACK written just before a crash can die with the connection unread (QoS 1 is
    at-least-once), so those records may come twice; nothing else may."""


@dataclass(frozen=True)
class SinkCase:
    """A sink, how to read its target back, and what it promises."""

    name: str
    component: type[Sink]
    target: Callable[[Env], tuple[dict[str, Any], Callable[[], list[int]]]]
    """env -> (settings, reader of the `i` values visible now, cumulative)."""
    idempotent: bool
    """A replay of a committed batch changes nothing; else documented at-least-once."""
    two_phase: bool = False
    """Nothing is visible before `commit` (a crash before the checkpoint leaves no trace)."""
    bad_batch: pl.DataFrame | None = None
    """A batch with exactly one record the sink must dead-letter (i = 1000)."""


def records(n: int) -> list[dict[str, Any]]:
    """The N records every case moves."""
    return [{"i": i, "name": f"r{i}"} for i in range(n)]


# -- sources ----------------------------------------------------------------------------------


def feed_memory(env: Env, n: int, bad: bool) -> dict[str, Any]:
    return {"records": records(n), "batch_size": 7}


def feed_file(env: Env, n: int, bad: bool) -> dict[str, Any]:
    lines = ["i,name", *(f"{r['i']},{r['name']}" for r in records(n))]
    if bad:
        lines.insert(5, "not-a-number,bad")
    folder = env.tmp / "in"
    folder.mkdir(exist_ok=True)
    (folder / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": str(folder), "batch_size": 7, "schema_overrides": {"i": "int64"}}


def feed_sqlite(env: Env, n: int, bad: bool) -> dict[str, Any]:
    path = env.tmp / "src.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO t VALUES (:i, :name)", records(n))
    conn.close()
    return {"url": f"sqlite:///{path}", "table": "t", "order_by": ["i"], "batch_size": 7}


def feed_mqtt(env: Env, n: int, bad: bool) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    need_server("Mosquitto", 1883, ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"])
    settings = {
        "topics": [f"{env.unique}/#"],
        "client_id": env.unique,
        "qos": 1,
        "batch_size": 7,
        "max_wait": 0.1,
    }
    # Register the persistent session first, so messages published now wait for it.
    MqttSource(MqttSource.config_model.model_validate(settings)).open(env.ctx("reg"), None)

    def forget_session() -> None:
        src = MqttSource(
            MqttSource.config_model.model_validate({**settings, "clean_session": True})
        )
        src.open(env.ctx("forget"), None)
        src.close()

    env.cleanups.append(forget_session)
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    payloads = [json.dumps(r).encode() for r in records(n)] + ([b"{nope"] if bad else [])
    infos = [client.publish(f"{env.unique}/x", p, 1) for p in payloads]
    for info in infos:
        info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    return settings


def feed_redis_streams(env: Env, n: int, bad: bool) -> dict[str, Any]:
    import redis

    need_server("Redis", 6379, ["redis-server", "--daemonize", "yes"])
    stream = f"{env.unique}:stream"
    client = redis.Redis()
    pipe = client.pipeline()
    for r in records(n):
        pipe.xadd(stream, {"payload": json.dumps(r)})
    if bad:
        pipe.xadd(stream, {"payload": "{nope"})
    pipe.execute()
    client.close()

    def drop() -> None:
        with redis.Redis() as c:
            c.delete(stream)

    env.cleanups.append(drop)
    return {"stream": stream, "group": "g", "format": "json", "batch_size": 7, "max_wait": 0.1}


def feed_amqp(env: Env, n: int, bad: bool) -> dict[str, Any]:
    import pika

    need_server("RabbitMQ", 5672, ["rabbitmq-server", "-detached"])
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/%2F"))
    channel = connection.channel()
    channel.queue_declare(env.unique, durable=True)
    for r in records(n):
        channel.basic_publish("", env.unique, json.dumps(r).encode())
    if bad:
        channel.basic_publish("", env.unique, b"{nope")
    connection.close()

    def drop() -> None:
        with pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/%2F")) as c:
            c.channel().queue_delete(env.unique)

    env.cleanups.append(drop)
    return {"queue": env.unique, "batch_size": 7, "max_wait": 0.1}


SOURCES = [
    SourceCase("memory", MemorySource, feed_memory, bad_input=False),
    SourceCase("file", FileSource, feed_file),
    SourceCase("sql-sqlite", SqlSource, feed_sqlite, bad_input=False),
    SourceCase("mqtt", MqttSource, feed_mqtt, acks_lost_in_a_crash=True),
    SourceCase("redis_streams", RedisStreamsSource, feed_redis_streams),
    SourceCase("amqp", AmqpSource, feed_amqp),
]


# -- sinks ------------------------------------------------------------------------------------


def memory_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    def read() -> list[int]:
        frame = collected(env.unique)
        return frame["i"].to_list() if frame.height else []

    return {"collector": env.unique}, read


def file_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    out = env.tmp / "out"

    def read() -> list[int]:
        files = [
            p
            for p in out.rglob("*.ndjson")
            if not any(part.startswith(".") for part in p.relative_to(out).parts)
        ]
        return pl.concat([pl.read_ndjson(f) for f in files])["i"].to_list() if files else []

    return {"path": str(out), "format": "ndjson"}, read


def sqlite_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    path = env.tmp / "out.db"

    def read() -> list[int]:
        if not path.exists():
            return []
        with sqlite3.connect(path) as conn:
            try:
                rows = conn.execute("SELECT i FROM t").fetchall()
            except sqlite3.OperationalError:
                rows = []
        conn.close()
        return [r[0] for r in rows]

    settings = {
        "url": f"sqlite:///{path}",
        "table": "t",
        "mode": "upsert",
        "key": ["i"],
        "columns": {"name": {"type": "text", "nullable": False}},
    }
    return settings, read


def redis_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    import redis

    need_server("Redis", 6379, ["redis-server", "--daemonize", "yes"])
    prefix = f"{env.unique}:"

    def read() -> list[int]:
        with redis.Redis() as c:
            return [int(k.decode()[len(prefix) :]) for k in c.scan_iter(f"{prefix}*", count=1000)]

    def drop() -> None:
        with redis.Redis() as c:
            keys = list(c.scan_iter(f"{prefix}*", count=1000))
            if keys:
                c.delete(*keys)

    env.cleanups.append(drop)
    return {"key_column": "i", "key_prefix": prefix}, read


def streams_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    import redis

    need_server("Redis", 6379, ["redis-server", "--daemonize", "yes"])
    stream = f"{env.unique}:out"

    def read() -> list[int]:
        with redis.Redis() as c:
            return [int(f[b"i"]) for _, f in c.xrange(stream)]

    def drop() -> None:
        with redis.Redis() as c:
            c.delete(stream)

    env.cleanups.append(drop)
    return {"stream": stream}, read


def _consumer(env: Env, source: Source) -> Callable[[], list[int]]:
    """A reader that keeps consuming from a broker and accumulates what arrived."""
    seen: list[int] = []
    source.open(env.ctx("reader"), None)
    env.cleanups.append(source.close)

    def read() -> list[int]:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            batch = source.read_batch()
            assert batch is not None
            if batch.data.height:
                seen.extend(batch.data["i"].to_list())
                source.checkpointed(batch.position)
                deadline = time.monotonic() + 0.4
        return list(seen)

    return read


def mqtt_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    need_server("Mosquitto", 1883, ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"])
    reader = MqttSource(
        MqttSource.config_model.model_validate({"topics": [env.unique], "max_wait": 0.1})
    )
    return {"topic": env.unique}, _consumer(env, reader)


def amqp_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    need_server("RabbitMQ", 5672, ["rabbitmq-server", "-detached"])
    settings = {"routing_key": env.unique, "queue": env.unique}
    reader = AmqpSource(
        AmqpSource.config_model.model_validate({"queue": env.unique, "max_wait": 0.1})
    )

    def drop() -> None:
        import pika

        with pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/%2F")) as c:
            c.channel().queue_delete(env.unique)

    env.cleanups.append(drop)
    return settings, _consumer(env, reader)


def influx_target(env: Env) -> tuple[dict[str, Any], Callable[[], list[int]]]:
    import urllib.parse
    import urllib.request

    assert env.influx_url is not None
    db = env.unique

    def query(q: str) -> Any:
        data = urllib.parse.urlencode({"q": q, "db": db}).encode()
        with urllib.request.urlopen(f"{env.influx_url}/query", data=data, timeout=10) as r:
            return json.loads(r.read())

    query(f'CREATE DATABASE "{db}"')
    env.cleanups.append(lambda: query(f'DROP DATABASE "{db}"'))

    def read() -> list[int]:
        result = query('SELECT "i" FROM "m"')["results"][0]
        return [row[1] for row in result["series"][0]["values"]] if "series" in result else []

    settings = {
        "url": env.influx_url,
        "database": db,
        "measurement": "m",
        "fields": ["i", "name"],
        "time_column": "t",
        "precision": "s",
    }
    return settings, read


def _with_time(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("i").alias("t"))


BAD_NULL_NAME = pl.DataFrame(
    {"i": [1000, 1001], "name": [None, "ok"]}, schema={"i": pl.Int64, "name": pl.String}
)
BAD_NO_FIELDS = pl.DataFrame(
    {"i": [None, 1001], "name": [None, "ok"]}, schema={"i": pl.Int64, "name": pl.String}
)
BAD_NULL_KEY = pl.DataFrame(
    {"i": [None, 1001], "name": ["x", "ok"]}, schema={"i": pl.Int64, "name": pl.String}
)

SINKS = [
    SinkCase("memory", MemorySink, memory_target, idempotent=False, two_phase=True),
    SinkCase("file", FileSink, file_target, idempotent=False, two_phase=True),
    SinkCase("sql-sqlite", SqlSink, sqlite_target, idempotent=True, bad_batch=BAD_NULL_NAME),
    SinkCase("redis", RedisSink, redis_target, idempotent=True, bad_batch=BAD_NULL_KEY),
    SinkCase("redis_streams", RedisStreamsSink, streams_target, idempotent=False),
    SinkCase("mqtt", MqttSink, mqtt_target, idempotent=False),
    SinkCase("amqp", AmqpSink, amqp_target, idempotent=False),
    SinkCase("influxdb", InfluxSink, influx_target, idempotent=True, bad_batch=BAD_NO_FIELDS),
]
"""Sinks with `idempotent=False` are at-least-once by design (documented per connector):
brokers and append-only targets cannot take a message back, and memory/file rely on the
engine's two-phase commit, not on idempotent writes, for exactly-once."""


def prepare(case: SinkCase, frame: pl.DataFrame) -> pl.DataFrame:
    """The frame as the case's sink takes it (InfluxDB needs a time column)."""
    return _with_time(frame) if case.name == "influxdb" else frame


def quiet_after(source: Source) -> int:
    """Records a source still delivers (expected none after everything was acknowledged)."""
    return quiet(source, 0.4)
