"""The ``topic`` sink: messages to a topic on the embedded log (transactional) or on Kafka
(exactly-once by default; see :mod:`tideflow.connectors.topic`)."""

from __future__ import annotations

from typing import Any

import polars as pl

from tideflow.connectors.kafka.exactly_once import ExactlyOnceProducer
from tideflow.connectors.kafka.outbox import fresh_spill_folder
from tideflow.connectors.kafka.producer import KafkaProducer
from tideflow.connectors.topic.settings import TopicSinkConfig, log_path, resolve_broker
from tideflow.core.contracts import (
    Context,
    ExistingOutput,
    Sink,
    empty_dead_letters,
)
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import component
from tideflow.topics.backends import EmbeddedProducer, Producer
from tideflow.topics.codec import (
    encode_values,
)
from tideflow.topics.embedded import open_log
from tideflow.topics.partitioner import (
    partitions_of,
)


@component("sink", "topic")
class TopicSink(Sink[TopicSinkConfig]):
    """Write records as messages to a topic, on the embedded log or Kafka."""

    config_model = TopicSinkConfig

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
            if self.config.exactly_once:
                self.producer = self._exactly_once(ctx, bootstrap, options)
            else:
                self.producer = KafkaProducer(bootstrap, options, self.config.partitions)
        self.producer.recover(pending)
        self._partitions = self.producer.partitions(self.config.topic)

    def committed_output(self, ctx: Context) -> ExistingOutput | None:
        """Messages in the topic (its end offsets: one metadata request). Other writers'
        messages count too: a topic does not say who wrote what."""
        from pathlib import Path

        from tideflow.connectors.topic.admin import Admin
        from tideflow.errors import PipelineError

        bootstrap = self._bootstrap()
        where = f"on Kafka ({bootstrap})" if bootstrap else f"on the embedded log {log_path(ctx)}"
        if bootstrap is None and not Path(log_path(ctx)).exists():
            return None
        try:
            ends = Admin(bootstrap, ctx.state_dir).end_offsets(self.config.topic)
        except PipelineError:  # no such topic
            return None
        written = sum(ends.values())
        if not written:
            return None
        return ExistingOutput(
            found=f"topic {self.config.topic!r} {where} holds {written:,} message(s)",
            clearing=None,
        )

    def _exactly_once(
        self, ctx: Context, bootstrap: str, options: dict[str, Any]
    ) -> ExactlyOnceProducer:
        if ctx.outbox is None:
            raise PipelineError(
                f"sink {ctx.name!r}: exactly_once on Kafka stores each checkpoint's messages "
                "in the state store first, and this sink's context has no outbox: run it in "
                "a pipeline (the engine provides one), give its Context an outbox "
                "(core.checkpoints.SinkOutbox), or set exactly_once: false"
            )
        transactional_id = self.config.transactional_id or (
            f"tideflow-{ctx.state_id[:12]}-{ctx.pipeline}-{ctx.name}-{ctx.scope}"
        )
        return ExactlyOnceProducer(
            bootstrap,
            options,
            self.config.partitions,
            transactional_id,
            ctx.outbox,
            ctx.source_offsets,
            fresh_spill_folder(ctx.state_dir, ctx.scope, ctx.pipeline, ctx.name),
            self.config.buffer_bytes,
        )

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
        """Make the messages durable (on Kafka with exactly_once: stage them in the
        checkpoint); the token commits them."""
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
