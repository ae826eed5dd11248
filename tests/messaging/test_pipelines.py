"""Broker connectors inside real pipeline runs: the engine's threads, checkpoints and final
acknowledgements, from YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest
import redis
from tests.sql.helpers import run_yaml

pytestmark = pytest.mark.usefixtures("redis_url", "amqp_url")

STREAM_TO_QUEUE = """
name: stream-to-queue
source:
  type: redis_streams
  stream: ${STREAM}
  group: tideflow
  format: json
  batch_size: 100
  max_wait: 0.1
  stop_after_idle: 0.5
steps:
  - {type: filter, expr: "n % 2 = 0"}
sink:
  type: amqp
  routing_key: ${QUEUE}
  queue: ${QUEUE}
checkpoint: {every_records: 250}
"""

QUEUE_TO_STREAM = """
name: queue-to-stream
source:
  type: amqp
  queue: ${QUEUE}
  batch_size: 100
  max_wait: 0.1
  stop_after_idle: 0.5
sink:
  type: redis_streams
  stream: ${STREAM}-out
  format: json
checkpoint: {every_records: 250}
"""


def test_stream_to_queue_and_back_acknowledges_everything(tmp_path: Path, unique: str) -> None:
    env = {"STREAM": f"{unique}:in", "QUEUE": unique}
    r = redis.Redis()
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/%2F"))
    channel = connection.channel()
    try:
        pipe = r.pipeline()
        for n in range(1000):
            pipe.xadd(env["STREAM"], {"payload": json.dumps({"n": n, "s": f"v{n}"})})
        pipe.xadd(env["STREAM"], {"payload": "not json"})
        pipe.execute()

        first = run_yaml(tmp_path, STREAM_TO_QUEUE, env)
        counts = first.counts
        assert counts["redis_streams"]["out"] == 1000
        assert counts["redis_streams"]["dead_lettered"] == 1
        assert counts["amqp"]["out"] == 500
        # Every entry acknowledged by the checkpoints, the last one included.
        assert r.xpending(env["STREAM"], "tideflow")["pending"] == 0

        second = run_yaml(tmp_path, QUEUE_TO_STREAM, env)
        assert second.counts["amqp"]["out"] == 500
        out = [json.loads(f[b"payload"]) for _, f in r.xrange(f"{env['STREAM']}-out")]
        assert sorted(m["n"] for m in out) == list(range(0, 1000, 2))
        assert out[0]["routing_key"] == unique
        # Every message acknowledged: nothing left in the queue, nothing unacked.
        assert channel.queue_declare(unique, passive=True).method.message_count == 0
    finally:
        r.delete(env["STREAM"], f"{env['STREAM']}-out")
        r.close()
        channel.queue_delete(unique)
        connection.close()
