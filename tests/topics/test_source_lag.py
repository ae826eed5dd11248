"""Topic and kafka sources report how far behind they are: `lag_records` is what was produced
minus what was consumed, counted here independently of the source, on the embedded log and
on a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from tideflow.connectors.topic.settings import TopicSinkConfig, TopicSourceConfig
from tideflow.connectors.topic.sink import TopicSink
from tideflow.connectors.topic.source import TopicSource
from tideflow.core.contracts import Context


def context(tmp_path: Path, name: str) -> Context:
    return Context(
        pipeline="lag",
        name=name,
        base_dir=tmp_path,
        state_dir=tmp_path / ".tideflow",
        stop_event=threading.Event(),
    )


def partitions(broker: str) -> int:
    """Three partitions on the embedded log, whose figure is exact at every batch. One on
    Kafka: its figure uses the high watermark of the latest fetch response, and with one
    partition the response that brought a batch also brought that partition's watermark, so
    the figure is exact there too (with several, a partition not fetched since the last
    produce would show its older watermark for a moment)."""
    return 3 if broker == "embedded" else 1


def produce(tmp_path: Path, broker: str, topic: str, count: int, start: int = 0) -> None:
    """Write ``count`` keyed records through the topic sink and commit them."""
    # Driven by hand, without an engine and its state store: the idempotent producer.
    sink = TopicSink(
        TopicSinkConfig(  # type: ignore[call-arg]
            topic=topic, broker=broker, key="key", partitions=partitions(broker), exactly_once=False
        )
    )
    sink.open(context(tmp_path, "sink"), None)
    ids = list(range(start, start + count))
    sink.write_batch(pl.DataFrame({"id": ids, "key": [f"k{i % 7}" for i in ids]}))
    sink.commit(sink.flush())
    sink.close()


def open_source(tmp_path: Path, broker: str, topic: str) -> tuple[TopicSource, Context]:
    config: Any = TopicSourceConfig(
        topic=topic, group="g", broker=broker, batch_size=40, poll_timeout=0.5
    )  # type: ignore[call-arg]
    source = TopicSource(config)
    ctx = context(tmp_path, "src")
    source.open(ctx, None)
    return source, ctx


def read_some(source: TopicSource, at_least: int, timeout: float = 60) -> int:
    """Read batches until ``at_least`` records came (a Kafka member first waits for its
    partitions); the number read."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < at_least:
        assert time.monotonic() < deadline, f"only {got} of {at_least} records read"
        batch = source.read_batch()
        assert batch is not None
        got += batch.size
    return got


def test_lag_is_what_was_produced_minus_what_was_consumed(tmp_path: Path, broker: str) -> None:
    topic = f"lag_{uuid.uuid4().hex[:8]}"
    produce(tmp_path, broker, topic, 300)
    produced = 300
    source, ctx = open_source(tmp_path, broker, topic)
    try:
        consumed = read_some(source, 1)
        assert consumed <= 40 < produced
        assert ctx.metrics["lag_records"] == produced - consumed
        # Behind, so the seconds lag is the age of the newest record read.
        assert ctx.metrics["lag_seconds"] >= 0

        consumed += read_some(source, 100)
        assert ctx.metrics["lag_records"] == produced - consumed

        consumed += read_some(source, produced - consumed)
        assert consumed == produced
        assert ctx.metrics["lag_records"] == 0
        assert ctx.metrics["lag_seconds"] == 0

        produce(tmp_path, broker, topic, 50, start=300)
        produced += 50
        source.config = source.config.model_copy(update={"batch_size": 7})
        consumed += read_some(source, 1)
        assert consumed < produced
        assert ctx.metrics["lag_records"] == produced - consumed
    finally:
        source.close()


def test_messages_of_an_open_transaction_are_not_lag(tmp_path: Path) -> None:
    """On the embedded log a reader cannot pass a pending message, so lag ends there."""
    topic = f"lag_{uuid.uuid4().hex[:8]}"
    produce(tmp_path, "embedded", topic, 30)
    source, ctx = open_source(tmp_path, "embedded", topic)
    sink = TopicSink(TopicSinkConfig(topic=topic, broker="embedded"))  # type: ignore[call-arg]
    sink.open(context(tmp_path, "open_txn"), None)
    try:
        sink.write_batch(pl.DataFrame({"id": list(range(1000, 1020))}))  # not committed yet
        consumed = read_some(source, 30)
        assert consumed == 30
        assert ctx.metrics["lag_records"] == 0
        sink.commit(sink.flush())
        batch = source.read_batch()
        assert batch is not None
        consumed += batch.size
        assert ctx.metrics["lag_records"] == 50 - consumed
    finally:
        sink.close()
        source.close()


def test_messages_of_an_open_kafka_transaction_are_not_lag(
    tmp_path: Path, kafka_broker: str
) -> None:
    """A read_committed source stops at the last stable offset: the messages of a
    transaction still open beyond it are not lag until it commits."""
    import confluent_kafka as ck

    broker = "kafka://" + kafka_broker
    topic = f"lag_{uuid.uuid4().hex[:8]}"
    produce(tmp_path, broker, topic, 30)
    producer = ck.Producer(
        {"bootstrap.servers": kafka_broker, "transactional.id": f"lag-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(20):
        producer.produce(topic, f'{{"id": {1000 + i}}}'.encode(), partition=0)
    assert producer.flush(30) == 0
    source, ctx = open_source(tmp_path, broker, topic)
    try:
        consumed = read_some(source, 30)
        assert consumed == 30
        deadline = time.monotonic() + 30
        while ctx.metrics.get("lag_records") != 0:
            assert time.monotonic() < deadline, f"lag {ctx.metrics.get('lag_records')}"
            batch = source.read_batch()
            assert batch is not None and batch.size == 0, "read an uncommitted message"
        producer.commit_transaction(30)
        consumed += read_some(source, 20)
        assert consumed == 50
        deadline = time.monotonic() + 30
        while ctx.metrics.get("lag_records") != 0:
            assert time.monotonic() < deadline, f"lag {ctx.metrics.get('lag_records')}"
            source.read_batch()
    finally:
        source.close()
