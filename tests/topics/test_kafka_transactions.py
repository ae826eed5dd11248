"""The Kafka transactions the exactly-once sink is built on, against tansu: a second producer
with the same transactional id fences the first (nothing the first writes afterwards becomes
visible), and the read-back reports exactly the ids a plain ``read_committed`` reader sees,
waiting while another producer's open transaction holds the last stable offset."""

from __future__ import annotations

import threading
import time
import uuid

import polars as pl
import pytest
from tests.topics.kafka_reader import read_committed

from tideflow.connectors.kafka.exactly_once import message_ids, producer_tag
from tideflow.connectors.kafka.outbox import MESSAGE_SCHEMA
from tideflow.connectors.kafka.transactions import FencedProducerError, KafkaTransactions
from tideflow.errors import PipelineError


def messages(start: int, count: int, partition: int = 0) -> pl.DataFrame:
    """``count`` JSON messages ``{"n": i}`` for one partition."""
    return pl.DataFrame(
        {
            "partition": [partition] * count,
            "key": [None] * count,
            "value": [f'{{"n": {i}}}'.encode() for i in range(start, start + count)],
            "headers": [None] * count,
        },
        schema=MESSAGE_SCHEMA,
    )


def create(broker: str, partitions: int = 1) -> str:
    import confluent_kafka.admin

    topic = f"txn-{uuid.uuid4().hex[:8]}"
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": broker})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic, num_partitions=partitions)])[
        topic
    ].result(30)
    return topic


def test_a_second_producer_fences_the_first(kafka_broker: str) -> None:
    topic = create(kafka_broker)
    tid = f"fence-{uuid.uuid4().hex}"
    tag = producer_tag(tid)
    first = KafkaTransactions(kafka_broker, {}, tid, timeout=30)
    starts = first.end_offsets(topic, 1)
    first.begin()
    first.produce(topic, messages(0, 3), message_ids(tag, 1, 0, 3))
    first.flush()  # on the broker, in an open transaction

    second = KafkaTransactions(kafka_broker, {}, tid, timeout=30)  # fences the first
    first.produce(topic, messages(3, 2), message_ids(tag, 1, 3, 2))
    first.flush()
    with pytest.raises(FencedProducerError, match="was fenced"):
        first.commit()

    seen = read_committed(kafka_broker, topic)
    # Real Kafka hides the fenced producer's aborted transaction; tansu 0.6.0 shows it. Either
    # way nothing written after the fence is there, and the read-back reports exactly what a
    # reader sees.
    shown = set(seen["n"].to_list()) if seen.height else set()
    assert shown <= {0, 1, 2}
    assert second.read_back(topic, starts, tag, 1) == shown
    first.close()
    second.close()


def test_read_back_waits_for_an_open_transaction_that_holds_the_stable_offset(
    kafka_broker: str,
) -> None:
    topic = create(kafka_broker)
    ours = KafkaTransactions(kafka_broker, {}, f"ours-{uuid.uuid4().hex}", timeout=60)
    tag = producer_tag(ours.transactional_id)
    starts = ours.end_offsets(topic, 1)
    ours.begin()
    ours.produce(topic, messages(0, 4), message_ids(tag, 7, 0, 4))
    ours.commit()
    other = KafkaTransactions(kafka_broker, {}, f"other-{uuid.uuid4().hex}", timeout=60)
    other.begin()
    other.produce(topic, messages(100, 2), message_ids("someone", 1, 0, 2))
    other.flush()

    result: list[set[int]] = []
    reader = threading.Thread(target=lambda: result.append(ours.read_back(topic, starts, tag, 7)))
    reader.start()
    reader.join(3)
    # The reader's end is the high watermark, past the other producer's open messages.
    assert reader.is_alive(), "the read-back ended before the open transaction did"
    other.commit()
    reader.join(60)
    assert result == [{0, 1, 2, 3}]

    # With another transaction left open for longer than the timeout, it fails, saying why.
    impatient = KafkaTransactions(kafka_broker, {}, f"impatient-{uuid.uuid4().hex}", timeout=2)
    other.begin()
    other.produce(topic, messages(200, 1), message_ids("someone", 2, 0, 1))
    other.flush()
    started = time.monotonic()
    with pytest.raises(PipelineError, match="holds the last stable offset"):
        impatient.read_back(topic, starts, tag, 7)
    assert time.monotonic() - started >= 2
    other.commit()
    for producer in (ours, other, impatient):
        producer.close()
