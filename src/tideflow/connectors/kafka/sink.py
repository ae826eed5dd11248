"""The ``kafka`` sink: the ``topic`` sink always on Kafka (exactly-once by default)."""

from __future__ import annotations

from pydantic import Field, model_validator

from tideflow.connectors.kafka.client import check_kafka_address, kafka_bootstrap
from tideflow.connectors.topic.settings import TopicSinkConfig
from tideflow.connectors.topic.sink import TopicSink
from tideflow.registry import component


class KafkaSinkConfig(TopicSinkConfig):
    """Settings of the ``kafka`` sink."""

    broker: str | None = Field(
        None,
        description="Kafka bootstrap servers, `kafka://host:port[,host:port]` (or without "
        "`kafka://`); default `KAFKA_BROKER`.",
    )
    bootstrap: str | None = Field(None, description="Deprecated name of `broker` (still accepted).")

    @model_validator(mode="after")
    def _address(self) -> KafkaSinkConfig:
        check_kafka_address(self.broker, self.bootstrap)
        return self


@component("sink", "kafka")
class KafkaSink(TopicSink):
    """Write records to a Kafka topic (exactly-once by default, see ``exactly_once``)."""

    config_model = KafkaSinkConfig
    config: KafkaSinkConfig  # narrowed, as TopicSink (not generic) is subclassed

    def _bootstrap(self) -> str | None:
        return kafka_bootstrap(self.config.broker, self.config.bootstrap, "sink")
