"""``topic`` and ``kafka`` sources and sinks.

A ``topic`` lives in the embedded log (``.tideflow/topics.db`` beside the pipeline) unless a
broker is configured — ``broker: kafka://host:port`` or ``KAFKA_BROKER`` in the environment —
so the same pipeline file moves from a laptop to Kafka by configuration alone. ``kafka`` is the
same connector with Kafka's own settings (topic patterns, offset reset, librdkafka options for
TLS and SASL) and always talks to Kafka.

Delivery: sources commit group offsets only after the checkpoint that covers them, and start
from the checkpoint when it is ahead of the group, so output written through a two-phase sink
(files, a transactional SQL table) holds every message exactly once across crashes. The
``topic`` sink on the embedded log is transactional (messages become visible at the
checkpoint); on Kafka it is idempotent and at-least-once across a crash.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from tideflow.core.contracts import (
    Context,
    PartitionHandover,
    Sink,
    Source,
    SourceBatch,
    empty_dead_letters,
)
from tideflow.errors import ConfigError
from tideflow.registry import component
from tideflow.secrets import redact
from tideflow.spec.models import Settings
from tideflow.topics.backends import (
    Consumer,
    EmbeddedConsumer,
    EmbeddedProducer,
    KafkaConsumer,
    KafkaProducer,
    Producer,
    default_bootstrap,
)
from tideflow.topics.codec import (
    Format,
    Offsets,
    RawMessages,
    decode_values,
    encode_values,
    tp,
)
from tideflow.topics.embedded import open_log
from tideflow.topics.membership import EmbeddedGroupMember
from tideflow.topics.partitioner import partitions_of

log = logging.getLogger("tideflow.topics")

METADATA = {
    "topic": "_topic",
    "partition": "_partition",
    "offset": "_offset",
    "timestamp": "_timestamp",
    "key": "_key",
    "headers": "_headers",
}


def log_path(ctx: Context) -> str:
    """The embedded log of a pipeline: beside its state, shared by pipelines in the folder."""
    return str(ctx.state_dir / "topics.db")


def resolve_broker(broker: str | None) -> str | None:
    """The Kafka bootstrap address, or None for the embedded log."""
    if broker in (None, ""):
        return default_bootstrap()
    assert broker is not None
    if broker == "embedded":
        return None
    if not broker.startswith("kafka://"):
        raise ConfigError(
            f"broker {broker!r}: expected kafka://host:port[,host:port] or `embedded`"
        )
    return broker.removeprefix("kafka://")


def kafka_bootstrap(configured: str | None, kind: str) -> str:
    """The bootstrap servers of a ``kafka`` source or sink: its own, else ``KAFKA_BROKER``."""
    bootstrap = configured or default_bootstrap()
    if not bootstrap:
        raise ConfigError(f"kafka {kind}: set `bootstrap` or the KAFKA_BROKER variable")
    return bootstrap.removeprefix("kafka://")


class TopicSourceConfig(Settings):
    """Settings of the ``topic`` source."""

    topic: str | list[str] = Field(description="Topic name(s) to read.")
    group: str = Field(description="Consumer group: groups read a topic independently.")
    broker: str | None = Field(
        None,
        description="`kafka://host:port` for Kafka, `embedded` for the local log; unset: "
        "Kafka if `KAFKA_BROKER` is set, else the embedded log.",
    )
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts reading."
    )
    format: Format = Field("json", description="Message format: json, csv or raw (bytes).")
    csv_columns: list[str] | None = Field(None, description="Column names of csv messages.")
    metadata: list[Literal["topic", "partition", "offset", "timestamp", "key", "headers"]] = Field(
        default_factory=list,
        description="Message fields to add as `_topic`, `_partition`, `_offset`, "
        "`_timestamp`, `_key`, `_headers` columns.",
    )
    batch_size: int = Field(10_000, ge=1, description="Most messages per batch.")
    poll_timeout: float = Field(0.5, gt=0, description="Longest wait for messages (s).")
    stop_at_end: bool = Field(
        False,
        description="End when no message arrives for `idle_seconds` (a bounded run over "
        "what the topic holds); by default the source keeps waiting.",
    )
    idle_seconds: float = Field(2.0, gt=0, description="With stop_at_end: quiet time to end.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka settings for Kafka (TLS, SASL, ...)."
    )


class TopicSinkConfig(Settings):
    """Settings of the ``topic`` sink."""

    topic: str = Field(description="Topic to write (created on first use).")
    broker: str | None = Field(
        None,
        description="`kafka://host:port` for Kafka, `embedded` for the local log; unset: "
        "Kafka if `KAFKA_BROKER` is set, else the embedded log.",
    )
    key: str | None = Field(
        None, description="Column whose value is the message key (and picks the partition)."
    )
    partitions: int = Field(1, ge=1, description="Partitions when the sink creates the topic.")
    format: Format = Field("json", description="Message format: json, csv or raw (bytes).")
    value_column: str | None = Field(None, description="raw format: the column of bytes.")
    headers: str | None = Field(None, description="Column of JSON objects sent as message headers.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="Kafka compression codec."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka settings for Kafka (TLS, SASL, ...)."
    )


@component("source", "topic")
class TopicSource(Source):
    """Read a topic as a consumer group member, on the embedded log or Kafka."""

    config_model = TopicSourceConfig
    config: TopicSourceConfig
    partitioned = True

    def __init__(self, config: TopicSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.stop_at_end
        self.consumer: Consumer | None = None
        self._next: dict[str, int] = {}
        self._idle = 0.0
        self._handover: _Handover | None = None
        self._ready: deque[SourceBatch] = deque()
        self._metrics: dict[str, float] = {}
        self._last_stamp: float | None = None

    @property
    def topics(self) -> list[str]:
        """The topics read."""
        return [self.config.topic] if isinstance(self.config.topic, str) else self.config.topic

    def _bootstrap(self) -> str | None:
        return resolve_broker(self.config.broker)

    def open(self, ctx: Context, position: Any) -> None:
        """Join the group and start after ``position`` (or the group's committed offsets)."""
        bootstrap = self._bootstrap()
        from_end = self.config.start == "latest"
        if ctx.partitions is not None:
            self._handover = _Handover(self, ctx.partitions, ctx.name)
        if bootstrap is None:
            log = open_log(log_path(ctx))
            for topic in self.topics:
                log.create_topic(topic)
            if self._handover is not None:
                self.consumer = EmbeddedGroupMember(
                    log, self.topics, self.config.group, from_end, self._handover
                )
            else:
                self.consumer = EmbeddedConsumer(log, self.topics, self.config.group, from_end)
        else:
            self.consumer = KafkaConsumer(
                bootstrap,
                self._subscription(),
                self.config.group,
                self.config.start,
                self.config.options,
                self._handover,
            )
        self._next = dict(position or {})
        self._metrics = ctx.metrics
        self.consumer.start(self._next)

    def _subscription(self) -> list[str]:
        return self.topics

    def read_batch(self) -> SourceBatch | None:
        """The next messages, decoded; undecodable ones are dead-lettered with their origin.

        In a group of workers, each batch holds one partition's messages."""
        assert self.consumer is not None
        if self._ready:
            return self._ready.popleft()
        raw = self.consumer.poll(self.config.batch_size, self.config.poll_timeout)
        self._report_lag(raw)
        if not len(raw):
            # Waiting for partitions (standby, a group joining) is not the end of the data.
            if self.bounded and self.consumer.active:
                self._idle += self.config.poll_timeout
                if self._idle >= self.config.idle_seconds:
                    return None
            return SourceBatch(pl.DataFrame(), {} if self._handover else dict(self._next))
        self._idle = 0.0
        if self._handover is not None:
            for (topic, part), messages in raw.by_partition().items():
                key = tp(topic, part)
                batch = self._decode(messages, {key: messages.offsets[-1] + 1})
                batch.partition = key
                self._ready.append(batch)
            return self._ready.popleft()
        for topic, part, offset in zip(raw.topics, raw.partitions, raw.offsets, strict=True):
            self._next[tp(topic, part)] = offset + 1
        return self._decode(raw, dict(self._next))

    def _decode(self, raw: RawMessages, position: Offsets) -> SourceBatch:
        frame, kept, dead = decode_values(
            raw,
            self.config.format,
            lambda i: (
                f"topic {raw.topics[i]} partition {raw.partitions[i]} offset {raw.offsets[i]}"
            ),
            self.config.csv_columns,
        )
        if self.config.metadata:
            frame = frame.with_columns(self._metadata(raw, kept))
        stamps = [t for t in raw.timestamps if t is not None and t > 0]
        event_time = min(stamps) / 1000 if stamps else None
        return SourceBatch(frame, position, dead if dead.height else None, event_time=event_time)

    def rebalanced(self) -> None:
        """The group changed this member's share: quiet time before counts for nothing
        toward ``stop_at_end`` (a new share's first messages are a fetch away; a member that
        ended now would leave them unread until the next run)."""
        self._idle = 0.0

    def forget(self, partitions: list[str]) -> None:
        """Drop what was read from ``partitions`` but not handed over (their next owner
        reads it again from the checkpoint)."""
        gone = set(partitions)
        self._ready = deque(b for b in self._ready if b.partition not in gone)

    def _report_lag(self, raw: RawMessages) -> None:
        """Set ``lag_records`` (records behind over owned partitions) and ``lag_seconds``
        (age of the newest record read while a backlog remains, 0 once caught up) in the
        source's metrics."""
        assert self.consumer is not None
        # Timestamps are milliseconds; Kafka gives -1 where a message has none.
        stamps = [t for t in raw.timestamps if t is not None and t > 0]
        if stamps:
            self._last_stamp = max(stamps) / 1000
        try:
            behind = self.consumer.lag()
        except Exception as exc:  # noqa: BLE001 - a monitoring figure must not stop reading
            log.debug("source lag unavailable: %s", redact(str(exc)))
            behind = None
        if behind is not None:
            records = sum(behind.values())
            self._metrics["lag_records"] = records
            age = time.time() - self._last_stamp if self._last_stamp is not None else 0.0
            self._metrics["lag_seconds"] = round(max(age, 0.0), 3) if records else 0.0

    def _metadata(self, raw: RawMessages, kept: list[int]) -> list[pl.Series]:
        fields: dict[str, tuple[list[Any], type[pl.DataType]]] = {
            "topic": (raw.topics, pl.String),
            "partition": (raw.partitions, pl.Int32),
            "offset": (raw.offsets, pl.Int64),
            "timestamp": (raw.timestamps, pl.Int64),
            "key": (raw.keys, pl.Binary),
            "headers": (raw.headers, pl.String),
        }
        columns = []
        for name in self.config.metadata:
            values, dtype = fields[name]
            series = pl.Series(METADATA[name], values, dtype=dtype).gather(kept)
            if name == "timestamp":
                series = series.cast(pl.Datetime("ms", "UTC"))
            if name == "key":
                series = series.cast(pl.String, strict=False)
            columns.append(series)
        return columns

    def checkpointed(self, position: Any) -> None:
        """The checkpoint is durable: commit the group's offsets up to it."""
        if self.consumer is not None and position:
            self.consumer.commit(dict(position))

    def close(self) -> None:
        """Leave the group."""
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class _Handover:
    """A consumer's rebalance listener that reports to the engine for a topic source."""

    def __init__(self, source: TopicSource, engine: PartitionHandover, name: str) -> None:
        self.source = source
        self.engine = engine
        self.name = name

    def assigned(self, partitions: list[str]) -> Offsets:
        """Restore the partitions' state; resume at their checkpointed positions."""
        self.source.rebalanced()
        return {k: int(v) for k, v in self.engine.assigned(self.name, partitions).items()}

    def revoked(self, partitions: list[str]) -> None:
        """Checkpoint what was handed over from them; forget what was not."""
        self.source.rebalanced()
        self.engine.revoked(self.name, partitions)
        self.source.forget(partitions)


@component("sink", "topic")
class TopicSink(Sink):
    """Write records as messages to a topic, on the embedded log or Kafka."""

    config_model = TopicSinkConfig
    config: TopicSinkConfig

    def __init__(self, config: TopicSinkConfig) -> None:
        super().__init__(config)
        self.producer: Producer | None = None
        self._partitions = 1
        self._turn = 0

    def _bootstrap(self) -> str | None:
        return resolve_broker(self.config.broker)

    def open(self, ctx: Context, pending: Any) -> None:
        """Connect; finish the last checkpoint's commit and drop later pending messages."""
        bootstrap = self._bootstrap()
        if bootstrap is None:
            producer_id = f"{ctx.scope}/{ctx.pipeline}/{ctx.name}"
            self.producer = EmbeddedProducer(
                open_log(log_path(ctx)), producer_id, self.config.partitions
            )
        else:
            options = dict(self.config.options)
            if self.config.compression != "none":
                options.setdefault("compression.type", self.config.compression)
            self.producer = KafkaProducer(bootstrap, options, self.config.partitions)
        self.producer.recover(pending)
        self._partitions = self.producer.partitions(self.config.topic)

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Encode and send; keys pick partitions as Kafka's default partitioner does."""
        assert self.producer is not None
        cfg = self.config
        for column in (cfg.key, cfg.headers, cfg.value_column):
            if column is not None and column not in batch.columns:
                raise ConfigError(f"topic sink: column {column!r} is not in the batch")
        keys = (
            batch.get_column(cfg.key).cast(pl.String).cast(pl.Binary)
            if cfg.key
            else pl.Series("key", [None] * batch.height, dtype=pl.Binary)
        )
        parts = partitions_of(keys, self._partitions, self._turn)
        self._turn += batch.height
        body = batch.drop([c for c in (cfg.headers,) if c])
        values = encode_values(body, cfg.format, cfg.value_column)
        headers = batch.get_column(cfg.headers) if cfg.headers else None
        self.producer.send(cfg.topic, parts, keys, values, headers)
        return empty_dead_letters()

    def flush(self) -> Any:
        """Make the messages durable; the token commits them."""
        assert self.producer is not None
        return self.producer.flush()

    def commit(self, token: Any) -> None:
        """Make them visible."""
        assert self.producer is not None
        self.producer.commit(token)

    def close(self) -> None:
        """Disconnect."""
        if self.producer is not None:
            self.producer.close()
            self.producer = None


class KafkaSourceConfig(TopicSourceConfig):
    """Settings of the ``kafka`` source."""

    topic: str | list[str] = Field(
        default_factory=list, description="Topic name(s) to read (or give `pattern`)."
    )
    pattern: str | None = Field(None, description="A regular expression of topic names.")
    bootstrap: str | None = Field(
        None, description="Bootstrap servers host:port[,...]; default `KAFKA_BROKER`."
    )

    @model_validator(mode="after")
    def _one_subscription(self) -> KafkaSourceConfig:
        if bool(self.topic) == bool(self.pattern):
            raise ValueError("give exactly one of `topic` or `pattern`")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a regular expression: {exc}") from exc
        return self


@component("source", "kafka")
class KafkaSource(TopicSource):
    """Read Kafka topics (or a topic pattern) as a consumer group member."""

    config_model = KafkaSourceConfig
    config: KafkaSourceConfig

    def _bootstrap(self) -> str | None:
        return kafka_bootstrap(self.config.bootstrap, "source")

    def _subscription(self) -> list[str]:
        # librdkafka reads a subscription starting with ^ as a regular expression.
        if self.config.pattern is not None:
            return ["^" + self.config.pattern.lstrip("^")]
        return self.topics


class KafkaSinkConfig(TopicSinkConfig):
    """Settings of the ``kafka`` sink."""

    bootstrap: str | None = Field(
        None, description="Bootstrap servers host:port[,...]; default `KAFKA_BROKER`."
    )


@component("sink", "kafka")
class KafkaSink(TopicSink):
    """Write records to a Kafka topic (idempotent producer, delivery reports checked)."""

    config_model = KafkaSinkConfig
    config: KafkaSinkConfig

    def _bootstrap(self) -> str | None:
        return kafka_bootstrap(self.config.bootstrap, "sink")
