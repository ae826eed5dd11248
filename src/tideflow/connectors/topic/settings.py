"""Settings of the ``topic`` source and sink, and where their ``broker`` setting points: the
embedded log beside the pipeline's state, or a Kafka cluster."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tideflow.connectors.kafka.client import default_bootstrap
from tideflow.core.contracts import (
    MAX_RECORD_BYTES,
    Context,
)
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError
from tideflow.topics.codec import (
    Format,
)
from tideflow.topics.names import check_topic_name
from tideflow.topics.partitioner import (
    Partitioner,
)


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


class PartitionedBy(Settings):
    """How a topic's records were put in partitions: by the text of one column as the
    message key, hashed by a named partitioner."""

    column: str = Field(description="The column whose value (as text) is each message's key.")
    partitioner: Partitioner = Field(
        "murmur2",
        description="`murmur2`: Kafka's Java clients and tideflow's `topic` sink; `crc32`: "
        "librdkafka's default (`consistent_random`) and clients built on it, for keyed "
        "messages.",
    )


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
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        description="Longest message value decoded; a longer one is dead-lettered with its "
        "topic, partition, offset and size instead of being parsed.",
    )
    poll_timeout: float = Field(0.5, gt=0, description="Longest wait for messages (s).")
    stop_at_end: bool = Field(
        False,
        description="A bounded run over what the topics hold: end once every partition is "
        "read to the end offset it had when the run started (by this member, or committed by "
        "another member of the group) and no message arrived for `idle_seconds`; by default "
        "the source keeps waiting.",
    )
    idle_seconds: float = Field(2.0, gt=0, description="With stop_at_end: quiet time to end.")
    end_offsets: dict[str, int] | None = Field(
        None,
        description="End once every listed partition (`topic:partition` -> next offset, e.g. "
        "from `tideflow topics describe`) has been read up to that offset, or has nothing "
        "more to read (Kafka: only transaction markers left); messages at or after it are "
        "left for the next run. A bounded run whose end is decided by the data, not by "
        "`idle_seconds` of quiet; implies `stop_at_end`. Partitions another member of the "
        "group owns count as read once the group committed them up to their offset.",
    )
    max_wait: float | None = Field(
        None,
        gt=0,
        description="Bounded runs: the longest the run waits (seconds from its start) for "
        "every partition of its topics to be read to the end offsets seen at the start (or "
        "`end_offsets`), by this member or another of the group; past it the run ends with "
        "exit code 3 and names the unread partitions. Null: as long as it takes (a warning "
        "names them every 30 s).",
    )
    partitioned_by: PartitionedBy | None = Field(
        None,
        description="Declare that the topic is partitioned by a column, so group workers "
        "(`--workers`) may keep state per that column (an `aggregate`, `window`, `dedupe`, "
        "... whose keys include it): every record is checked against it, and the run stops "
        "at the first record in another partition than the declaration puts it.",
    )
    isolation: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description="Kafka: `read_committed` reads only messages of committed transactions "
        "(what exactly-once producers, tideflow's included, commit); `read_uncommitted` "
        "also those of open and aborted ones. The embedded log always reads committed.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka settings for Kafka (TLS, SASL, ...)."
    )

    @field_validator("topic")
    @classmethod
    def _topic_names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            check_topic_name(name)
        return value


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
    exactly_once: bool = Field(
        True,
        description="Kafka: each checkpoint's messages are stored in the checkpoint, then "
        "produced in one transaction (with the consumed offsets of a Kafka source on the "
        "same cluster), so `read_committed` readers see each record once across crashes; "
        "each message gets a `tideflow.id` header. false: an idempotent producer, "
        "at-least-once across a crash. The embedded log is always exactly-once.",
    )
    transactional_id: str | None = Field(
        None,
        description="Kafka transactional id of the exactly-once producer; default "
        "`tideflow-<state store id>-<pipeline>-<sink>-<scope>`. A second process with the "
        "same id fences the first.",
    )
    buffer_bytes: int = Field(
        64 << 20,
        ge=1 << 20,
        description="Exactly-once on Kafka: bytes of a checkpoint interval's messages held "
        "in memory; beyond it they are spilled to files beside the state store.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka settings for Kafka (TLS, SASL, ...)."
    )

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        return check_topic_name(value)
