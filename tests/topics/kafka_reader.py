"""Read a Kafka topic as a plain confluent-kafka ``read_committed`` consumer would (no
tideflow code involved), and write one without transactions: the independent side of the
exactly-once tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import polars as pl

ID_HEADER = "tideflow.id"


def read_committed(
    bootstrap: str, topic: str, timeout: float = 120, isolation: str = "read_committed"
) -> pl.DataFrame:
    """Every message a ``read_committed`` reader sees in ``topic``, as rows of
    ``partition``, ``offset``, ``key``, ``id_header`` and the JSON value's fields.

    Reads each partition until its end offset as the broker reports it, and fails if a
    partition stays behind its high watermark (a transaction left open) past ``timeout``."""
    import confluent_kafka as ck

    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([ck.TopicPartition(topic, p, 0) for p in parts])
        rows: list[dict[str, Any]] = []
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while True:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is not None:
                    assert err.code() == ck.KafkaError._PARTITION_EOF, str(err)
                    ends[msg.partition()] = msg.offset()
                    continue
                ends.pop(msg.partition(), None)
                headers = dict(msg.headers() or [])
                ident = headers.get(ID_HEADER)
                rows.append(
                    {
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "key": msg.key().decode() if msg.key() is not None else None,
                        "id_header": ident.decode() if ident is not None else None,
                        **orjson.loads(msg.value()),
                    }
                )
            done = len(ends) == len(parts) and all(
                ends[p]
                >= consumer.get_watermark_offsets(ck.TopicPartition(topic, p), cached=True)[1]
                for p in parts
            )
            if done:
                break
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{topic}: partitions not read to their high watermark in {timeout:.0f} s "
                    f"(end of fetch {ends}): a transaction was left open; beyond the stable "
                    f"offset: {_beyond(bootstrap, topic, ends)}"
                )
    finally:
        consumer.close()
    return pl.DataFrame(rows, infer_schema_length=None)


def _beyond(bootstrap: str, topic: str, ends: dict[int, int]) -> str:
    """What lies past each partition's stable offset (read uncommitted), by id header: whose
    transaction was left open."""
    import confluent_kafka as ck

    consumer = ck.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"beyond-{uuid.uuid4().hex}"}
    )
    try:
        consumer.assign([ck.TopicPartition(topic, p, o) for p, o in ends.items()])
        found: dict[int, list[str]] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    ident = dict(msg.headers() or []).get(ID_HEADER)
                    found.setdefault(msg.partition(), []).append(
                        f"{msg.offset()}={ident.decode() if ident else None}"
                    )
        return "; ".join(
            f"{p}: {len(v)} ({', '.join(v[:3])} ... {v[-1]})" for p, v in found.items()
        )
    finally:
        consumer.close()


def produce_plain(
    bootstrap: str, topic: str, frame: pl.DataFrame, key: str, partitions: int
) -> None:
    """Create ``topic`` and write ``frame``'s rows as JSON messages keyed by ``key``, with a
    plain (non-transactional) producer."""
    import confluent_kafka as ck
    import confluent_kafka.admin

    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic, num_partitions=partitions)])[
        topic
    ].result(30)
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for row, line in zip(
        frame.iter_rows(named=True), frame.write_ndjson().encode().splitlines(), strict=True
    ):
        producer.produce(topic, line, key=str(row[key]).encode())
    assert producer.flush(60) == 0


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset of every partition of ``topic``."""
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        meta = consumer.list_topics(topic, timeout=30)
        parts = [ck.TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        return {p.partition: p.offset for p in consumer.committed(parts, timeout=30)}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's high watermark, as a fetch reports it (tansu's ListOffsets can
    report less for a batch of several records)."""
    import confluent_kafka as ck

    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ends-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_END) for p in parts])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(ends) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is not None:
                    ends[msg.partition()] = msg.offset()
        return ends
    finally:
        consumer.close()
