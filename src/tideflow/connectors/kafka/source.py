"""The ``kafka`` source: the ``topic`` source with Kafka's own settings (topic patterns,
the deprecated ``bootstrap``), always on Kafka."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from tideflow.connectors.kafka.client import check_kafka_address, kafka_bootstrap
from tideflow.connectors.topic.settings import TopicSourceConfig
from tideflow.connectors.topic.source import TopicSource
from tideflow.registry import component


class KafkaSourceConfig(TopicSourceConfig):
    """Settings of the ``kafka`` source."""

    topic: str | list[str] = Field(
        default_factory=list, description="Topic name(s) to read (or give `pattern`)."
    )
    pattern: str | None = Field(None, description="A regular expression of topic names.")
    broker: str | None = Field(
        None,
        description="Kafka bootstrap servers, `kafka://host:port[,host:port]` (or without "
        "`kafka://`); default `KAFKA_BROKER`.",
    )
    bootstrap: str | None = Field(None, description="Deprecated name of `broker` (still accepted).")

    @model_validator(mode="after")
    def _one_subscription(self) -> KafkaSourceConfig:
        check_kafka_address(self.broker, self.bootstrap)
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
    config: KafkaSourceConfig  # narrowed, as TopicSource (not generic) is subclassed

    def _bootstrap(self) -> str | None:
        return kafka_bootstrap(self.config.broker, self.config.bootstrap, "source")

    def _subscription(self) -> list[str]:
        # librdkafka reads a subscription starting with ^ as a regular expression.
        if self.config.pattern is not None:
            return ["^" + self.config.pattern.lstrip("^")]
        return self.topics
