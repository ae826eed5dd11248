"""The Kafka backend of a topic sink without transactions: an idempotent confluent-kafka
producer (at-least-once across a crash), and the partition count of a topic (created if
missing). The exactly-once producer is in :mod:`tideflow.connectors.kafka.exactly_once`."""

from __future__ import annotations

from typing import Any

import orjson
import polars as pl

from tideflow.connectors.kafka.client import confluent, kafka_config
from tideflow.errors import PipelineError, TransientError
from tideflow.secrets import redact


class KafkaProducer:
    """An idempotent confluent-kafka producer; ``flush`` fails if any delivery failed."""

    def __init__(self, bootstrap: str, options: dict[str, Any], create_partitions: int) -> None:
        ck = confluent()
        self._ck = ck
        self.bootstrap = bootstrap
        self.options = options
        self.create_partitions = create_partitions
        config = {
            **kafka_config(bootstrap, options),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": options.get("linger.ms", 5),
        }
        self.producer = ck.Producer(config)
        self._errors: list[str] = []
        self._known: dict[str, int] = {}

    def partitions(self, topic: str) -> int:
        """Partition count from the cluster's metadata; the topic is created if missing."""
        if topic not in self._known:
            self._known[topic] = kafka_partitions(
                self.producer, self.bootstrap, self.options, topic, self.create_partitions
            )
        return self._known[topic]

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(
        self,
        topic: str,
        partitions: pl.Series,
        keys: pl.Series,
        values: pl.Series,
        headers: pl.Series | None,
    ) -> None:
        """Queue messages (librdkafka batches and compresses them)."""
        produce = self.producer.produce
        parts = partitions.to_list()
        key_list = keys.to_list()
        header_list = (
            [list(orjson.loads(h).items()) if h else None for h in headers.to_list()]
            if headers is not None
            else [None] * len(parts)
        )
        for part, key, value, head in zip(
            parts, key_list, values.to_list(), header_list, strict=True
        ):
            while True:
                try:
                    produce(
                        topic,
                        value=value,
                        key=key,
                        partition=part,
                        headers=head,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)  # the local queue is full: let deliveries drain
        self.producer.poll(0)

    def flush(self) -> Any:
        """Wait for every delivery report; any failure fails the checkpoint."""
        remaining = self.producer.flush(120)
        if remaining:
            raise TransientError(f"kafka producer: {remaining} message(s) not delivered in 120 s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise PipelineError(
                redact(f"kafka producer: {len(errors)} message(s) failed: {errors[0]}")
            )
        return None

    def commit(self, token: Any) -> None:
        """Delivered messages are already visible on Kafka."""

    def recover(self, pending: Any) -> None:
        """Nothing is pending on Kafka between checkpoints (at-least-once)."""

    def close(self) -> None:
        """Deliver what is queued."""
        self.producer.flush(30)


def kafka_partitions(
    client: Any, bootstrap: str, options: dict[str, Any], topic: str, create: int
) -> int:
    """Partition count of ``topic`` from the cluster's metadata (through ``client``, a
    producer); a missing topic is created with ``create`` partitions."""
    ck = confluent()
    meta = client.list_topics(timeout=30)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        admin = ck.admin.AdminClient(kafka_config(bootstrap, options))
        futures = admin.create_topics([ck.admin.NewTopic(topic, num_partitions=create)])
        try:
            futures[topic].result(30)
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise PipelineError(redact(f"cannot create Kafka topic {topic!r}: {exc}")) from exc
        meta = client.list_topics(topic, timeout=30)
    return len(meta.topics[topic].partitions)
